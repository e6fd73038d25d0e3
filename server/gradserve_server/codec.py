"""The one decoder of requests: protobuf messages in, typed requests out
(requests.py), each tensor decoded once, zero-copy, every rule of rules.py applied
on the way. Nothing after this reads a request message.

Order matters for what a bad request costs: what needs no array is checked first,
then the budgets from the header's shapes alone, and only then are tensors decoded
or points drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gradserve import wire
from gradserve.names import CHECK_KIND_BY_NUMBER, DTYPE_BY_NUMBER, JACOBIAN_MODE_BY_NUMBER
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server import rules, sampling
from gradserve_server.budgets import Budgets, max_sample_elements
from gradserve_server.config import ServerConfig
from gradserve_server.errors import invalid
from gradserve_server.requests import (
    CheckOptions,
    CheckRequest,
    Claims,
    ComputeHeader,
    ComputeRequest,
    Inputs,
)
from gradserve_workers import lang

__all__ = ["RequestCodec", "compute_slots", "decode_tensors", "has_samples"]

# the request's Verify choice; absent: the workers' default (certified where cheap)
VERIFY = {pb.VERIFY_ON: True, pb.VERIFY_OFF: False}
# a check's kind by the name of its claim's argument ("grad", ...), or finite_difference
CHECK_KIND_ARGS = {n: name.removeprefix("claimed_") for n, name in CHECK_KIND_BY_NUMBER.items()}
CHECK_CALL = "check(fn, inputs)"


def decode_tensors(tensors: Mapping[str, pb.Tensor], what: str) -> dict[str, np.ndarray]:
    """Wire tensors by name as arrays (zero-copy), refused with the field they are in."""
    out = {}
    for name, msg in tensors.items():
        try:
            out[name] = wire.decode(msg, f"{what} {name!r}" if name else what)
        except wire.WireError as exc:
            raise invalid(str(exc), what) from None
    return out


def has_samples(msg: pb.CheckRequest) -> bool:
    """Whether decoding draws points (which takes a while: off the event loop)."""
    return any(s.WhichOneof("source") == "sample" for s in msg.inputs.values())


def compute_slots(msg: pb.ComputeRequest) -> list[tuple[tuple[str, str], pb.Tensor]]:
    """A compute request's tensors in slot order (wire.request_slots'), each with its
    field ("input", "cotangent" (name ""), "tangent" or "vector") and name."""
    keys = [("input", n) for n in sorted(msg.inputs)]
    keys += [("cotangent", "")] if msg.HasField("cotangent") else []
    keys += [("tangent", n) for n in sorted(msg.tangents)]
    keys += [("vector", n) for n in sorted(msg.vector)]
    return list(zip(keys, wire.request_slots(msg), strict=True))


def _compute_tensors(
    msg: pb.ComputeRequest, blobs: Sequence[bytes] | None
) -> dict[str, dict[str, np.ndarray]]:
    """Every tensor of a compute request: field -> name -> array (see
    :func:`compute_slots`); ``blobs`` are the bytes of a streamed request's slots."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for index, ((what, name), tensor) in enumerate(compute_slots(msg)):
        where = f"{what} {name!r}" if name else what
        try:
            arr = wire.decode(tensor, where, None if blobs is None else blobs[index])
        except wire.WireError as exc:
            raise invalid(str(exc), what) from None
        out.setdefault(what, {})[name] = arr
    return out


def _dtype(requested: Any, arrays: Mapping[str, np.ndarray]) -> str:
    """The dtype a request computes in: its own, else float32 only when every input is."""
    if requested in DTYPE_BY_NUMBER:
        return DTYPE_BY_NUMBER[requested]
    kinds = {str(a.dtype) for a in arrays.values()}
    return "float32" if kinds == {"float32"} else "float64"


class RequestCodec:
    """Decodes requests against one server's limits and budgets."""

    def __init__(self, config: ServerConfig, budgets: Budgets) -> None:
        self.limits = dict(config.limits)
        self.max_points = config.max_points
        self.budgets = budgets

    def _inputs(self, arrays: dict[str, np.ndarray], requested: Any, batched: bool,
                call: str, check_values: bool = True) -> Inputs:  # fmt: skip
        count, per_point = rules.points(
            arrays, batched, call, self.max_points, self.limits["max_input_elements"]
        )
        if check_values:
            rules.finite_inputs(arrays, batched, call)
        return Inputs(arrays, batched, count, per_point, _dtype(requested, arrays))

    def draw(self, specs: Mapping[str, pb.InputSpec], call: str) -> dict[str, np.ndarray]:
        """Sampled inputs' points by name (a check's, or a job task's): every input
        sampled, or refused."""
        rules.input_sources({n: s.WhichOneof("source") for n, s in specs.items()}, call)
        limit = max_sample_elements(self.max_points)
        return {
            name: sampling.draw(
                s.sample, f"{call}: input {name!r}" if name else f"{call}: input", limit
            )
            for name, s in specs.items()
        }

    # ------------------------------------------------------------- compute

    def compute_header(self, msg: pb.ComputeRequest, unary: bool = False) -> ComputeHeader:
        """The program, ops and wrt names of a compute request whose cost, estimated
        from its header's shapes alone (no tensor decoded), is within the server's
        budgets; else RESOURCE_EXHAUSTED naming the budget and the estimate."""
        program = rules.program(msg.function, self.limits)
        ops = rules.op_names(msg.ops, "compute(fn, inputs)")
        call = f"{ops[0]}(fn, inputs)" if len(ops) == 1 else "compute(fn, inputs)"
        wrt = rules.wrt(msg.wrt, program.inputs, call)
        estimate = self.budgets.estimate_compute(msg, program.inputs, ops, wrt, call)
        return ComputeHeader(
            program, ops, wrt, estimate, self.budgets.admit_compute(estimate, unary)
        )

    def compute(
        self,
        msg: pb.ComputeRequest,
        given: Mapping[str, np.ndarray] | None = None,
        blobs: Sequence[bytes] | None = None,
        header: ComputeHeader | None = None,
        shapes_only: Mapping[str, Mapping[str, np.ndarray]] | None = None,
        screen: bool = True,
    ) -> ComputeRequest:
        """A compute request, validated in everything that can be known before it runs.

        ``given`` supplies input arrays directly (a job's sampled inputs), and
        ``blobs`` the bytes of a streamed request's slots, sparing large arrays a
        round trip through the request's bytes. ``header``: the request's, when it
        was admitted already (:meth:`compute_header`). ``shapes_only`` stands in for
        the tensors (as field -> name -> array) when only their shapes are known yet:
        their values are not checked (a pipelined stream checks each chunk's rows).
        ``screen=False``: the inputs' values are not screened for NaN/Inf here (inputs
        in shared memory: each worker screens the rows it reads, in parallel).
        """
        header = header or self.compute_header(msg)
        call, ops, wrt = header.call, header.ops, header.wrt
        tensors = _compute_tensors(msg, blobs) if shapes_only is None else shapes_only
        arrays = rules.bind_names(
            {**tensors.get("input", {}), **(given or {})}, header.program.inputs, "input", call
        )
        screen = screen and shapes_only is None
        inputs = self._inputs(arrays, msg.dtype, msg.batched, call, screen)
        cotangent = None
        if "vjp" in ops:
            if not msg.HasField("cotangent"):
                raise invalid("vjp(fn, inputs, cotangent): the cotangent is missing", "cotangent")
            cotangent = tensors["cotangent"][""]
        named: dict[str, dict[str, np.ndarray]] = {}
        for op, what in (("jvp", "tangent"), ("hvp", "vector")):
            if op in ops:
                named[what] = rules.bind_names(tensors.get(what, {}), wrt, what, f"{op}(...)")
                rules.shaped_as_inputs(op, what, named[what], arrays)
        tangents, vector = named.get("tangent", {}), named.get("vector", {})
        if msg.batched:
            extras = [*([] if cotangent is None else [cotangent]), *tangents.values()]
            rules.one_per_point([*extras, *vector.values()], inputs.points, call)
        return ComputeRequest(
            header=header,
            inputs=inputs,
            jacobian_mode=JACOBIAN_MODE_BY_NUMBER.get(msg.jacobian_mode, "auto"),
            chunk_size=int(msg.chunk_size) or None,
            verify=VERIFY.get(msg.verify),
            cotangent=cotangent,
            tangents=tangents,
            vector=vector,
        )

    # ------------------------------------------------------------- checks

    def check(self, msg: pb.CheckRequest) -> CheckRequest:
        """A check request: everything that needs no array first, then the budgets of
        its sampled points, and only then draw and decode."""
        call = CHECK_CALL
        program = rules.program(msg.function, self.limits)
        sources = {n: s.WhichOneof("source") for n, s in msg.inputs.items()}
        sampled = rules.input_sources(sources, call)
        wrt = rules.wrt(msg.wrt, program.inputs, call)
        kind, claim_sources, claim_values = self._claims(msg, program, wrt)
        options = _check_options(msg.options, call)
        rules.bind_names(dict.fromkeys(sources), program.inputs, "input", call)  # names only
        self.budgets.estimate_samples(
            {n: s.sample for n, s in msg.inputs.items() if sources[n] == "sample"}, call
        )
        if sampled:
            given = self.draw(msg.inputs, call)
        else:
            given = {}
            for name, input_spec in msg.inputs.items():
                self.budgets.shape(input_spec.tensor, f"input {name!r}" if name else "input")
                given[name] = decode_tensors({name: input_spec.tensor}, "input")[name]
        arrays = rules.bind_names(given, program.inputs, "input", call)
        inputs = self._inputs(arrays, msg.dtype, msg.batched or sampled, call)
        claims = None
        if kind != "finite_difference":
            batched_points = inputs.points if inputs.batched else None
            values = {  # numeric claims, now that the points are known
                key: rules.claim_values(
                    decode_tensors({key: v}, "claim")[key].astype(np.float64, copy=False),
                    kind,
                    key,
                    arrays,
                    batched_points,
                    call,
                )
                for key, v in claim_values.items()
            }
            claims = Claims(kind, claim_sources, values)
        return CheckRequest(program, wrt, inputs, options, claims)

    def _claims(
        self, msg: pb.CheckRequest, program: lang.Program, wrt: tuple[str, ...]
    ) -> tuple[str, dict[str, str], dict[str, pb.Tensor]]:
        """The check's kind, its claims' sources by input (or "a,b" pair), validated,
        and the claims given as numbers (decoded once the points are known)."""
        call = CHECK_CALL
        kind = CHECK_KIND_ARGS.get(msg.kind)
        if kind is None:
            kind = "grad" if msg.claims else "finite_difference"
        sources: dict[str, str] = {}
        numbers: dict[str, pb.Tensor] = {}
        if kind == "finite_difference":
            if msg.claims:
                raise invalid(f"{call}: claims were given but kind is finite_difference", "claims")
            return kind, sources, numbers
        if not msg.claims:
            raise invalid(f"{call}: a claimed-{kind} check needs a claim", "claims")
        for claim in msg.claims:
            first = claim.input or (wrt[0] if len(wrt) == 1 else "")
            if not first:
                raise invalid(
                    f"{call}: the claim does not say which input it is for; the function "
                    f"takes ({', '.join(program.inputs)}): give a dict by input",
                    "claims",
                )
            rules.wrt([first, *([claim.input2] if claim.input2 else [])], program.inputs, call)
            key = f"{first},{claim.input2 or first}" if kind == "hessian" else first
            if claim.HasField("values"):
                numbers[key] = claim.values
            else:
                rules.program(claim.source, self.limits, program.inputs)
            sources[key] = claim.source
        if numbers and len(numbers) != len(sources):
            raise invalid(f"{call}: give every claim as source text or every one as numbers")
        return kind, sources, numbers


def _check_options(options: pb.CheckOptions, call: str) -> CheckOptions:
    """A check's order and tolerances, validated."""

    def given(name: str) -> float | None:
        return getattr(options, name) if options.HasField(name) else None

    return CheckOptions(
        order=rules.order(options.order, call),
        atol=rules.tolerance("atol", given("atol"), call),
        rtol=rules.tolerance("rtol", given("rtol"), call),
        eps=rules.tolerance("eps", given("eps"), call),
        fast=options.fast if options.HasField("fast") else None,
        seed=int(options.seed),
    )
