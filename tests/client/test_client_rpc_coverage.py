"""Every RPC of the contract is served by the server and wrapped by both clients.

Read from the .proto's descriptor, so a new RPC fails this test until it has a
handler (guarded by the error mapping) and sync and async SDK entry points.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import gradserve
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server.servicer import GradientServicer

RPCS = [m.name for m in pb.DESCRIPTOR.services_by_name["GradientService"].methods]
PACKAGE = Path(gradserve.__file__).parent


def _stub_calls(class_names: set[str]) -> set[str]:
    """Names X in `<...>._stub.X` inside the methods of the given classes."""
    found: set[str] = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name in class_names:
                for inner in ast.walk(node):
                    if (
                        isinstance(inner, ast.Attribute)
                        and isinstance(inner.value, ast.Attribute)
                        and inner.value.attr == "_stub"
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


@pytest.mark.parametrize("rpc", RPCS)
def test_rpc_is_wrapped_by_the_sync_and_async_sdk(rpc: str) -> None:
    assert rpc in _stub_calls({"Client", "Job"}), f"no sync SDK call of {rpc}"
    assert rpc in _stub_calls({"AsyncClient", "AsyncJob"}), f"no async SDK call of {rpc}"


def test_no_protobuf_type_in_the_public_api() -> None:
    for name in gradserve.__all__:
        obj = getattr(gradserve, name)
        module = getattr(obj, "__module__", "") or ""
        assert "_pb2" not in module, f"gradserve.{name} is a protobuf type"
