"""The SDK's public surface: typed alike on Client and AsyncClient, free of protobuf,
and built from modules that do not import each other in a cycle."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import subprocess
import sys
import typing
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf.message import Message

import gradserve
import gradserve.errors
from gradserve._rpc import AsyncRpc, SyncRpc

PACKAGE = Path(gradserve.__file__).parent
ROOT = PACKAGE.parents[1]
PAIRS = [(gradserve.Client, gradserve.AsyncClient), (gradserve.Job, gradserve.AsyncJob)]


# ------------------------------------------------------------------ import cycles


def package_imports() -> dict[str, set[str]]:
    """module -> the gradserve modules it imports (anywhere in it: under
    TYPE_CHECKING and inside functions too); the package's __init__ is left out,
    since every submodule imports it implicitly."""
    modules = {
        "gradserve." + p.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".")
        for p in PACKAGE.rglob("*.py")
        if "__init__" not in p.name
    }
    graph: dict[str, set[str]] = {}
    for module in modules:
        path = PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                edges |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        graph[module] = edges & modules
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a depth-first walk), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for target in sorted(graph[module]):
            cycle = visit(target, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    graph = package_imports()
    assert {"gradserve._client", "gradserve.jobs", "gradserve._async_client"} <= set(graph)
    assert "gradserve._rpc" in graph["gradserve.jobs"]  # the walk sees real imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_sees_a_cycle() -> None:
    # jobs.py imported the clients, and they it, before the transport was split out
    graph = package_imports()
    graph["gradserve.jobs"].add("gradserve._client")
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"gradserve._client", "gradserve.jobs"}


# ------------------------------------------------------------------ no protobuf


def protobuf_in(hint: typing.Any, seen: set[int]) -> list[str]:
    """Protobuf types reachable from a type hint (through unions, generics and the
    fields of the SDK's own dataclasses)."""
    if id(hint) in seen:
        return []
    seen.add(id(hint))
    found = []
    if isinstance(hint, type):
        module = hint.__module__ or ""
        if issubclass(hint, Message) or "_pb2" in module:
            return [f"{module}.{hint.__qualname__}"]
        if module.startswith("gradserve") and dataclasses.is_dataclass(hint):
            for field_hint in typing.get_type_hints(hint).values():
                found += protobuf_in(field_hint, seen)
    for arg in typing.get_args(hint):
        found += protobuf_in(arg, seen)
    return found


def public_callables(cls: type) -> Iterator[tuple[str, typing.Any]]:
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") and name not in ("__init__", "__enter__", "__aenter__"):
            continue
        if inspect.isfunction(member):
            yield name, member
        elif isinstance(member, property) and member.fget is not None:
            yield name, member.fget


def public_classes() -> list[type]:
    modules: list[ModuleType] = [gradserve, gradserve.errors]
    return [
        obj
        for module in modules
        for name in getattr(module, "__all__", [])
        if isinstance(obj := getattr(module, name), type)
    ]


def test_no_protobuf_type_in_the_public_api() -> None:
    leaks = []
    classes = public_classes()
    assert gradserve.Client in classes and gradserve.NotFoundError in classes
    for cls in classes:
        leaks += [f"{cls.__name__}: {p}" for p in protobuf_in(cls, set())]
        for name, fn in public_callables(cls):
            hints = typing.get_type_hints(fn)
            for hint in hints.values():
                leaks += [f"{cls.__name__}.{name}: {p}" for p in protobuf_in(hint, set())]
    for name in gradserve.__all__:
        obj = getattr(gradserve, name)
        if inspect.isfunction(obj):
            for hint in typing.get_type_hints(obj).values():
                leaks += [f"gradserve.{name}: {p}" for p in protobuf_in(hint, set())]
    assert not leaks, leaks


def test_no_protobuf_in_an_exception_raised_by_the_server(tmp_path: Path) -> None:
    """An error as the client builds it from a failed call holds only plain values."""
    for cls in vars(gradserve.errors).values():
        if isinstance(cls, type) and issubclass(cls, gradserve.GradserveError):
            kwargs = {"line": 1, "column": 2} if cls is gradserve.InvalidSpecError else {}
            error = cls("message", code="X", request_id="r", **kwargs)  # type: ignore[arg-type]
            for attr, value in vars(error).items():
                assert not isinstance(value, Message), (cls, attr)
            assert all(not isinstance(a, Message) for a in error.args)


def test_the_leak_finder_sees_a_leak() -> None:
    from gradserve.v1 import gradserve_pb2 as pb

    assert protobuf_in(dict[str, pb.Tensor], set()) == ["gradserve.v1.gradserve_pb2.Tensor"]


# ------------------------------------------------------------------ sync and async alike


def sync_equivalent(hint: typing.Any) -> typing.Any:
    """An async method's return type as the sync twin spells it."""
    names = {
        gradserve.AsyncClient: gradserve.Client,
        gradserve.AsyncJob: gradserve.Job,
        AsyncRpc: SyncRpc,
    }
    if hint in names:
        return names[hint]
    if typing.get_origin(hint) is AsyncIterator:
        return Iterator[typing.get_args(hint)]  # type: ignore[misc]
    return hint


@pytest.mark.parametrize(("sync", "async_"), PAIRS, ids=["Client", "Job"])
def test_async_methods_are_the_sync_ones_awaited(sync: type, async_: type) -> None:
    sync_methods = dict(public_callables(sync))
    async_methods = dict(public_callables(async_))
    renamed = {"__enter__": "__aenter__"}
    assert {renamed.get(n, n) for n in sync_methods} == set(async_methods)
    for name, fn in sync_methods.items():
        twin = async_methods[renamed.get(name, name)]
        # no I/O: a plain call, or an attribute, on both
        is_sync_only = name in ("__init__", "job", "shared_array") or isinstance(
            inspect.getattr_static(sync, name), property
        )
        if (
            inspect.isgeneratorfunction(fn)
            or typing.get_origin(typing.get_type_hints(fn).get("return")) is Iterator
        ):
            assert inspect.isasyncgenfunction(twin), f"{async_.__name__}.{name}"
        elif not is_sync_only:
            assert inspect.iscoroutinefunction(twin), f"{async_.__name__}.{name} is not async"
        a, b = inspect.signature(fn), inspect.signature(twin)
        assert [(p.name, p.kind, p.default) for p in a.parameters.values()] == [
            (p.name, p.kind, p.default) for p in b.parameters.values()
        ], name
        hints, twin_hints = typing.get_type_hints(fn), typing.get_type_hints(twin)
        for param in a.parameters:
            assert hints.get(param) == sync_equivalent(twin_hints.get(param)), f"{name}({param})"
        assert hints.get("return") == sync_equivalent(twin_hints.get("return")), name
        assert twin_hints.get("return") not in (None, typing.Any), f"{name} returns Any"


MISSING_AWAIT = """
import gradserve

async def main() -> None:
    async with gradserve.AsyncClient() as client:
        report = client.check("sum(x * x)", {"x": [1.0]})
        print(report.passed)
        ok = await client.check("sum(x * x)", {"x": [1.0]})
        print(ok.passed)
        value = client.value("x", [1.0])
        print(value.shape)

def sync(client: gradserve.Client) -> None:
    print(client.check("x", [1.0]).passed, client.value("x", [1.0]).shape)
"""


@pytest.fixture(scope="module")
def mypy_as_python_3_10(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """mypy's errors over the SDK and a user's program, as Python 3.10 (the oldest
    the SDK supports, see client/pyproject.toml): one run for both tests below."""
    program = tmp_path_factory.mktemp("mypy") / "missing_await.py"
    program.write_text(MISSING_AWAIT)
    mypy = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent",
         "--python-version", "3.10", "--config-file", str(ROOT / "pyproject.toml"),
         str(PACKAGE), str(program)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    return [line for line in mypy.stdout.splitlines() if ": error:" in line]


def test_mypy_catches_a_missing_await(mypy_as_python_3_10: list[str]) -> None:
    errors = [e for e in mypy_as_python_3_10 if "missing_await.py" in e]
    assert len(errors) == 2, mypy_as_python_3_10
    assert ':7: error: "Coroutine[Any, Any, CheckReport]" has no attribute "passed"' in errors[0]
    assert ":11: error:" in errors[1] and "ndarray" in errors[1]


def test_the_sdk_type_checks_as_python_3_10(mypy_as_python_3_10: list[str]) -> None:
    ours = [e for e in mypy_as_python_3_10 if "missing_await.py" not in e]
    assert not ours, ours
    requires = (ROOT / "client/pyproject.toml").read_text()
    assert 'requires-python = ">=3.10"' in requires
