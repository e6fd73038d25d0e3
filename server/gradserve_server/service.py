"""The computations behind Compute and Check, free of gRPC: validate, plan, dispatch,
assemble. Jobs run their tasks through the same two methods."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np
import ray

from gradserve import wire
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server import binding, dispatch, numeric, sampling, shm
from gradserve_server.budgets import Budgets, ComputeEstimate, InFlight, max_sample_elements
from gradserve_server.config import ServerConfig
from gradserve_server.encoding import report_to_proto
from gradserve_server.errors import from_chunk_error, invalid
from gradserve_server.planner import (
    SHARD_MIN_SECONDS,
    WorkLog,
    elements_per_point,
    plan_chunks,
    plan_shards,
)
from gradserve_server.pool import ActorPool, tenant_of
from gradserve_workers import actor as actor_keys
from gradserve_workers import lang
from gradserve_workers.replies import ReplyBudget
from gradserve_workers.report import CheckReport, merge_reports, merge_shards

__all__ = ["Admitted", "ComputeService", "Computed", "describe_execution", "report_to_proto"]
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


@dataclass
class Computed:
    """A finished computation: op -> key -> its chunks' arrays in point order (one
    array unless a batched call ran in several chunks), and how it ran."""

    outputs: dict[str, dict[str, list[np.ndarray]]]
    metadata: pb.ComputeMetadata
    # the results as the reply sends them when the outputs went into shared memory
    placed: list[pb.OpResult] | None = None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for by_key in self.outputs.values() for p in by_key.values() for a in p)

    def joined(self) -> dict[str, dict[str, np.ndarray]]:
        """Each output as one array (one copy, into a bytes object a reply sends as is)."""
        return {
            op: {k: p[0] if len(p) == 1 else wire.join_arrays(p) for k, p in by_key.items()}
            for op, by_key in self.outputs.items()
        }


@dataclass(frozen=True)
class Admitted:
    """A compute request within the budgets (see :meth:`ComputeService.admit_compute`)."""

    program: lang.Program
    ops: tuple[str, ...]
    wrt: tuple[str, ...]
    estimate: ComputeEstimate
    # what the worker must check once it knows the output's shape (None: nothing)
    reply_budget: ReplyBudget | None


class ComputeService:
    def __init__(self, config: ServerConfig, pool: ActorPool) -> None:
        self.config = config
        self.pool = pool
        self.limits = dict(config.limits)
        self.budgets = Budgets.from_config(config)
        # bytes held for calls in progress, all callers together
        self.inflight = InFlight(self.budgets.inflight_bytes)
        # pieces of server streams written but not yet taken by their readers
        self.stream_pieces = InFlight(self.budgets.stream_bytes, "max_stream_bytes")
        # worker seconds of recent element-wise checks, by function and shapes
        self._check_log = WorkLog()
        # shared-memory regions of clients on this host, by tenant
        self.shared = shm.Registry(config.shared_memory, config.max_shm_regions)

    # ------------------------------------------------------------- compute

    def bind_compute(
        self,
        req: pb.ComputeRequest,
        given: Mapping[str, np.ndarray] | None = None,
        blobs: Sequence[bytes] | None = None,
        unary: bool = False,
    ) -> tuple[binding.Bound, ComputeSpec]:
        """Validate everything about a request that can be known before running it.

        ``given`` supplies input arrays directly (a job's sampled inputs), and
        ``blobs`` the bytes of a streamed request's slots, sparing large arrays a
        round trip through the request's bytes.
        """
        admitted = self.admit_compute(req, unary)
        program, ops, wrt = admitted.program, admitted.ops, admitted.wrt
        call = admitted.estimate.call
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
            reply_budget=admitted.reply_budget,
            verify=_VERIFY.get(req.verify),
        )
        bound = binding.Bound(program, arrays, req.batched, points, dtype, wrt, per_point, extra)
        return bound, spec

    def admit_compute(self, req: pb.ComputeRequest, unary: bool = False) -> Admitted:
        """The program, ops and wrt names of a compute request whose cost, estimated
        from its header's shapes alone (no tensor decoded), is within the server's
        budgets; else RESOURCE_EXHAUSTED naming the budget and the estimate."""
        program = binding.validate_program(req.function, self.limits)
        ops = binding.op_names(req.ops, "compute(fn, inputs)")
        call = f"{ops[0]}(fn, inputs)" if len(ops) == 1 else "compute(fn, inputs)"
        wrt = binding.resolve_wrt(req.wrt, program.inputs, call)
        estimate = self.budgets.estimate_compute(req, program.inputs, ops, wrt, call)
        return Admitted(program, ops, wrt, estimate, self.budgets.admit_compute(estimate, unary))

    async def compute(
        self,
        req: pb.ComputeRequest,
        tenant: str,
        blobs: Sequence[bytes] | None = None,
        unary: bool = False,
    ) -> Computed:
        """Run a compute request (``unary``: its reply must fit one message, unless its
        outputs go into shared memory)."""
        started = time.perf_counter()
        with self.shared.resolve(req, tenant_of(tenant), blobs is not None) as shared:
            if shared is not None:
                # memoryviews of the regions: decoding reads any buffer, zero-copy
                blobs = cast("Sequence[bytes]", shared.blobs)
                if shared.output is not None:
                    estimate = self.admit_compute(req).estimate
                    shared.check_room(estimate.reply_bytes, estimate.out is not None)
                    unary = False
            bound, spec = self.bind_compute(req, blobs=blobs, unary=unary)
            if shared is not None and bound.batched:
                shared.plan_writes(spec.ops, bound.arrays, bound.wrt, spec.dtype)
            per_point = elements_per_point(bound.per_point_elements, spec.ops)
            results = await self._dispatch(bound, spec, tenant, "compute", per_point, shared)
            done = Computed(self._assemble(results, spec), self._metadata(results, bound, started))
            if shared is not None and shared.output is not None:
                done.placed = shared.place(done.outputs, [r.written for r in results])
                done.outputs = {}
            return done

    def _assemble(
        self, results: list[ChunkResult], spec: ComputeSpec
    ) -> dict[str, dict[str, list[np.ndarray]]]:
        outputs: dict[str, dict[str, list[np.ndarray]]] = {}
        for op in spec.ops:
            keys = results[0].outputs[op].keys()
            if spec.batched and len(results) > 1:
                outputs[op] = {k: [r.outputs[op][k] for r in results] for k in keys}
            else:
                outputs[op] = {k: [a] for k, a in results[0].outputs[op].items()}
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
        shared: shm.SharedCall | None = None,
    ) -> list[ChunkResult]:
        ranges = self.plan(bound, per_point)
        payload = None
        if shared is not None:  # workers on this host read the caller's region in place
            here = shm.workers_on_this_host([w.name for w in self.pool.workers])
            payload = shared.payload({**bound.arrays, **bound.extra}, here)
        if payload is None:
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
        """Validate a check request: everything that needs no array first, then the
        budgets of its sampled points, and only then draw and decode."""
        call = "check(fn, inputs)"
        program = binding.validate_program(req.function, self.limits)
        sources = {n: s.WhichOneof("source") for n, s in req.inputs.items()}
        for name, which in sources.items():
            if which not in ("sample", "tensor"):
                where = f"input {name!r}" if name else "input"
                raise invalid(f"{call}: {where} has neither a tensor nor a sample", "inputs")
        sampled = "sample" in sources.values()
        if sampled and set(sources.values()) != {"sample"}:
            raise invalid(f"{call}: sample every input or none (sampled inputs are batched)")
        wrt = binding.resolve_wrt(req.wrt, program.inputs, call)
        kind, claims, numeric_claims = self._claims(req, program, wrt, call)
        order, tolerances = _check_options(req.options, call)
        binding.bind_names(dict.fromkeys(sources), program.inputs, "input", call)  # names only
        self.budgets.estimate_samples(
            {n: s.sample for n, s in req.inputs.items() if sources[n] == "sample"}, call
        )
        given: dict[str, np.ndarray] = {}
        for name, input_spec in req.inputs.items():
            where = f"input {name!r}" if name else "input"
            if sources[name] == "sample":
                given[name] = sampling.draw(
                    input_spec.sample,
                    f"{call}: {where}",
                    max_sample_elements(self.config.max_points),
                )
            else:
                self.budgets.shape(input_spec.tensor, where)
                given[name] = binding.decode_map({name: input_spec.tensor}, "input")[name]
        arrays = binding.bind_names(given, program.inputs, "input", call)
        batched = req.batched or sampled
        dtype = binding.resolve_dtype(req.dtype, arrays, "float64")
        points, per_point = binding.check_points(
            arrays, batched, call, self.config.max_points, self.limits["max_input_elements"]
        )
        binding.check_finite(arrays, batched, call)
        spec = CheckSpec(
            source=req.function,
            source_hash=program.source_hash,
            wrt=wrt,
            batched=batched,
            dtype=dtype,
            kind=kind,
            claims=claims,
            order=order,
            atol=tolerances["atol"],
            rtol=tolerances["rtol"],
            eps=tolerances["eps"],
            fast=req.options.fast if req.options.HasField("fast") else None,
            seed=int(req.options.seed),
            limits=self.limits,
            numeric=tuple(numeric_claims),
        )
        values = {  # numeric claims, now that the points are known
            key: numeric.claim_values(v, kind, key, arrays, points if batched else None, call)
            for key, v in numeric_claims.items()
        }
        extra = {numeric.CLAIM + key: arr for key, arr in values.items()}
        bound = binding.Bound(program, arrays, batched, points, dtype, wrt, per_point, extra)
        return bound, spec

    def _claims(
        self, req: pb.CheckRequest, program: lang.Program, wrt: tuple[str, ...], call: str
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        """The check's kind, its claims by input (or "a,b" pair), validated, and the
        claims given as numbers (their proto values, decoded once points are known)."""
        kind = _CHECK_KIND_NAMES.get(req.kind)
        if kind is None:
            kind = "grad" if req.claims else "finite_difference"
        claims: dict[str, str] = {}
        numbers: dict[str, Any] = {}
        if kind == "finite_difference":
            if req.claims:
                raise invalid(f"{call}: claims were given but kind is finite_difference", "claims")
            return kind, claims, numbers
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
            key = f"{first},{claim.input2 or first}" if kind == "hessian" else first
            if claim.HasField("values"):
                numbers[key] = claim.values
            else:
                binding.validate_program(claim.source, self.limits, program.inputs)
            claims[key] = claim.source
        if numbers and len(numbers) != len(claims):
            raise invalid(f"{call}: give every claim as source text or every one as numbers")
        return kind, claims, numbers

    async def check(self, req: pb.CheckRequest, tenant: str) -> tuple[CheckReport, Computed]:
        started = time.perf_counter()
        if any(s.WhichOneof("source") == "sample" for s in req.inputs.values()):
            # drawing points takes a while: off the event loop, which serves every call
            bound, spec = await asyncio.to_thread(self.bind_check, req)
        else:
            bound, spec = self.bind_check(req)
        report, results = await self._checked(bound, spec, tenant)
        if spec.numeric:  # and autograd against finite differences, to name the odd one
            reference, more = await self._checked(bound, numeric.reference_spec(spec), tenant)
            claims = numeric.claims_of(bound)
            report = numeric.three_way(report, reference, claims, bound.batched)
            results += more
        meta = self._metadata([replace(r, unconnected=()) for r in results], bound, started)
        return report, Computed({}, meta)

    async def _checked(
        self, bound: binding.Bound, spec: CheckSpec, tenant: str
    ) -> tuple[CheckReport, list[ChunkResult]]:
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
        return report, results

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


def _check_options(options: pb.CheckOptions, call: str) -> tuple[int, dict[str, float]]:
    """A check's order and tolerances (atol, rtol, eps), validated."""
    order = options.order or 1
    if order not in (1, 2):
        raise invalid(f"{call}: order must be 1 or 2, not {order}", "options.order")
    tolerances = {
        "atol": options.atol if options.HasField("atol") else 1e-5,
        "rtol": options.rtol if options.HasField("rtol") else 1e-3,
        "eps": options.eps if options.HasField("eps") else 1e-6,
    }
    for name, value in tolerances.items():
        if not (value >= 0 and np.isfinite(value)) or (name == "eps" and value == 0):
            raise invalid(f"{call}: {name} must be a finite positive number", f"options.{name}")
    return order, tolerances


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
                "the function cannot be vectorised (data-dependent control flow, or an "
                "autograd.Function without a vmap rule), so points ran one at a time"
            )
    names = sorted(unconnected)
    if names:
        meta.warnings.append(
            f"the output does not depend on {', '.join(names)}: its derivatives are zeros"
        )
