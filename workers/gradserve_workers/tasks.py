"""What the server sends an actor and what comes back: plain, picklable, torch-free."""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradserve_workers.replies import ReplyBudget

# a first-order check with more input elements per point than this compares random
# projections (fast mode) unless told otherwise
FULL_CHECK_MAX_INPUTS = 2000
# a chunk whose arrays take at most this many bytes travels as one packed message
# (see :func:`pack_call`); larger ones as Ray arguments, which Ray puts in its object
# store (over 100 KiB) for the worker to read in place
PACKED_CALL_MAX_BYTES = 256 * 1024
# A chunk's arrays travel as one flat dict (sliced by point, packed or put in Ray's
# object store as one): the function's inputs by name, and the request's other arrays
# under these key prefixes. :func:`chunk_arrays` writes them and :func:`extra_arrays`
# reads them; nothing else spells a prefix.
COTANGENT = "cotangent:"  # the vjp's cotangent, alone: "cotangent:"
TANGENT = "tangent:"  # jvp's tangents by input name: "tangent:x"
VECTOR = "vector:"  # hvp's vectors by input name: "vector:x"
CLAIM = "claim:"  # a numeric claim's values by claim key: "claim:x", "claim:a,b"


def chunk_arrays(
    inputs: Mapping[str, np.ndarray],
    *,
    cotangent: np.ndarray | None = None,
    tangents: Mapping[str, np.ndarray] | None = None,
    vector: Mapping[str, np.ndarray] | None = None,
    claims: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The one flat dict of a chunk's arrays (see the prefixes above).

    >>> sorted(chunk_arrays({"x": np.zeros(2)}, tangents={"x": np.ones(2)}))
    ['tangent:x', 'x']
    """
    arrays = dict(inputs)
    if cotangent is not None:
        arrays[COTANGENT] = cotangent
    for prefix, named in ((TANGENT, tangents), (VECTOR, vector), (CLAIM, claims)):
        arrays.update({prefix + name: arr for name, arr in (named or {}).items()})
    return arrays


def extra_arrays(arrays: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The arrays of one kind (``prefix``) among a chunk's, by name without it."""
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def valid_tolerance(name: str, value: float) -> bool:
    """The one rule for a check's tolerances, wherever a check is asked for (the
    server's requests, the workers' check functions): ``atol`` and ``rtol`` finite
    and >= 0, the step ``eps`` finite and > 0.

    >>> valid_tolerance("atol", 0.0), valid_tolerance("atol", math.inf), valid_tolerance("eps", 0)
    (True, False, False)
    """
    return value >= 0 and math.isfinite(value) and (name != "eps" or value > 0)


@dataclass(frozen=True)
class ComputeSpec:
    """One computation over a slice of points; the arrays travel separately."""

    source: str
    source_hash: str
    ops: tuple[str, ...]
    wrt: tuple[str, ...] | None
    batched: bool
    dtype: str  # "float32" | "float64"
    jacobian_mode: str = "auto"
    chunk_size: int | None = None
    limits: dict[str, int] = field(default_factory=dict)
    # the reply's budget, when the server could not check it without the output's shape
    reply_budget: ReplyBudget | None = None
    # certify the answer (gradserve_workers.ops.certify); None: where it is cheap
    verify: bool | None = None


@dataclass(frozen=True)
class CheckSpec:
    """One check over a slice of points."""

    source: str
    source_hash: str
    wrt: tuple[str, ...] | None
    batched: bool
    dtype: str
    kind: str  # "finite_difference" | "grad" | "jacobian" | "hessian"
    claims: dict[str, str] = field(default_factory=dict)  # "x" or "a,b" -> source
    order: int = 1
    atol: float = 1e-5
    rtol: float = 1e-3
    eps: float = 1e-6
    fast: bool | None = None
    seed: int = 0
    limits: dict[str, int] = field(default_factory=dict)
    # input elements [start, stop) of the flattened wrt (or claimed) inputs: one shard
    # of a finite-difference or claimed-Jacobian check split across workers
    columns: tuple[int, int] | None = None
    # claim keys whose claims are numbers (arrays "claim:KEY" among the chunk's
    # arrays, see numeric_claims) rather than source
    numeric: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChunkError:
    """A failure the caller can act on, with what the server needs to map it.

    ``kind`` is one of "spec" (INVALID_ARGUMENT with position), "invalid"
    (INVALID_ARGUMENT), "limit" (RESOURCE_EXHAUSTED) and "internal".
    """

    kind: str
    message: str
    line: int | None = None
    column: int | None = None
    limit: str | None = None  # the limit a "limit" error is about (LimitExceededError.limit)
    # an "internal" error's traceback in the worker: for the server's log, never the user
    traceback: str | None = None


@dataclass
class ChunkResult:
    """Arrays by op and key (see ops.OpsResult), or a check report, or an error."""

    outputs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    report: Any = None  # gradserve_workers.report.CheckReport
    vmapped: bool = True
    unconnected: tuple[str, ...] = ()
    jacobian_mode: str | None = None
    out_shape: tuple[int, ...] = ()
    routes: tuple[str, ...] = ()  # see ops.OpsResult.routes
    seconds: float = 0.0
    actor: str = ""
    error: ChunkError | None = None
    # the fields of a gradserve_workers.ops.certify.Certificate, when the answer was certified
    certificate: dict[str, Any] | None = None
    # (op, key) of outputs the worker wrote into the caller's shared memory itself
    # (gradserve_workers.shm.SharedArrays.write_outputs): absent from ``outputs``
    written: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ChunkCall:
    """One chunk's whole call: its spec, its arrays and its range of points."""

    spec: ComputeSpec | CheckSpec
    arrays: Mapping[str, np.ndarray]
    start: int
    stop: int


def pack_call(call: ChunkCall) -> bytes:
    """``call`` as one message, arrays in band.

    Ray serialises each argument of a call on its own and hands arrays over out of
    band, which pays off only for large arrays; a chunk's arrays are mostly small,
    so one packed message is cheaper up to ~0.5 MiB and no dearer beyond (figures in
    docs/performance.md, "Chunk calls as one message"). The server and its workers
    trust each other as Ray's own pickling does; users never reach this.
    """
    return pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_call(message: bytes) -> ChunkCall:
    call = pickle.loads(message)
    if not isinstance(call, ChunkCall):
        raise TypeError(f"unpack_call: expected a ChunkCall, got {type(call).__name__}")
    return call
