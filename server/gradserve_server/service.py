"""The computations behind Compute and Check, free of gRPC: validate, plan, dispatch,
assemble. Jobs run their tasks through the same two methods."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import ray

from gradserve import _wire
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server import binding, dispatch, sampling
from gradserve_server.config import ServerConfig
from gradserve_server.errors import from_chunk_error, invalid
from gradserve_server.planner import (
    SHARD_MIN_SECONDS,
    WorkLog,
    elements_per_point,
    plan_chunks,
    plan_shards,
)
from gradserve_server.pool import ActorPool
from gradserve_workers import actor as actor_keys
from gradserve_workers.report import CheckReport, merge_reports, merge_shards
from gradserve_workers.tasks import (
    FULL_CHECK_MAX_INPUTS,
    PACKED_CALL_MAX_BYTES,
    CheckSpec,
    ChunkCall,
    ChunkResult,
    ComputeSpec,
    pack_call,
)

# Arrays above this size go to the object store once instead of with every chunk.
OBJECT_STORE_BYTES = 256 * 1024

_CHECK_KIND_NAMES = {
    pb.CHECK_KIND_FINITE_DIFFERENCE: "finite_difference",
    pb.CHECK_KIND_CLAIMED_GRAD: "grad",
    pb.CHECK_KIND_CLAIMED_JACOBIAN: "jacobian",
    pb.CHECK_KIND_CLAIMED_HESSIAN: "hessian",
}
_REPORT_KINDS = {
    "finite_difference": pb.CHECK_KIND_FINITE_DIFFERENCE,
    "claimed_grad": pb.CHECK_KIND_CLAIMED_GRAD,
    "claimed_jacobian": pb.CHECK_KIND_CLAIMED_JACOBIAN,
    "claimed_hessian": pb.CHECK_KIND_CLAIMED_HESSIAN,
}
_OP_NUMBERS: dict[str, Any] = {name: number for number, name in binding.OP_BY_NUMBER.items()}


@dataclass
class Computed:
    """A finished computation: op -> key -> array, and how it ran."""

    outputs: dict[str, dict[str, np.ndarray]]
    metadata: pb.ComputeMetadata


class ComputeService:
    def __init__(self, config: ServerConfig, pool: ActorPool) -> None:
        self.config = config
        self.pool = pool
        self.limits = dict(config.limits)
        # worker seconds of recent element-wise checks, by function and shapes
        self._check_log = WorkLog()

    # ------------------------------------------------------------- compute

    def bind_compute(
        self,
        req: pb.ComputeRequest,
        given: Mapping[str, np.ndarray] | None = None,
        blobs: Sequence[bytes] | None = None,
    ) -> tuple[binding.Bound, ComputeSpec]:
        """Validate everything about a request that can be known before running it.

        ``given`` supplies input arrays directly (a job's sampled inputs), and
        ``blobs`` the bytes of a streamed request's slots, sparing large arrays a
        round trip through the request's bytes.
        """
        call = "compute(fn, inputs)"
        program = binding.validate_program(req.function, self.limits)
        ops = binding.op_names(req.ops, call)
        call = f"{ops[0]}(fn, inputs)" if len(ops) == 1 else call
        decoded = binding.request_arrays(req, blobs)
        arrays = binding.bind_names(
            {**decoded.get("input", {}), **(given or {})},
            program.inputs,
            "input",
            call,
        )
        dtype = binding.resolve_dtype(req.dtype, arrays, "float64")
        points, per_point = binding.check_points(
            arrays,
            req.batched,
            call,
            self.config.max_points,
            self.limits["max_input_elements"],
        )
        binding.check_finite(arrays, req.batched, call)
        wrt = binding.resolve_wrt(req.wrt, program.inputs, call)
        extra: dict[str, np.ndarray] = {}
        if "vjp" in ops:
            if not req.HasField("cotangent"):
                raise invalid("vjp(fn, inputs, cotangent): the cotangent is missing", "cotangent")
            extra[actor_keys.COTANGENT] = decoded["cotangent"][""]
        for op, prefix, what in (
            ("jvp", actor_keys.TANGENT, "tangent"),
            ("hvp", actor_keys.VECTOR, "vector"),
        ):
            if op not in ops:
                continue
            named = binding.bind_names(decoded.get(what, {}), wrt, what, f"{op}(...)")
            for name, arr in named.items():
                if arr.shape != arrays[name].shape:
                    raise invalid(
                        f"{op}(fn, inputs, {what}): the {what} for {name!r} has shape "
                        f"{arr.shape}, but the input has shape {arrays[name].shape}",
                        what,
                    )
                extra[prefix + name] = arr
        for arr in extra.values():
            if req.batched and (arr.ndim == 0 or arr.shape[0] != points):
                raise invalid(
                    f"{call}: batched=True, so cotangents, tangents and vectors need a leading "
                    f"dimension of {points} points"
                )
        spec = ComputeSpec(
            source=req.function,
            source_hash=program.source_hash,
            ops=ops,
            wrt=wrt,
            batched=req.batched,
            dtype=dtype,
            jacobian_mode=binding.MODES.get(req.jacobian_mode, "auto"),
            chunk_size=int(req.chunk_size) or None,
            limits=self.limits,
            verify=_VERIFY.get(req.verify),
        )
        bound = binding.Bound(program, arrays, req.batched, points, dtype, wrt, per_point, extra)
        return bound, spec

    async def compute(
        self, req: pb.ComputeRequest, tenant: str, blobs: Sequence[bytes] | None = None
    ) -> Computed:
        started = time.perf_counter()
        bound, spec = self.bind_compute(req, blobs=blobs)
        results = await self._dispatch(
            bound, spec, tenant, "compute", elements_per_point(bound.per_point_elements, spec.ops)
        )
        outputs = self._assemble(results, spec)
        meta = self._metadata(results, bound, started)
        return Computed(outputs, meta)

    def _assemble(
        self, results: list[ChunkResult], spec: ComputeSpec
    ) -> dict[str, dict[str, np.ndarray]]:
        outputs: dict[str, dict[str, np.ndarray]] = {}
        for op in spec.ops:
            keys = results[0].outputs[op].keys()
            if spec.batched and len(results) > 1:
                # one copy into a bytes object that the reply then sends as is
                outputs[op] = {
                    k: _wire.join_arrays([r.outputs[op][k] for r in results]) for k in keys
                }
            else:
                outputs[op] = dict(results[0].outputs[op])
        return outputs

    @staticmethod
    def _metadata(
        results: list[ChunkResult], bound: binding.Bound, started: float
    ) -> pb.ComputeMetadata:
        unconnected = set(results[0].unconnected)
        for r in results[1:]:
            unconnected &= set(r.unconnected)
        meta = pb.ComputeMetadata(
            unconnected=[n for n in bound.wrt if n in unconnected],
            out_shape=list(results[0].out_shape),
            chunks=len(results),
            workers=len({r.actor for r in results}),
            compute_seconds=sum(r.seconds for r in results),
            wall_seconds=time.perf_counter() - started,
            jacobian_mode=results[0].jacobian_mode or "",
            points=bound.points,
        )
        describe_execution(
            meta,
            all(r.vmapped for r in results) if bound.batched else None,
            unconnected,
            _merged_routes(r.routes for r in results),
        )
        describe_certificate(meta, [r.certificate for r in results])
        return meta

    async def _dispatch(
        self,
        bound: binding.Bound,
        spec: ComputeSpec | CheckSpec,
        tenant: str,
        method: str,
        per_point: int,
    ) -> list[ChunkResult]:
        ranges = self.plan(bound, per_point)
        payload = self.payload(bound, len(ranges))
        return await dispatch.gather_or_cancel(
            self._run_range_or_raise(spec, tenant, method, payload, a, b) for a, b in ranges
        )

    async def _run_range_or_raise(
        self, spec: ComputeSpec | CheckSpec, tenant: str, method: str, payload: Any,
        start: int, stop: int,
    ) -> ChunkResult:  # fmt: skip
        # one chunk's user error fails the call: raising here makes gather cancel the rest
        result = await self.run_range(spec, tenant, method, payload, start, stop)
        if result.error is not None:
            raise from_chunk_error(result.error)
        return result

    # ------------------------------------------------------------- chunk-level API (jobs)

    def plan(self, bound: binding.Bound, per_point: int, spread: int = 0) -> list[tuple[int, int]]:
        """The chunk ranges of a bound request; ``spread`` asks for at least that many
        chunks' worth of balance (jobs use it to keep chunks small and durable)."""
        if not bound.batched:
            return [(0, 1)]
        return plan_chunks(bound.points, per_point, max(len(self.pool.workers), spread))

    @staticmethod
    def payload(bound: binding.Bound, chunks: int) -> Any:
        """What each chunk call carries: the arrays, or one object-store ref to them when
        they are large and several chunks would otherwise each copy them."""
        arrays: dict[str, np.ndarray] = {**bound.arrays, **bound.extra}
        if chunks > 1 and sum(a.nbytes for a in arrays.values()) > OBJECT_STORE_BYTES:
            return ray.put(arrays)  # once, not once per chunk
        return arrays

    async def run_range(
        self,
        spec: ComputeSpec | CheckSpec,
        tenant: str,
        method: str,
        payload: Any,
        start: int,
        stop: int,
    ) -> ChunkResult:
        """One chunk ``[start, stop)`` on the pool, waiting its tenant's turn.

        A user error comes back in ``ChunkResult.error``; infrastructure failures
        (timeout, lost workers) raise ServiceError. ``payload`` is from :meth:`payload`.
        """
        submit = chunk_submitter(spec, method, payload, start, stop)
        return await dispatch.run_chunk(self.pool, tenant, submit, self.config.chunk_timeout_s)

    @staticmethod
    def per_point(bound: binding.Bound, spec: ComputeSpec | CheckSpec) -> int:
        """The planner's size estimate of one point of this computation or check."""
        if isinstance(spec, ComputeSpec):
            return elements_per_point(bound.per_point_elements, spec.ops)
        # a check evaluates ~2n perturbed points and an n x m Jacobian per point
        ops = ("hessian", "hessian") if spec.order == 2 else ("jacobian", "jacobian")
        return elements_per_point(bound.per_point_elements, ops)

    # ------------------------------------------------------------- checks

    def bind_check(self, req: pb.CheckRequest) -> tuple[binding.Bound, CheckSpec]:
        call = "check(fn, inputs)"
        program = binding.validate_program(req.function, self.limits)
        given: dict[str, np.ndarray] = {}
        sampled = False
        for name, input_spec in req.inputs.items():
            which = input_spec.WhichOneof("source")
            where = f"input {name!r}" if name else "input"
            if which == "sample":
                given[name] = sampling.draw(
                    input_spec.sample, f"{call}: {where}", self.config.max_points * 16
                )
                sampled = True
            elif which == "tensor":
                given[name] = binding.decode_map({name: input_spec.tensor}, "input")[name]
            else:
                raise invalid(f"{call}: {where} has neither a tensor nor a sample", "inputs")
        arrays = binding.bind_names(given, program.inputs, "input", call)
        batched = req.batched or sampled
        if sampled and not all(s.WhichOneof("source") == "sample" for s in req.inputs.values()):
            raise invalid(f"{call}: sample every input or none (sampled inputs are batched)")
        dtype = binding.resolve_dtype(req.dtype, arrays, "float64")
        points, per_point = binding.check_points(
            arrays, batched, call, self.config.max_points, self.limits["max_input_elements"]
        )
        binding.check_finite(arrays, batched, call)
        wrt = binding.resolve_wrt(req.wrt, program.inputs, call)
        kind = _CHECK_KIND_NAMES.get(req.kind)
        if kind is None:
            kind = "grad" if req.claims else "finite_difference"
        claims: dict[str, str] = {}
        if kind != "finite_difference":
            if not req.claims:
                raise invalid(f"{call}: a claimed-{kind} check needs a claim", "claims")
            for claim in req.claims:
                first = claim.input or (wrt[0] if len(wrt) == 1 else "")
                if not first:
                    raise invalid(
                        f"{call}: the claim does not say which input it is for; the function "
                        f"takes ({', '.join(program.inputs)}): give a dict by input",
                        "claims",
                    )
                binding.resolve_wrt([first, *([claim.input2] if claim.input2 else [])],
                                    program.inputs, call)  # fmt: skip
                binding.validate_program(claim.source, self.limits, program.inputs)
                key = f"{first},{claim.input2 or first}" if kind == "hessian" else first
                claims[key] = claim.source
        elif req.claims:
            raise invalid(f"{call}: claims were given but kind is finite_difference", "claims")
        options = req.options
        order = options.order or 1
        if order not in (1, 2):
            raise invalid(f"{call}: order must be 1 or 2, not {order}", "options.order")
        spec = CheckSpec(
            source=req.function,
            source_hash=program.source_hash,
            wrt=wrt,
            batched=batched,
            dtype=dtype,
            kind=kind,
            claims=claims,
            order=order,
            atol=options.atol if options.HasField("atol") else 1e-5,
            rtol=options.rtol if options.HasField("rtol") else 1e-3,
            eps=options.eps if options.HasField("eps") else 1e-6,
            fast=options.fast if options.HasField("fast") else None,
            seed=int(options.seed),
            limits=self.limits,
        )
        for name, value in (("atol", spec.atol), ("rtol", spec.rtol), ("eps", spec.eps)):
            if not (value >= 0 and np.isfinite(value)) or (name == "eps" and value == 0):
                raise invalid(f"{call}: {name} must be a finite positive number", f"options.{name}")
        bound = binding.Bound(program, arrays, batched, points, dtype, wrt, per_point)
        return bound, spec

    async def check(self, req: pb.CheckRequest, tenant: str) -> tuple[CheckReport, Computed]:
        started = time.perf_counter()
        bound, spec = self.bind_check(req)
        shards, key = self.shards(bound, spec)
        if len(shards) > 1:
            payload = self.payload(bound, len(shards))
            results = await dispatch.gather_or_cancel(
                self._run_range_or_raise(
                    replace(spec, columns=cols), tenant, "check", payload, 0, bound.points
                )
                for cols in shards
            )
            report = merge_shards([r.report for r in results])
        else:
            per_point = self.per_point(bound, spec)
            results = await self._dispatch(bound, spec, tenant, "check", per_point)
            starts = np.cumsum([0] + [len(r.report.point_passed) for r in results[:-1]])
            report = merge_reports([r.report for r in results], [int(s) for s in starts])
        if key is not None:
            self._check_log.record(key, sum(r.seconds for r in results))
        meta = self._metadata([replace(r, unconnected=()) for r in results], bound, started)
        return report, Computed({}, meta)

    def shards(
        self, bound: binding.Bound, spec: CheckSpec
    ) -> tuple[list[tuple[int, int]], tuple[Any, ...] | None]:
        """How one large element-wise check at one point (finite differences, or a
        claimed Jacobian) is split by input elements across the workers idle now (see
        :func:`plan_shards`; one range or none: not split), and the key under which
        its cost is remembered (``None``: not a kind that is split).

        Each shard differentiates and compares its own elements (and evaluates their
        perturbations, or the whole claim). A check of a function whose last such
        check took less than :data:`SHARD_MIN_SECONDS` of worker time is not split
        (the first one is: a one-off large check gains most); nor are busy pools,
        several points (split by point instead), fast mode and second order."""
        if spec.kind not in ("finite_difference", "jacobian") or bound.points != 1:
            return [], None
        # the elements split: the wrt inputs', or a claimed Jacobian's inputs' (its keys)
        split = bound.wrt if spec.kind == "finite_difference" else tuple(spec.claims)
        inputs = sum(
            int(np.prod(bound.arrays[w].shape[1:] if bound.batched else bound.arrays[w].shape))
            for w in split
        )
        full = spec.fast is False or (spec.fast is None and inputs <= FULL_CHECK_MAX_INPUTS)
        if spec.kind == "finite_difference" and (spec.order != 1 or not full):
            return [], None
        shapes = tuple((k, v.shape) for k, v in sorted(bound.arrays.items()))
        key = (
            spec.source_hash,
            spec.wrt,
            shapes,
            spec.dtype,
            spec.kind,
            tuple(spec.claims.items()),
        )
        last = self._check_log.seconds(key)
        if last is not None and last < SHARD_MIN_SECONDS:
            return [], key
        return plan_shards(inputs, self.pool.idle), key


def chunk_submitter(
    spec: ComputeSpec | CheckSpec, method: str, payload: Any, start: int, stop: int
) -> dispatch.Submit:
    """How chunk ``[start, stop)`` is called on an actor handle (``method``: "compute"
    or "check"). A chunk whose arrays are small travels as one packed message
    (:func:`~gradserve_workers.tasks.pack_call`, measured never slower up to 512 KiB);
    larger arrays, and an object-store ref to them, go as Ray arguments, which the
    worker reads where Ray put them."""
    if not isinstance(payload, dict):
        return lambda h: getattr(h, method).remote(spec, payload, start, stop)
    if spec.batched:  # each chunk of points carries only its own slice
        arrays = {k: v[start:stop] for k, v in payload.items()}
        first, last = 0, stop - start
    else:
        arrays, first, last = payload, start, stop
    if sum(a.nbytes for a in arrays.values()) > PACKED_CALL_MAX_BYTES:
        return lambda h: getattr(h, method).remote(spec, arrays, first, last)
    message = pack_call(ChunkCall(spec, arrays, first, last))  # once, for any retry
    return lambda h: h.run.remote(message)


# the request's Verify choice; absent: the workers' default (certified where cheap)
_VERIFY = {pb.VERIFY_ON: True, pb.VERIFY_OFF: False}


def describe_certificate(
    meta: pb.ComputeMetadata, certificates: Sequence[Mapping[str, Any] | None]
) -> None:
    """The chunks' certificates as one (the worst agreement, the points summed), set
    only when every chunk was certified."""
    if not certificates or any(c is None for c in certificates):
        return
    certs = [c for c in certificates if c is not None]
    first = certs[0]
    meta.certificate.CopyFrom(
        pb.Certificate(
            disagreement=max(float(c["disagreement"]) for c in certs),
            tolerance=float(first["tolerance"]),
            checks=list(first["checks"]),
            points=sum(int(c["points"]) for c in certs),
            skipped=sorted({s for c in certs for s in c["skipped"]}),
        )
    )


def _merged_routes(per_chunk: Iterable[Sequence[str]]) -> list[str]:
    """Every route any chunk took, once, in the order first seen."""
    return list(dict.fromkeys(r for routes in per_chunk for r in routes))


def describe_execution(
    meta: pb.ComputeMetadata,
    vmapped: bool | None,
    unconnected: Iterable[str],
    routes: Sequence[str] = (),
) -> None:
    """The execution path, the strategy (direct, or the routes taken around transforms
    known to be wrong) and the warnings a user should read (``vmapped`` is None when
    nothing was mapped over points: one point)."""
    meta.strategy = "rerouted" if routes else "direct"
    meta.routes[:] = list(routes)
    if vmapped is None:
        meta.execution_path = pb.EXECUTION_PATH_SINGLE
    else:
        meta.execution_path = pb.EXECUTION_PATH_VMAP if vmapped else pb.EXECUTION_PATH_PER_POINT
        if not vmapped:
            meta.warnings.append(
                "the function has data-dependent control flow, so points ran one at a "
                "time instead of vectorised"
            )
    names = sorted(unconnected)
    if names:
        meta.warnings.append(
            f"the output does not depend on {', '.join(names)}: its derivatives are zeros"
        )


def report_to_proto(report: CheckReport) -> pb.CheckReport:
    msg = pb.CheckReport(
        passed=report.passed,
        kind=_REPORT_KINDS.get(report.kind, pb.CHECK_KIND_UNSPECIFIED),
        order=report.order,
        mode=report.mode,
        max_abs_error=report.max_abs_error,
        max_rel_error=report.max_rel_error,
        non_differentiable=report.non_differentiable,
        point_passed=list(report.point_passed),
        message=report.message,
        atol=report.atol,
        rtol=report.rtol,
        eps=report.eps,
        num_points=report.num_points,
        execution_path=pb.EXECUTION_PATH_VMAP if report.vmapped else pb.EXECUTION_PATH_PER_POINT,
    )
    if report.symmetric is not None:
        msg.symmetric = report.symmetric
    msg.max_asymmetry = report.max_asymmetry
    kink = report.kink
    if kink is not None:
        msg.kink.CopyFrom(
            pb.Kink(
                point=kink.point,
                input=kink.input,
                output_index=list(kink.output_index),
                input_index=list(kink.input_index),
                right=kink.right,
                left=kink.left,
                autograd=kink.autograd,
            )
        )
        if kink.at is not None:
            msg.kink.at = kink.at
    if report.worst is not None:
        w = report.worst
        msg.worst.CopyFrom(
            pb.WorstElement(
                point=w.point,
                input=w.input,
                output_index=list(w.output_index),
                input_index=list(w.input_index),
                analytic=w.analytic,
                numeric=w.numeric,
                abs_error=w.abs_error,
                rel_error=w.rel_error,
            )
        )
    return msg


def outputs_to_proto(
    outputs: Mapping[str, Mapping[str, np.ndarray]], into: Any, *, with_data: bool = True
) -> list[np.ndarray]:
    """Op results built in place in the repeated field ``into`` (each array's bytes
    copied at most once); returns the arrays in slot order, for streaming their bytes."""
    arrays = []
    for op, by_key in outputs.items():
        result = into.add(op=_OP_NUMBERS[op])
        for key, arr in by_key.items():
            first, _, second = key.partition(",")
            out = result.outputs.add(input=first, input2=second)
            arrays.append(_wire.fill(out.tensor, arr, with_data=with_data))
    return arrays
