"""The Ray actor: keeps torch warm, caches compiled functions, runs chunks.

This module does not import torch at import time, so the server can name the
actor class without loading torch on its request path.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import socket
import time
import traceback
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict
from typing import Any, TypeGuard

import numpy as np

from gradserve_workers._routes_taken import collecting
from gradserve_workers.report import CheckReport
from gradserve_workers.shm import RegionGone, SharedArrays
from gradserve_workers.tasks import (
    CLAIM,
    COTANGENT,
    TANGENT,
    VECTOR,
    CheckSpec,
    ChunkError,
    ChunkResult,
    ComputeSpec,
    extra_arrays,
    unpack_call,
)

CACHE_SIZE = 512  # entries: by exact source and by syntax tree
# the name of the one thread an actor computes on
COMPUTE_THREAD = "gradserve-compute"
__all__ = [
    "CLAIM",
    "COTANGENT",
    "TANGENT",
    "VECTOR",
    "GradActor",
    "classify",
    "keep_freed_memory",
]


# How often the Ray thread that waits for a call looks at Ray's cancel flag.
CANCEL_POLL_SECONDS = 0.05
# The ChunkError kind of a chunk an express actor stopped at its short budget: the
# server runs it again on a regular worker (it never reaches a caller).
OVERRUN = "overrun"


def shared(arrays: Mapping[str, np.ndarray]) -> TypeGuard[SharedArrays]:
    return isinstance(arrays, SharedArrays) and bool(arrays.outputs)


def _guarded(work: Callable[[], ChunkResult], watch: Any) -> ChunkResult:
    from gradserve_workers.lang.runtime import watching

    try:
        with watching(watch):
            return work()
    except Exception as error:  # user errors come back as data, never as a crash
        return ChunkResult(error=classify(error))


def _trim_heap() -> None:
    """Give freed heap pages back to the system (glibc keeps them for reuse, so a
    refused call's memory would stay in the worker's RSS)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL(None).malloc_trim(0)


# glibc's mallopt parameters, and the worker's values for them (see keep_freed_memory)
_M_TOP_PAD, _M_MMAP_THRESHOLD = -2, -3
HEAP_TOP_PAD = 64 * 2**20
HEAP_MMAP_THRESHOLD = 32 * 2**20  # glibc's largest for a thread's arena


def keep_freed_memory() -> bool:
    """Keep a worker's freed memory for its next call, instead of handing it back to
    the system and faulting it in again: arrays up to 32 MiB from the heap rather
    than a fresh mapping each, and up to 64 MiB of free heap kept when it shrinks.

    With glibc's defaults a call of 100,000 points of the 10-dim Rosenbrock grad took
    ~3,900 page faults and 39-46 ms; with these, ~95 and 35 ms (docs/performance.md,
    "The workers' heap"). A worker's resident memory then stays near its largest
    call's, up to the pad above it; a refused call still trims it (:func:`_trim_heap`).
    False where there is no glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD) and mallopt(_M_TOP_PAD, HEAP_TOP_PAD)
    )


def _ray_cancel_flag() -> Callable[[], bool] | None:
    """Ray's flag for the running actor task, set by ray.cancel(ref); None outside Ray."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        context = ray.get_runtime_context()
        context.is_canceled()  # raises outside a worker process
    except Exception:
        return None
    return context.is_canceled


def _parsed(source: str, max_chars: int) -> Any:
    """``source``'s syntax tree, or None where only validating can say what is wrong."""
    import ast

    if len(source) > max_chars:
        return None
    try:
        return ast.parse(source)
    except Exception:  # SyntaxError, too deep, ...: the validator reports it
        return None


def classify(error: BaseException) -> ChunkError:
    """Turn an exception from a chunk's work into something the server maps.

    A user's mistake is one of the errors the language, the ops and the checks raise
    for it (their own types: a positioned spec error, a limit, a runtime error in the
    function, OpsError and CheckError), or a registered function refusing the user's
    inputs. Anything else is ours (a bug in the service, or in an operator's
    registered backward): "internal", with its traceback for the server's log and
    only its type for the user, as a ValueError from our own code is not the user's.
    """
    from gradserve_workers import lang, registry
    from gradserve_workers.ops import CertificateError, OpsError

    if isinstance(error, CertificateError):  # the service's fault: INTERNAL, said in full
        return ChunkError("internal", str(error), traceback=_traceback(error))
    raised = registry.failure_message(error)
    if raised is not None:  # the operator's registered function failed on these inputs
        return ChunkError("invalid", raised)
    if isinstance(error, lang.LimitExceededError):
        return ChunkError(
            "limit", str(error), getattr(error, "line", None), error.column, error.limit
        )
    if isinstance(error, lang.SpecError):
        return ChunkError("spec", str(error), error.line, error.column)
    if isinstance(error, lang.FunctionRuntimeError):
        line, column = getattr(error, "line", None), getattr(error, "column", None)
        return ChunkError("spec" if line else "invalid", str(error), line, column)
    if isinstance(error, OpsError):  # CheckError and NonFiniteInputError too
        return ChunkError("invalid", f"{error}")
    if isinstance(error, RegionGone):  # the caller unlinked its shared memory mid-call
        return ChunkError("invalid", f"{error}")
    return ChunkError("internal", type(error).__name__, traceback=_traceback(error))


def _traceback(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)).rstrip()


class GradActor:
    """One warm worker process. Methods never raise for user errors: they return them."""

    def __init__(
        self,
        device: str = "cpu",
        threads: int = 1,
        express_seconds: float | None = None,
        functions: tuple[str, ...] = (),
        keep_heap: bool = False,
    ) -> None:
        """``express_seconds``: an express actor (see server/gradserve_server/pool.py)
        stops every call after this many seconds and reports it as an overrun.
        ``functions``: the operator's registered functions (trusted code), imported once,
        here. ``keep_heap``: a process of its own (a Ray worker, not the server's fast
        lane) keeps its freed memory for the next call (:func:`keep_freed_memory`)."""
        if keep_heap:
            keep_freed_memory()  # before the compute thread's arena exists
        import torch

        from gradserve_workers import registry

        self._express_seconds = express_seconds
        self._functions = registry.load(functions)

        torch.set_num_threads(max(1, threads))
        self._torch = torch
        self._device = torch.device(device if device != "auto" else self._auto_device())
        self._cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        # functions that needed the per-point loop: don't try vmap on them again
        self._per_point: set[str] = set()
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        # All work runs on this one thread, so its glibc arena holds nothing but the
        # computations' memory: on Ray's thread, a call's large arrays land between
        # the small objects Ray leaves in the heap, which costs page faults on every
        # call and grows the heap (docs/performance.md, "A thread of its own").
        self._compute_thread = ThreadPoolExecutor(1, thread_name_prefix=COMPUTE_THREAD)
        self._endpoint: Any = None  # the direct channel, once the server asks for it
        # Import what a call runs now, while the pool waits for the actor to start: a
        # first call spent seconds importing, where no cancel or deadline is checked.
        # and what torch.broadcast_shapes (the language's matmul) imports on first use:
        # ~500 modules (sympy among them), 1-4 s inside one operation of a first call
        import torch._refs
        import torch.fx.experimental.symbolic_shapes

        import gradserve_workers.check
        import gradserve_workers.lang.compile
        import gradserve_workers.ops  # noqa: F401

    def _auto_device(self) -> str:
        return "cuda" if self._torch.cuda.is_available() else "cpu"

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "device": str(self._device), "node": socket.gethostname()}

    def functions(self) -> tuple[Any, ...]:
        """The registered functions this worker loaded (``registry.Registered``)."""
        return self._functions

    # ------------------------------------------------------------- helpers

    def _compiled(
        self,
        source: str,
        source_hash: str,
        limits: Mapping[str, int],
        known_inputs: tuple[str, ...] | None = None,
    ) -> Any:
        """A compiled function or claim, from the cache when it was compiled before.

        A source that differs from a cached one only in layout (whitespace, comments,
        parentheses) reuses its compiled body with its own positions: padding a
        function cannot make every call compile afresh.
        """
        from gradserve_workers import lang
        from gradserve_workers.lang.layout import syntax_key

        settings = (tuple(sorted(limits.items())), known_inputs)
        key = (source_hash, *settings)
        fn = self._cache.get(key)
        if fn is not None:
            self._cache.move_to_end(key)
            return fn
        bounds = lang.Limits(**limits)
        tree = _parsed(source, bounds.max_source_chars)
        shape = (syntax_key(tree), *settings) if tree is not None else None
        twin = self._cache.get(shape) if shape is not None else None
        if twin is not None:
            fn = twin.relocated(source, tree)
        else:
            program = lang.parse_and_validate(source, bounds, known_inputs=known_inputs)
            fn = lang.compile_program(program, bounds)
            if shape is not None:
                self._remember(shape, fn)
        self._remember(key, fn)
        return fn

    def _remember(self, key: tuple[Any, ...], fn: Any) -> None:
        self._cache[key] = fn
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    def _tensor(
        self, arr: np.ndarray, dtype: str, start: int, stop: int, batched: bool, copy: bool = True
    ) -> Any:
        torch = self._torch
        part = arr[start:stop] if batched else arr
        if not copy and part.dtype == np.dtype(dtype) and part.flags.c_contiguous:
            # read-only (the object store's buffer) but never written: the language has
            # no in-place operations and the ops do not mutate their inputs
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                t = torch.from_numpy(part)
            return t.to(self._device) if self._device.type != "cpu" else t
        # the object store hands out read-only buffers; torch wants writable ones
        t = torch.from_numpy(np.array(part, dtype=dtype, copy=True))
        return t.to(self._device) if self._device.type != "cpu" else t

    def _watch(self, limits: Mapping[str, int]) -> Any:
        """The deadline of one call: the server's per-call CPU budget, or an express
        actor's shorter one."""
        from gradserve_workers.lang import Limits
        from gradserve_workers.lang.runtime import Watch

        seconds = float(limits.get("max_call_seconds", Limits.max_call_seconds))
        if self._express_seconds is not None and self._express_seconds < seconds:
            return Watch(self._express_seconds, limit="express")
        return Watch(seconds)

    def _begin(
        self, work: Callable[[], ChunkResult], limits: Mapping[str, int] | None = None
    ) -> tuple[Future[ChunkResult], Any]:
        """``work`` started on the compute thread under the call's watch; the future
        holds its finished result (user errors as data)."""
        started = time.perf_counter()
        watch = self._watch(limits or {})

        def run() -> ChunkResult:
            return self._finished(_guarded(work, watch), watch, started)

        return self._compute_thread.submit(run), watch

    def _wait(self, future: Future[ChunkResult], watch: Any) -> ChunkResult:
        """The call's result. This (Ray's) thread waits for it and passes
        ray.cancel(ref) on as the call's cancel flag, which the language checks
        between operations: a cancelled call ends within an operation, and its
        process lives on."""
        cancelled = _ray_cancel_flag()
        while True:
            try:
                return future.result(timeout=CANCEL_POLL_SECONDS)
            except FutureTimeout:
                if cancelled is not None and not watch.cancelled and cancelled():
                    watch.cancel()

    def channel(self) -> dict[str, Any] | None:
        """Open this actor's direct channel (:mod:`gradserve_workers.channel`) if it is
        not open yet: where to reach it, its token, and the host it is on; None where
        the platform has no abstract Unix sockets (the server then uses Ray alone)."""
        from gradserve_workers.channel import Endpoint

        if self._endpoint is None:
            try:
                self._endpoint = Endpoint(self._start)
            except OSError:
                return None
        e = self._endpoint
        return {"address": e.address, "token": e.token, "node": socket.gethostname()}

    def _start(self, message: bytes) -> tuple[Future[ChunkResult], Any]:
        """A packed call (:func:`~gradserve_workers.tasks.pack_call`), started."""
        call = unpack_call(message)
        return self._started(call.spec, call.arrays, call.start, call.stop)

    def _started(
        self,
        spec: ComputeSpec | CheckSpec,
        arrays: Mapping[str, np.ndarray],
        start: int,
        stop: int,
    ) -> tuple[Future[ChunkResult], Any]:
        """A chunk's compute or check started on the compute thread: its future and its
        watch (whose ``cancel`` stops it)."""
        if isinstance(spec, CheckSpec):
            return self._begin(lambda: self._check(spec, arrays, start, stop), spec.limits)
        return self._begin(lambda: self._compute(spec, arrays, start, stop), spec.limits)

    def run_here(self, work: Callable[[], ChunkResult], watch: Any) -> ChunkResult:
        """``work`` on the calling thread, under ``watch``, which the caller cancels
        itself (the server's fast lane, which runs this class in its own process)."""
        started = time.perf_counter()
        return self._finished(_guarded(work, watch), watch, started)

    def _finished(self, result: ChunkResult, watch: Any, started: float) -> ChunkResult:
        error = result.error
        if error is not None and error.kind == "limit":
            if watch.limit == "express" and watch.expired and not watch.cancelled:
                result.error = ChunkError(OVERRUN, error.message)
            _trim_heap()
        result.seconds = time.perf_counter() - started
        result.actor = self.name
        return result

    def _to_numpy(self, t: Any) -> np.ndarray:
        return t.detach().to("cpu").numpy()

    # ------------------------------------------------------------- work

    def run(self, message: bytes) -> ChunkResult:
        """A packed :class:`~gradserve_workers.tasks.ChunkCall` (small chunks: see
        :func:`~gradserve_workers.tasks.pack_call`): :meth:`compute` or :meth:`check`."""
        # unpacked outside the guarded work on purpose: a message the server did not
        # pack is the server's bug, so it fails the Ray call (an internal error), never
        # a user's "invalid"
        return self._wait(*self._start(message))

    def compute(
        self, spec: ComputeSpec, arrays: Mapping[str, np.ndarray], start: int, stop: int
    ) -> ChunkResult:
        return self._wait(*self._started(spec, arrays, start, stop))

    def _compute(
        self, spec: ComputeSpec, arrays: Mapping[str, np.ndarray], start: int, stop: int
    ) -> ChunkResult:
        from gradserve_workers.ops import OpsRequest, compute

        fn = self._compiled(spec.source, spec.source_hash, spec.limits)
        names = list(fn.inputs)

        def tensors(prefix: str) -> dict[str, Any]:
            return {
                k: self._tensor(v, spec.dtype, start, stop, spec.batched, False)
                for k, v in extra_arrays(arrays, prefix).items()
            }

        inputs = {
            n: self._tensor(arrays[n], spec.dtype, start, stop, spec.batched, False) for n in names
        }
        cot = tensors(COTANGENT)
        request = OpsRequest(
            ops=spec.ops,
            wrt=spec.wrt,
            batched=spec.batched,
            jacobian_mode=spec.jacobian_mode,
            chunk_size=spec.chunk_size,
            cotangent=cot.get("") if cot else None,
            tangents=tensors(TANGENT) or None,
            vector=tensors(VECTOR) or None,
            allow_vmap=spec.source_hash not in self._per_point,
            reply_budget=spec.reply_budget,
            verify=spec.verify,
            first_point=start if spec.batched else 0,
        )
        result = compute(fn, names, inputs, request)
        if spec.batched and not result.vmapped:
            self._per_point.add(spec.source_hash)
        outputs = {
            op: {key: self._to_numpy(t) for key, t in by_key.items()}
            for op, by_key in result.outputs.items()
        }
        # the caller's shared memory, where the server asked: written here, not returned
        written = arrays.write_outputs(outputs, start, stop) if shared(arrays) else ()
        return ChunkResult(
            outputs=outputs,
            written=written,
            vmapped=result.vmapped,
            unconnected=tuple(result.unconnected),
            jacobian_mode=result.jacobian_mode,
            out_shape=tuple(result.out_shape),
            certificate=None if result.certificate is None else asdict(result.certificate),
            routes=tuple(result.routes),
        )

    def check(
        self, spec: CheckSpec, arrays: Mapping[str, np.ndarray], start: int, stop: int
    ) -> ChunkResult:
        return self._wait(*self._started(spec, arrays, start, stop))

    def _check(
        self, spec: CheckSpec, arrays: Mapping[str, np.ndarray], start: int, stop: int
    ) -> ChunkResult:
        with collecting() as routes:
            report = self._check_report(spec, arrays, start, stop)
        if spec.batched and not report.vmapped:
            self._per_point.add(spec.source_hash)
        # the routes its computations took: a check's strategy, as a compute's
        return ChunkResult(report=report, vmapped=report.vmapped, routes=tuple(routes))

    def _check_report(
        self, spec: CheckSpec, arrays: Mapping[str, np.ndarray], start: int, stop: int
    ) -> CheckReport:
        from gradserve_workers.check import claimed_check, finite_difference_check

        fn = self._compiled(spec.source, spec.source_hash, spec.limits)
        names = list(fn.inputs)
        inputs = {n: self._tensor(arrays[n], spec.dtype, start, stop, spec.batched) for n in names}
        allow_vmap = spec.source_hash not in self._per_point
        if spec.kind == "finite_difference":
            report = finite_difference_check(
                fn,
                names,
                inputs,
                wrt=spec.wrt,
                batched=spec.batched,
                order=spec.order,
                atol=spec.atol,
                rtol=spec.rtol,
                eps=spec.eps,
                fast=spec.fast,
                seed=spec.seed,
                allow_vmap=allow_vmap,
                columns=spec.columns,
            )
        elif spec.numeric:  # claimed numbers, computed elsewhere
            from gradserve_workers.numeric_claims import numeric_claimed_check

            claimed = extra_arrays(arrays, CLAIM)
            values = {
                key: self._tensor(claimed[key], "float64", start, stop, spec.batched)
                for key in spec.numeric
            }
            report = numeric_claimed_check(
                fn,
                names,
                inputs,
                values,
                kind=spec.kind,
                batched=spec.batched,
                atol=spec.atol,
                rtol=spec.rtol,
                allow_vmap=allow_vmap,
                columns=spec.columns,
            )
        else:
            claims = {
                key: self._claim(source, names, spec.limits) for key, source in spec.claims.items()
            }
            report = claimed_check(
                fn,
                claims,
                names,
                inputs,
                kind=spec.kind,
                batched=spec.batched,
                atol=spec.atol,
                rtol=spec.rtol,
                allow_vmap=allow_vmap,
                columns=spec.columns,
            )
        return report

    def _claim(self, source: str, names: list[str], limits: Mapping[str, int]) -> Any:
        """A claimed derivative, compiled over the function's inputs (in its order)."""
        digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
        claim = self._compiled(source, digest, limits, tuple(names))
        order = [names.index(n) for n in claim.inputs]

        def bound(*tensors: Any) -> Any:
            return claim(*(tensors[i] for i in order))

        return bound
