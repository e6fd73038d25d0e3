"""The derivative certificate (gradserve_workers.certify): it withholds wrong derivatives
and passes right ones, with the agreement it measured.

Wrong derivatives come from two honest sources, never from patching our code: a
function whose registered reverse-mode rule disagrees with its forward-mode rule (a
custom ``torch.autograd.Function``, the way a user's or a library's wrong rule reaches
autograd), and torch 2.13's own nested forward AD through LU-based functions under
``vmap`` (computed here with torch.func directly, so the test keeps seeing the bug
whatever the service routes around).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from gradserve_workers import lang
from gradserve_workers.actor import classify
from gradserve_workers.certify import (
    DEFAULT_MIN_COLUMNS,
    CertificateError,
    certify,
    rtol_for,
)
from gradserve_workers.ops import OpsRequest, OpsResult, compute


class SinWrongBackward(torch.autograd.Function):
    """sin with a correct forward-mode rule and a reverse-mode rule off by a factor."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * 1.5 * torch.cos(x)  # wrong: d sin = cos

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return tangent * torch.cos(x)


def wrong_vec(x: torch.Tensor) -> torch.Tensor:
    return SinWrongBackward.apply(x) * x  # type: ignore[no-any-return]


def wrong_scalar(x: torch.Tensor) -> torch.Tensor:
    return (SinWrongBackward.apply(x) ** 2).sum()  # type: ignore[no-any-return]


def right_vec(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) * x


def right_scalar(x: torch.Tensor) -> torch.Tensor:
    return (torch.sin(x) ** 2).sum() + (x**3).sum()


def _request(op: str, x: torch.Tensor, batched: bool, **kw: Any) -> OpsRequest:
    g = torch.Generator().manual_seed(3)

    def like(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=g, dtype=t.dtype)

    extra: dict[str, Any] = {}
    if op == "vjp":
        extra["cotangent"] = like(x)
    if op == "jvp":
        extra["tangents"] = {"x": like(x)}
    if op == "hvp":
        extra["vector"] = {"x": like(x)}
    return OpsRequest(ops=(op,), batched=batched, verify=True, **extra, **kw)


POINT = torch.linspace(-1.2, 1.7, 5, dtype=torch.float64)
BATCH = torch.stack([POINT, POINT * 0.5 + 0.1, -POINT])


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize(
    ("op", "fn", "kw"),
    [
        ("grad", wrong_scalar, {}),
        ("vjp", wrong_vec, {}),
        ("jvp", wrong_vec, {}),
        ("jacobian", wrong_vec, {"jacobian_mode": "reverse"}),
        ("jacobian", wrong_vec, {"jacobian_mode": "forward"}),
        ("hessian", wrong_scalar, {}),
        ("hvp", wrong_scalar, {}),
    ],
)
def test_a_wrong_reverse_rule_is_withheld(
    op: str, fn: Any, kw: dict[str, Any], batched: bool
) -> None:
    x = BATCH if batched else POINT
    with pytest.raises(CertificateError) as info:
        compute(fn, ["x"], {"x": x}, _request(op, x, batched, **kw))
    message = str(info.value)
    assert message.startswith(f"{op}(")
    assert "the derivative certificate failed" in message
    assert "differ by" in message and "tolerance" in message
    # it is the service's fault, said in full: INTERNAL, not the user's INVALID_ARGUMENT
    error = classify(info.value)
    assert error.kind == "internal" and error.message == message


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize(
    ("op", "fn", "kw"),
    [
        ("grad", right_scalar, {}),
        ("vjp", right_vec, {}),
        ("jvp", right_vec, {}),
        ("jacobian", right_vec, {"jacobian_mode": "reverse"}),
        ("jacobian", right_vec, {"jacobian_mode": "forward"}),
        ("hessian", right_scalar, {}),
        ("hvp", right_scalar, {}),
    ],
)
def test_right_answers_pass_with_their_agreement(
    op: str, fn: Any, kw: dict[str, Any], batched: bool, dtype: torch.dtype
) -> None:
    x = (BATCH if batched else POINT).to(dtype)
    request = _request(op, x, batched, **kw)
    request = replace(
        request,
        cotangent=None if request.cotangent is None else request.cotangent.to(dtype),
        tangents=None if request.tangents is None else {"x": request.tangents["x"].to(dtype)},
        vector=None if request.vector is None else {"x": request.vector["x"].to(dtype)},
    )
    result = compute(fn, ["x"], {"x": x}, request)
    cert = result.certificate
    assert cert is not None and cert.checks
    assert cert.points == (3 if batched else 1)
    assert cert.tolerance == rtol_for(dtype)
    # rounding, far inside the tolerance
    assert 0 <= cert.disagreement < 100 * torch.finfo(dtype).eps
    off = compute(fn, ["x"], {"x": x}, replace(request, verify=False))
    assert off.certificate is None
    for key, value in off.outputs[op].items():
        assert torch.equal(value, result.outputs[op][key])  # certifying changes nothing


def _lu_hessian_case() -> tuple[Any, list[str], dict[str, torch.Tensor]]:
    fn = lang.compile_function(
        "def f(x, A):\n    return logdet(A @ A.T + diag(1 + (x * x) ** 2))\n"
    )
    g = torch.Generator().manual_seed(0)
    inputs = {
        "x": torch.randn(5, 4, generator=g, dtype=torch.float64),
        "A": torch.randn(5, 4, 4, generator=g, dtype=torch.float64) / 2,
    }
    return fn, ["x", "A"], inputs


def test_torch_nested_forward_ad_bug_is_caught() -> None:
    """vmap(hessian) through logdet is wrong in torch 2.13 (pytorch 192540 and kin); a
    result holding it fails the certificate, which names the function and the gap."""
    fn, names, inputs = _lu_hessian_case()
    wrong = torch.func.vmap(torch.func.hessian(lambda x, A: fn(x, A)))(inputs["x"], inputs["A"])
    per_point = torch.stack(
        [
            torch.func.jacrev(torch.func.jacrev(lambda x, A: fn(x, A)))(
                inputs["x"][i], inputs["A"][i]
            )
            for i in range(5)
        ]
    )
    assert float((wrong - per_point).abs().max()) > 1.0  # the bug is still there
    request = OpsRequest(ops=("hessian",), wrt=("x",), batched=True, verify=True)
    result = OpsResult(
        outputs={"hessian": {"x,x": wrong}},
        vmapped=True,
        unconnected=(),
        jacobian_mode=None,
        out_shape=(),
    )
    with pytest.raises(CertificateError, match=r"hessian\(f\).*at point \d.*differ by"):
        certify(fn, names, inputs, request, result, name="f")
    right = replace(result, outputs={"hessian": {"x,x": per_point}})
    cert = certify(fn, names, inputs, request, right, name="f")
    assert cert.disagreement < 1e-12 and cert.points == 5


def test_non_finite_derivatives_are_left_out() -> None:
    # sqrt has an infinite derivative at 0: that point is not compared, the others are
    x = torch.tensor([[0.0, 1.0], [4.0, 9.0]], dtype=torch.float64)
    result = compute(
        lambda x: torch.sqrt(x).sum(),
        ["x"],
        {"x": x},
        OpsRequest(("grad",), batched=True, verify=True),
    )
    assert result.certificate is not None and result.certificate.points == 1


def test_a_function_without_forward_ad_is_certified_in_reverse_only() -> None:
    class NoJvp(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x: torch.Tensor) -> torch.Tensor:
            return x * x

        @staticmethod
        def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            (x,) = ctx.saved_tensors
            return grad * 2 * x

    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    for op, fn in (("grad", lambda x: NoJvp.apply(x).sum()), ("jacobian", NoJvp.apply)):
        result = compute(fn, ["x"], {"x": x}, OpsRequest((op,), verify=True))
        cert = result.certificate
        assert cert is not None and not cert.checks  # nothing could be compared...
        assert cert.skipped and "forward-mode AD" in cert.skipped[0]  # ...and it says why


@pytest.mark.parametrize(
    ("op", "n", "expected"),
    [
        ("hessian", DEFAULT_MIN_COLUMNS, True),
        ("hessian", DEFAULT_MIN_COLUMNS - 1, False),
        ("jacobian", 4 * DEFAULT_MIN_COLUMNS, False),
        ("grad", 4 * DEFAULT_MIN_COLUMNS, False),
        ("value", 4 * DEFAULT_MIN_COLUMNS, False),
    ],
)
def test_default_policy_certifies_large_hessians(op: str, n: int, expected: bool) -> None:
    x = torch.linspace(-1, 1, n, dtype=torch.float64).repeat(2, 1)
    fn = right_scalar if op in ("grad", "hessian") else right_vec
    result = compute(fn, ["x"], {"x": x}, OpsRequest((op,), batched=True, verify=None))
    assert (result.certificate is not None) == expected


@pytest.mark.parametrize(("op", "kw"), [("jacobian", {"jacobian_mode": "forward"}), ("jvp", {})])
def test_float32_forward_mode_answers_stay_float32(op: str, kw: dict[str, Any]) -> None:
    """torch 2.13's forward AD makes the tangent of ``sum(x) / 5.0`` float64 for a float32
    ``x``; the ops return it in float32 (found by certifying random float32 programs)."""
    fn = lang.compile_function("sum(x) / 5.0")
    x = torch.tensor([1.0, 2.0, 3.0])
    if op == "jvp":
        kw = {"tangents": {"x": torch.ones(3)}}
    result = compute(fn, ["x"], {"x": x}, OpsRequest((op,), verify=True, **kw))
    (answer,) = result.outputs[op].values()
    assert answer.dtype == torch.float32
    assert torch.allclose(answer, torch.full_like(answer, 0.2 * (3.0 if op == "jvp" else 1.0)))


def test_a_certificate_failure_reaches_the_caller_as_internal_with_its_message() -> None:
    import grpc

    from gradserve_server.errors import from_chunk_error, to_status

    with pytest.raises(CertificateError) as info:
        compute(wrong_scalar, ["x"], {"x": POINT}, _request("grad", POINT, False))
    status = to_status(from_chunk_error(classify(info.value)))
    assert status.code is grpc.StatusCode.INTERNAL
    assert "grad(" in status.message and "the derivative certificate failed" in status.message


def test_the_server_merges_chunk_certificates() -> None:
    from gradserve.v1 import gradserve_pb2 as pb
    from gradserve_server.encoding import describe_certificate

    def cert(disagreement: float, points: int, skipped: tuple[str, ...] = ()) -> dict[str, Any]:
        return {"disagreement": disagreement, "tolerance": 1e-6, "checks": ("c",),
                "points": points, "seconds": 0.0, "skipped": skipped}  # fmt: skip

    meta = pb.ComputeMetadata()
    describe_certificate(meta, [cert(1e-17, 3), cert(4e-16, 2, ("s",))])
    assert meta.HasField("certificate")
    assert meta.certificate.disagreement == 4e-16 and meta.certificate.points == 5
    assert list(meta.certificate.skipped) == ["s"] and list(meta.certificate.checks) == ["c"]
    # a chunk that was not certified: the answer as a whole is not
    partial = pb.ComputeMetadata()
    describe_certificate(partial, [cert(1e-17, 3), None])
    assert not partial.HasField("certificate")
