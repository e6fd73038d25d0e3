"""Registered functions: trusted Python code the operator installs, called as ``@NAME``.

A package declares callables in the ``gradserve.functions`` entry-point group::

    [project.entry-points."gradserve.functions"]
    softplus = "my_pkg.fns:softplus"

and ``gradserve serve --functions softplus`` (or ``all``; ``GRADSERVE_FUNCTIONS``)
enables them. Every worker imports the enabled ones when it starts
(:func:`load`); the server learns their inputs and docstrings from a worker
(:func:`install`), so its request path stays torch-free. Clients only ever send
the name: ``fn="@softplus"``. Nothing a client sends is imported or run.

A registered callable takes torch tensors by input name (its parameters without
a default value, or an ``inputs`` attribute) and returns a tensor; it may use any
PyTorch code, including ``torch.autograd.Function`` with a hand-written
``backward`` (the ``setup_context`` form, which ``torch.func`` needs; without
``generate_vmap_rule = True`` or a ``vmap`` staticmethod it runs point by point).

This module does not import torch; :func:`compiled` does, on the workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .lang.errors import FunctionRuntimeError, SpecError

__all__ = [
    "GROUP",
    "Registered",
    "RegisteredFunctionError",
    "UnknownFunctionError",
    "available",
    "catalogue",
    "install",
    "load",
    "reference",
    "resolve_names",
]

GROUP = "gradserve.functions"
PREFIX = "@"


@dataclass(frozen=True)
class Registered:
    """What the server knows of one enabled function (plain data, picklable)."""

    name: str
    inputs: tuple[str, ...]
    doc: str
    target: str  # "module:attribute", where the entry point points


class UnknownFunctionError(SpecError):
    """``@NAME`` names no enabled registered function (the server answers NOT_FOUND)."""


class RegisteredFunctionError(FunctionRuntimeError):
    """A registered function raised, or returned something that is not a tensor."""


# Enabled functions by name: their descriptions (server and workers) and, on the
# workers, the callables themselves. Set once when a process starts serving.
_enabled: dict[str, Registered] = {}
_callables: dict[str, Callable[..., Any]] = {}

# the attribute that marks an exception raised inside a registered function
_RAISED_IN = "gradserve_registered_function"
# exception messages longer than this are cut: a user reads a line, not a dump
MAX_MESSAGE_CHARS = 500


def available() -> dict[str, importlib.metadata.EntryPoint]:
    """Every installed entry point of the group, by name (nothing is imported)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=GROUP)}


def resolve_names(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """The names ``--functions`` enables: a comma-separated list, or ``all``.

    Raises ``ValueError`` naming what is installed when a name is not.
    """
    if spec is None:
        return ()
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [p.strip().lstrip(PREFIX) for p in parts if p.strip()]
    installed = available()
    if names == ["all"]:
        return tuple(sorted(installed))
    missing = [n for n in names if n not in installed]
    if missing:
        have = ", ".join(sorted(installed)) or "none"
        raise ValueError(
            f"--functions: {', '.join(missing)} is not installed in the "
            f"{GROUP!r} entry-point group (installed: {have})"
        )
    return tuple(dict.fromkeys(names))


def describe(name: str, obj: Any, target: str = "") -> Registered:
    """The inputs and docstring of a registered callable.

    Inputs are an ``inputs`` attribute when it has one, else its parameters that
    have no default value (in order).
    """
    if not callable(obj):
        raise TypeError(f"registered function {name!r} ({target}) is not callable")
    declared = getattr(obj, "inputs", None)
    if declared is not None:
        inputs = tuple(str(n) for n in declared)
    else:
        params = inspect.signature(obj).parameters.values()
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            raise TypeError(
                f"registered function {name!r} ({target}) takes *args or **kwargs, so its "
                "inputs are unknown: give it an `inputs` attribute (a tuple of names)"
            )
        inputs = tuple(
            p.name for p in params if p.default is p.empty and p.kind is not p.POSITIONAL_ONLY
        )
    if not inputs or not all(n.isidentifier() for n in inputs):
        raise TypeError(f"registered function {name!r} ({target}) needs named tensor inputs")
    return Registered(name, inputs, inspect.getdoc(obj) or "", target)


def load(names: Sequence[str]) -> tuple[Registered, ...]:
    """Import the named entry points and enable them in this process (a worker)."""
    installed = available()
    loaded: dict[str, Callable[..., Any]] = {}
    infos: list[Registered] = []
    for name in names:
        if name not in installed:
            raise ValueError(f"registered function {name!r} is not installed in {GROUP!r}")
        entry = installed[name]
        obj = entry.load()
        infos.append(describe(name, obj, entry.value))
        loaded[name] = obj
    install(infos)
    _callables.clear()
    _callables.update(loaded)
    if loaded:
        from ._registered import warm_up

        warm_up()
    return tuple(infos)


def install(infos: Sequence[Registered]) -> None:
    """Enable these functions for validation in this process (the server)."""
    _enabled.clear()
    _enabled.update((info.name, info) for info in infos)


def catalogue() -> tuple[Registered, ...]:
    """The enabled functions, by name."""
    return tuple(_enabled[n] for n in sorted(_enabled))


# an entry point's name, as a reference may spell it: one word, no spaces or lines
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def reference(source: str) -> str | None:
    """The name in ``"@NAME"``, or None when the source is not a reference (source
    text that merely starts with ``@``, a decorator, is the language's to refuse)."""
    text = source.strip() if isinstance(source, str) else ""
    name = text[len(PREFIX) :]
    return name if text.startswith(PREFIX) and _NAME.fullmatch(name) else None


def lookup(name: str) -> Registered:
    info = _enabled.get(name)
    if info is None:
        enabled = ", ".join(PREFIX + n for n in sorted(_enabled)) or "none"
        raise UnknownFunctionError(
            f"{PREFIX}{name} is not a registered function of this server (enabled: {enabled})",
            hint="the operator enables registered functions with gradserve serve --functions",
        )
    return info


def check_inputs(info: Registered, known_inputs: Sequence[str] | None) -> None:
    if known_inputs is not None and set(known_inputs) != set(info.inputs):
        raise SpecError(
            f"{PREFIX}{info.name} takes ({', '.join(info.inputs)}), not ({', '.join(known_inputs)})"
        )


def program(source: str, limits: Any, known_inputs: Sequence[str] | None) -> Any:
    """The validated :class:`~gradserve_workers.lang.Program` of ``"@NAME"``: its
    inputs are the registered function's, its body is empty (never compiled)."""
    import ast

    from .lang.validate import Program

    name = reference(source) or ""
    info = lookup(name)
    check_inputs(info, known_inputs)
    digest = hashlib.sha256(f"{PREFIX}{info.name}\0{info.target}".encode()).hexdigest()
    empty = ast.Module(body=[], type_ignores=[])
    return Program(PREFIX + name, info.inputs, "function", digest, empty, PREFIX + name, limits)


def is_registered(program: Any) -> bool:
    """True for a Program made by :func:`program`."""
    return isinstance(program.name, str) and program.name.startswith(PREFIX)


def compiled(name: str) -> Any:
    """The callable of an enabled function, with a compiled program's interface:
    positional tensors in ``.inputs`` order, a tensor back (workers only)."""
    from ._registered import RegisteredFunction

    info = lookup(name)
    fn = _callables.get(name)
    if fn is None:  # enabled for validation but not imported here: not a worker
        raise UnknownFunctionError(f"{PREFIX}{name} is not loaded in this process")
    return RegisteredFunction(info, fn)


def mark(error: BaseException, name: str) -> None:
    """Note on ``error`` that it was raised inside registered function ``name``
    (the innermost one, when one calls another)."""
    if getattr(error, _RAISED_IN, None) is None:
        # an exception type that refuses attributes stays unmarked
        with contextlib.suppress(AttributeError):
            setattr(error, _RAISED_IN, name)


def failure_message(error: BaseException) -> str | None:
    """``"@NAME raised ValueError: ..."`` for an exception a registered function
    raised (type and message, never a traceback); None for any other."""
    name = getattr(error, _RAISED_IN, None)
    if name is None:
        return None
    text = " ".join(str(error).split())
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    kind = type(error).__name__
    return f"{name} raised {kind}: {text}" if text else f"{name} raised {kind}"
