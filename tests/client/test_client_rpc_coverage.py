"""Every RPC of the contract is served by the server and wrapped by both clients (in
the spirit of temporalio's test that its service client has every RPC).

Read from the .proto's descriptor, so a new RPC fails this test until it has a
handler (guarded by the error mapping), a typed method on the sync and on the async
transport (gradserve._rpc), and a caller in the public API of each client.
"""

from __future__ import annotations

import ast
import inspect
import re
import typing
from collections.abc import AsyncGenerator, Generator
from pathlib import Path

import pytest

import gradserve
from gradserve._rpc import AsyncRpc, SyncRpc
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server.servicer import GradientServicer

METHODS = list(pb.DESCRIPTOR.services_by_name["GradientService"].methods)
RPCS = [m.name for m in METHODS]
PACKAGE = Path(gradserve.__file__).parent


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def rpc_uses(class_names: set[str]) -> set[str]:
    """Names X in `<...>._rpc.X` inside the classes of the SDK named."""
    found: set[str] = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name in class_names:
                for inner in ast.walk(node):
                    if (
                        isinstance(inner, ast.Attribute)
                        and isinstance(inner.value, ast.Attribute)
                        and inner.value.attr == "_rpc"
                    ):
                        found.add(inner.attr)
    return found


def test_the_contract_has_the_rpcs_we_expect() -> None:
    assert {"Compute", "ComputeStream", "Check", "SubmitJob", "WatchJob"} <= set(RPCS)


@pytest.mark.parametrize("rpc", RPCS)
def test_rpc_is_served_and_guarded(rpc: str) -> None:
    handler = GradientServicer.__dict__.get(rpc)
    assert handler is not None, f"{rpc} is not implemented by GradientServicer"
    # guard/guard_stream map every failure to a status; they wrap with functools.wraps
    assert hasattr(handler, "__wrapped__"), f"{rpc} is not wrapped by errors.guard"
    assert inspect.iscoroutinefunction(handler) or inspect.isasyncgenfunction(handler)


@pytest.mark.parametrize("method", METHODS, ids=RPCS)
def test_rpc_has_a_typed_method_on_both_transports(method: typing.Any) -> None:
    name = snake(method.name)
    reply = getattr(pb, method.output_type.name)
    for transport, stream_type in ((SyncRpc, Generator), (AsyncRpc, AsyncGenerator)):
        fn = getattr(transport, name, None)
        assert fn is not None, f"{transport.__name__} has no {name}() for {method.name}"
        source = inspect.getsource(fn)
        assert re.search(rf"self\._stub\.{method.name}\b", source), f"{transport.__name__}.{name}"
        returns = typing.get_type_hints(fn)["return"]
        if method.server_streaming:
            assert typing.get_origin(returns) is stream_type, (transport, name, returns)
            assert typing.get_args(returns)[0] is reply, (transport, name, returns)
        else:
            assert returns is reply, (transport, name, returns)
            assert inspect.iscoroutinefunction(fn) == (transport is AsyncRpc), name


@pytest.mark.parametrize("rpc", RPCS)
def test_rpc_is_called_by_the_public_api_of_both_clients(rpc: str) -> None:
    assert snake(rpc) in rpc_uses({"Client", "Job"}), f"no sync SDK call of {rpc}"
    assert snake(rpc) in rpc_uses({"AsyncClient", "AsyncJob"}), f"no async SDK call of {rpc}"


def imports_grpc(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if any(n == "grpc" or n.startswith("grpc.") for n in names):
            return True
    return False


def test_grpc_stays_in_the_transport_and_the_error_mapping() -> None:
    """The transport talks gRPC, errors.py maps its errors (the one place), and
    _config.py makes channel credentials; nothing else of the SDK imports grpc."""
    users = {path.name for path in PACKAGE.glob("*.py") if imports_grpc(path)}
    assert users == {"_rpc.py", "errors.py", "_config.py"}, users
    stubs = {path.name for path in PACKAGE.glob("*.py") if "_stub" in path.read_text()}
    assert stubs == {"_rpc.py"}, stubs
