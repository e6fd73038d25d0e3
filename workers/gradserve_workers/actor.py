"""The Ray actor: keeps torch warm, caches compiled functions, runs chunks.

This module does not import torch at import time, so the server can name the
actor class without loading torch on its request path.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import numpy as np

from gradserve_workers.tasks import CheckSpec, ChunkError, ChunkResult, ComputeSpec, unpack_call

CACHE_SIZE = 256
# the name of the one thread an actor computes on
COMPUTE_THREAD = "gradserve-compute"
# Keys of the arrays dict that are not function inputs.
COTANGENT = "cotangent:"
TANGENT = "tangent:"
VECTOR = "vector:"


def _guarded(work: Callable[[], ChunkResult]) -> ChunkResult:
    try:
        return work()
    except Exception as error:  # user errors come back as data, never as a crash
        return ChunkResult(error=classify(error))


def classify(error: BaseException) -> ChunkError:
    """Turn an exception from the language or the ops into something the server maps."""
    from gradserve_workers import lang
    from gradserve_workers.certify import CertificateError
    from gradserve_workers.ops import OpsError

    if isinstance(error, CertificateError):  # the service's fault: INTERNAL, said in full
        return ChunkError("internal", str(error))
    if isinstance(error, lang.LimitExceededError):
        return ChunkError("limit", str(error), getattr(error, "line", None), error.column)
    if isinstance(error, lang.SpecError):
        return ChunkError("spec", str(error), error.line, error.column)
    if isinstance(error, lang.FunctionRuntimeError):
        line, column = getattr(error, "line", None), getattr(error, "column", None)
        return ChunkError("spec" if line else "invalid", str(error), line, column)
    if isinstance(error, OpsError | ValueError | RuntimeError | IndexError | TypeError):
        return ChunkError("invalid", f"{error}")
    return ChunkError("internal", f"{type(error).__name__}: {error}")


class GradActor:
    """One warm worker process. Methods never raise for user errors: they return them."""

    def __init__(self, device: str = "cpu", threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self._torch = torch
        self._device = torch.device(device if device != "auto" else self._auto_device())
        self._cache: OrderedDict[tuple[str, tuple[tuple[str, int], ...]], Any] = OrderedDict()
        # functions that needed the per-point loop: don't try vmap on them again
        self._per_point: set[str] = set()
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        # All work runs on this one thread, so its glibc arena holds nothing but the
        # computations' memory. Run on Ray's thread, a call's large arrays had to
        # fit between the small objects Ray left in the heap since the last call: in
        # some worker processes every call took ~2,000 page faults (8 MB touched
        # afresh, 3-7 ms of a 12 ms shard) and the heap grew by up to 200 MB over 30
        # calls; on its own thread, measured: no faults, no growth.
        self._compute_thread = ThreadPoolExecutor(1, thread_name_prefix=COMPUTE_THREAD)

    def _auto_device(self) -> str:
        return "cuda" if self._torch.cuda.is_available() else "cpu"

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "device": str(self._device), "node": socket.gethostname()}

    # ------------------------------------------------------------- helpers

    def _compiled(self, source: str, source_hash: str, limits: Mapping[str, int]) -> Any:
        from gradserve_workers import lang

        key = (source_hash, tuple(sorted(limits.items())))
        fn = self._cache.get(key)
        if fn is None:
            fn = lang.compile_function(source, lang.Limits(**limits))
            self._cache[key] = fn
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return fn

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

    def _run(self, work: Callable[[], ChunkResult]) -> ChunkResult:
        """``work`` on the compute thread; user errors come back as data."""
        started = time.perf_counter()
        result = self._compute_thread.submit(_guarded, work).result()
        result.seconds = time.perf_counter() - started
        result.actor = self.name
        return result

    def _to_numpy(self, t: Any) -> np.ndarray:
        return t.detach().to("cpu").numpy()

    # ------------------------------------------------------------- work

    def run(self, message: bytes) -> ChunkResult:
        """A packed :class:`~gradserve_workers.tasks.ChunkCall` (small chunks: see
        :func:`~gradserve_workers.tasks.pack_call`): :meth:`compute` or :meth:`check`."""
        # outside _run on purpose: a message the server did not pack is the server's
        # bug, so it fails the Ray call (an internal error), never a user's "invalid"
        call = unpack_call(message)
        if isinstance(call.spec, CheckSpec):
            return self.check(call.spec, call.arrays, call.start, call.stop)
        return self.compute(call.spec, call.arrays, call.start, call.stop)

    def compute(
        self, spec: ComputeSpec, arrays: Mapping[str, np.ndarray], start: int, stop: int
    ) -> ChunkResult:
        return self._run(lambda: self._compute(spec, arrays, start, stop))

    def _compute(
        self, spec: ComputeSpec, arrays: Mapping[str, np.ndarray], start: int, stop: int
    ) -> ChunkResult:
        from gradserve_workers.ops import OpsRequest, compute

        fn = self._compiled(spec.source, spec.source_hash, spec.limits)
        names = list(fn.inputs)

        def tensors(prefix: str) -> dict[str, Any]:
            return {
                k[len(prefix) :]: self._tensor(v, spec.dtype, start, stop, spec.batched, False)
                for k, v in arrays.items()
                if k.startswith(prefix)
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
            verify=spec.verify,
        )
        result = compute(fn, names, inputs, request)
        if spec.batched and not result.vmapped:
            self._per_point.add(spec.source_hash)
        return ChunkResult(
            outputs={
                op: {key: self._to_numpy(t) for key, t in by_key.items()}
                for op, by_key in result.outputs.items()
            },
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
        return self._run(lambda: self._check(spec, arrays, start, stop))

    def _check(
        self, spec: CheckSpec, arrays: Mapping[str, np.ndarray], start: int, stop: int
    ) -> ChunkResult:
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
        if spec.batched and not report.vmapped:
            self._per_point.add(spec.source_hash)
        return ChunkResult(report=report, vmapped=report.vmapped)

    def _claim(self, source: str, names: list[str], limits: Mapping[str, int]) -> Any:
        """A claimed derivative, compiled over the function's inputs (in its order)."""
        from gradserve_workers import lang

        program = lang.parse_and_validate(source, lang.Limits(**limits), known_inputs=names)
        claim = lang.compile_program(program, lang.Limits(**limits))
        order = [names.index(n) for n in claim.inputs]

        def bound(*tensors: Any) -> Any:
            return claim(*(tensors[i] for i in order))

        return bound
