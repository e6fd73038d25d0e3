"""Reading YAML and JSON job files within fixed bounds.

A job file is read by the CLI and the SDK on a user's machine, often from someone
else: a 519-byte YAML alias bomb ("billion laughs") must not take gigabytes, and a
deeply nested file must not end in a RecursionError traceback. So, before anything
is built:

- the file's size is capped (:data:`MAX_FILE_BYTES`) before it is read;
- YAML is scanned as an event stream first (libyaml's C parser where available):
  nesting deeper than :data:`MAX_DEPTH`, more than :data:`MAX_ALIASES` aliases, an
  alias to a node that contains it, or a document that would expand to more than
  :data:`MAX_NODES` nodes once its aliases are followed is refused;
- JSON nesting past the parser's recursion limit is caught, and both formats'
  results are checked for depth without recursion.

Every refusal is a ``ValueError`` whose message says which bound and where.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_FILE_BYTES = 64 << 20
MAX_DEPTH = 100
MAX_ALIASES = 1_000
MAX_NODES = 5_000_000


class LoadError(ValueError):
    """A job file that cannot be read within the bounds, or at all."""


def read_bounded(path: Path, max_bytes: int = MAX_FILE_BYTES) -> str:
    size = path.stat().st_size
    if size > max_bytes:
        raise LoadError(
            f"the file is {size} bytes, over the limit of {max_bytes} for a job file; "
            "put large inputs in .npy files ({npy: path}) or sample them on the server"
        )
    with open(path, "rb") as f:
        # one byte past its size: the file may have grown since stat(); never
        # max_bytes, which read() would allocate up front
        data = f.read(size + 1)
    if len(data) > max_bytes:
        raise LoadError(f"the file is over the limit of {max_bytes} bytes for a job file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LoadError(f"not UTF-8 text (byte {exc.start})") from None


def _yaml_loader() -> Any:
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def scan_yaml(text: str) -> None:
    """Refuse a YAML document over the bounds, from its events, building nothing."""
    import yaml

    # per open collection: [anchor, nodes counted when it opened, deepest depth inside]
    stack: list[list[Any]] = []
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> (expanded nodes, depth inside)
    nodes = aliases = 0

    def where(event: Any) -> str:
        mark = event.start_mark
        return f"line {mark.line + 1}, column {mark.column + 1}"

    def grow(count: int, depth: int, event: Any) -> None:
        nonlocal nodes
        nodes += count
        if nodes > MAX_NODES:
            raise LoadError(
                f"{where(event)}: the document expands to over {MAX_NODES} nodes once its "
                "aliases are followed (an alias bomb?)"
            )
        level = len(stack) + depth
        if level > MAX_DEPTH:
            raise LoadError(f"{where(event)}: nested deeper than {MAX_DEPTH} levels")
        for frame in stack:
            frame[2] = max(frame[2], level)

    for event in yaml.parse(text, Loader=_yaml_loader()):
        if isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            grow(1, 1, event)
            stack.append([event.anchor, nodes, len(stack) + 1])
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            anchor, opened, deepest = stack.pop()
            if anchor is not None:
                sizes[anchor] = (nodes - opened + 1, deepest - len(stack))
        elif isinstance(event, yaml.ScalarEvent):
            grow(1, 0, event)
            if event.anchor is not None:
                sizes[event.anchor] = (1, 0)
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise LoadError(f"{where(event)}: more than {MAX_ALIASES} aliases")
            if event.anchor not in sizes:
                raise LoadError(
                    f"{where(event)}: the alias *{event.anchor} refers to a node that "
                    "contains it (a recursive structure)"
                )
            count, depth = sizes[event.anchor]
            grow(count, depth, event)


def check_depth(data: Any) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH`, walking without recursion."""
    todo: list[tuple[Any, int]] = [(data, 1)]
    seen = 0
    while todo:
        item, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise LoadError(f"nested deeper than {MAX_DEPTH} levels")
        seen += 1
        if seen > MAX_NODES:
            raise LoadError(f"more than {MAX_NODES} nodes")
        if isinstance(item, Mapping):
            todo.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            todo.extend((v, depth + 1) for v in item)


def load_yaml(text: str) -> Any:
    import yaml

    try:
        scan_yaml(text)
        data = yaml.load(text, Loader=_yaml_loader())  # CSafeLoader or SafeLoader
    except yaml.YAMLError as exc:
        raise LoadError(f"not valid YAML: {exc}") from None
    check_depth(data)
    return data


def load_json(text: str) -> Any:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoadError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise LoadError(f"nested deeper than {MAX_DEPTH} levels") from None
    check_depth(data)
    return data


def load_file(path: Path) -> Any:
    """A YAML (``.yaml``/``.yml``) or JSON (``.json``) file's data, within the bounds."""
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise LoadError("the name must end in .yaml, .yml or .json")
    text = read_bounded(path)
    try:
        return load_json(text) if suffix == ".json" else load_yaml(text)
    except LoadError:
        raise
    except (ValueError, RecursionError, MemoryError) as exc:
        # a number too long to convert, or a structure its parser cannot hold
        raise LoadError(f"cannot be read: {type(exc).__name__}: {str(exc)[:200]}") from None
