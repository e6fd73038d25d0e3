"""Tests of gradserve_workers.check (finite differences, claimed derivatives, reports)."""

from __future__ import annotations

import doctest
import math
import pickle
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
from support.autograd import with_backward

from gradserve_workers import report
from gradserve_workers.check import (
    CheckError,
    CheckOptions,
    CheckReport,
    claimed_check,
    claims,
    fd_error,
    finite_difference_check,
    finite_differences,
    merge_reports,
)
from gradserve_workers.ops import NonFiniteInputError

Tensor = torch.Tensor


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(*shape: int, seed: int = 0, low: float = -1.0, high: float = 1.0) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------


@pytest.mark.parametrize("module", [finite_differences, claims, fd_error, report])
def test_doctests(module: object) -> None:
    res = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert res.failed == 0


SMOOTH: list[tuple[str, Callable[..., Tensor], float, float]] = [
    ("sin", lambda x: torch.sin(x), -3, 3),
    ("exp10", lambda x: torch.exp(10 * x), 0, 1),
    ("x4", lambda x: x**4, -10, 10),
    ("big_curvature_at_0", lambda x: 1000 * x**2, 0, 0),
    ("softmax", lambda x: torch.softmax(x, 0), -2, 2),
    ("logsumexp", lambda x: torch.logsumexp(x, 0), -2, 2),
    ("outer", lambda x: torch.outer(x, x).sum(0), -2, 2),
    ("tanh_matmul", lambda x: torch.tanh(torch.arange(12.0).reshape(3, 4).double() @ x), -1, 1),
    ("sin100", lambda x: torch.sin(100 * x), -1, 1),
    ("log", lambda x: torch.log(x).sum(), 0.5, 3),
    ("norm", lambda x: torch.linalg.vector_norm(x), 0.5, 1),
    ("const", lambda x: torch.ones(2, dtype=x.dtype), -1, 1),
]


@pytest.mark.parametrize("name,f,low,high", SMOOTH, ids=[s[0] for s in SMOOTH])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_correct_functions_pass(
    name: str, f: Callable[..., Tensor], low: float, high: float, dtype: torch.dtype
) -> None:
    x = rand(4, seed=3, low=low, high=high).to(dtype)
    r = finite_difference_check(f, ["x"], {"x": x})
    assert r.passed, r.message
    assert not r.non_differentiable
    assert r.point_passed == (True,) and r.num_points == 1
    assert r.kind == "finite_difference" and r.mode == "full" and r.order == 1
    assert r.message.startswith("PASSED")
    assert r.dtype == ("float32" if dtype == torch.float32 else "float64")


def test_float32_inputs_give_no_false_failures() -> None:
    # In float32 these would fail gradcheck-style comparisons; checks run in float64.
    x = rand(50, 3, seed=5, low=-3, high=3).float()
    r = finite_difference_check(
        lambda x: torch.exp(x).sum() * torch.sin(x).prod(), ["x"], {"x": x}, batched=True
    )
    assert r.passed and r.num_points == 50 and r.dtype == "float32"
    assert "float32" in r.message
    r2 = finite_difference_check(lambda x: (x**3).sum(), ["x"], {"x": x}, batched=True, order=2)
    assert r2.passed


def test_several_inputs_batched_and_wrt() -> None:
    def f(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return torch.tanh(w @ x + b)

    g = gen(1)
    inputs = {
        "x": torch.randn(6, 3, generator=g, dtype=torch.float64),
        "w": torch.randn(6, 2, 3, generator=g, dtype=torch.float64),
        "b": torch.randn(6, 2, generator=g, dtype=torch.float64),
    }
    r = finite_difference_check(f, ["x", "w", "b"], inputs, batched=True)
    assert r.passed and r.point_passed == (True,) * 6 and r.vmapped
    r = finite_difference_check(f, ["x", "w", "b"], inputs, batched=True, wrt=["w"])
    assert r.passed and r.worst is not None and r.worst.input == "w"


# ---------------------------------------------------------------------------
# wrong derivatives are caught, with the right worst element


def test_wrong_backward_names_the_worst_element() -> None:
    # d/dx sum(x^2) = 2x, but the backward is wrong at element 2 only
    mask = torch.tensor([1.0, 1.0, 1.5, 1.0], dtype=torch.float64)
    f = with_backward(lambda x: (x**2).sum(), lambda x, g: g * 2 * x * mask)
    x = torch.tensor([0.5, -1.0, 2.0, 1.5], dtype=torch.float64)
    r = finite_difference_check(f, ["x"], {"x": x})
    assert not r.passed and not r.non_differentiable
    w = r.worst
    assert w is not None
    assert (w.point, w.input, w.output_index, w.input_index) == (0, "x", (), (2,))
    assert w.analytic == pytest.approx(6.0) and w.numeric == pytest.approx(4.0)
    assert w.abs_error == pytest.approx(2.0) and w.rel_error == pytest.approx(0.5)
    assert r.message.startswith("FAILED")
    assert "analytic (autograd) 6 vs numeric 4" in r.message


def test_wrong_backward_batched_names_the_point() -> None:
    # wrong only where x > 1: the points with such an x fail
    f = with_backward(torch.sin, lambda x, g: g * torch.where(x > 1, -torch.cos(x), torch.cos(x)))
    x = torch.tensor(
        [[0.1, 0.2], [0.3, 0.4], [0.5, 1.4], [0.2, 0.1], [1.2, 0.0]], dtype=torch.float64
    )
    r = finite_difference_check(f, ["x"], {"x": x}, batched=True)
    assert not r.passed
    assert r.point_passed == (True, True, False, True, False)
    assert r.worst is not None
    # the worst violation: |2 cos(x)| / (atol + rtol |cos x|) is largest for the larger cos
    assert (r.worst.point, r.worst.input_index, r.worst.output_index) == (4, (0,), (0,))
    assert "2 of 5 points fail" in r.message


def test_vector_output_worst_output_index() -> None:
    # jacobian of x * x is diag(2x); the backward drops the factor 2 for output 1 only
    scale = torch.tensor([2.0, 1.0, 2.0], dtype=torch.float64)
    f = with_backward(lambda x: x * x, lambda x, g: g * scale * x)
    r = finite_difference_check(f, ["x"], {"x": torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)})
    assert not r.passed and r.worst is not None
    assert (r.worst.output_index, r.worst.input_index) == ((1,), (1,))
    assert "df[1] / dx[1]" in r.message


# ---------------------------------------------------------------------------
# kinks


@pytest.mark.parametrize(
    "name,f,right,left,auto",
    [
        ("relu", lambda x: torch.relu(x).sum(), 1.0, 0.0, 0.0),
        ("abs", lambda x: torch.abs(x).sum(), 1.0, -1.0, 0.0),
        ("max0", lambda x: torch.clamp(x, max=0.0).sum(), 0.0, 1.0, 1.0),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kinks_are_reported_not_passed(
    name: str, f: Callable[..., Tensor], right: float, left: float, auto: float, dtype: torch.dtype
) -> None:
    x = torch.tensor([0.7, 0.0, -0.4], dtype=dtype)
    r = finite_difference_check(f, ["x"], {"x": x})
    assert not r.passed and r.non_differentiable, r.message
    k = r.kink
    assert k is not None
    assert (k.point, k.input, k.input_index, k.at) == (0, "x", (1,), 0.0)
    assert k.right == pytest.approx(right, abs=1e-6) and k.left == pytest.approx(left, abs=1e-6)
    assert k.autograd == pytest.approx(auto)
    assert r.message.startswith("NOT DIFFERENTIABLE")
    assert "not differentiable at x[1] = 0" in r.message
    assert (
        f"one-sided derivatives {right:g} (right) and {left:g} (left)"
        in r.message.replace("-0 ", "0 ")
        or "one-sided derivatives" in r.message
    )


def test_kink_within_eps_and_batched_kink_point() -> None:
    x = torch.tensor([[1.0], [2e-7], [-1.0], [0.0]], dtype=torch.float64)
    r = finite_difference_check(lambda x: torch.abs(x).sum(), ["x"], {"x": x}, batched=True)
    assert r.non_differentiable and not r.passed
    assert r.point_passed == (True, False, True, False)
    assert r.kink is not None and r.kink.point in (1, 3)


def test_kink_in_vector_output_and_second_order() -> None:
    r = finite_difference_check(
        lambda x: torch.relu(x) * 3, ["x"], {"x": torch.tensor([1.0, 0.0], dtype=torch.float64)}
    )
    assert r.non_differentiable and r.kink is not None
    assert (r.kink.output_index, r.kink.input_index) == ((1,), (1,))
    r2 = finite_difference_check(
        lambda x: (torch.relu(x) ** 2).sum(), ["x"], {"x": torch.tensor([1.0, 0.0])}, order=2
    )
    assert r2.non_differentiable and not r2.passed
    assert r2.kink is not None and r2.kink.input_index == (1,)
    assert "its gradient is not differentiable" in r2.message


def test_smooth_points_near_but_off_a_kink_pass() -> None:
    x = torch.tensor([1e-3, -1e-3, 0.5], dtype=torch.float64)
    assert finite_difference_check(lambda x: torch.abs(x).sum(), ["x"], {"x": x}).passed


# ---------------------------------------------------------------------------
# second order


def test_order_two_hessian_and_symmetry() -> None:
    def rosen(x: Tensor) -> Tensor:
        return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()

    r = finite_difference_check(rosen, ["x"], {"x": rand(4, 5, seed=2)}, batched=True, order=2)
    assert r.passed and r.symmetric is True and r.order == 2, r.message
    r = finite_difference_check(
        lambda x, y: (x**2 * y).sum() + torch.sin(x @ y),
        ["x", "y"],
        {"x": rand(3, seed=1), "y": rand(3, seed=2)},
        order=2,
    )
    assert r.passed and r.symmetric


def test_asymmetric_hessian_fails_symmetry() -> None:
    # f = x0 * x1 with the gradient field (x1, 2 x0): its "Hessian" [[0, 1], [2, 0]]
    def bwd(x: Tensor, g: Tensor) -> Tensor:
        return g * torch.stack([x[1], 2 * x[0]])

    def jvp(x: Tensor, t: Tensor) -> Tensor:
        return x[1] * t[0] + x[0] * t[1]

    f = with_backward(lambda x: x[0] * x[1], bwd, jvp)
    r = finite_difference_check(
        f, ["x"], {"x": torch.tensor([0.5, 2.0], dtype=torch.float64)}, order=2
    )
    assert r.symmetric is False and not r.passed
    assert r.max_asymmetry == pytest.approx(1.0)
    assert "not symmetric" in r.message


def test_wrong_second_derivative_names_the_element() -> None:
    # the backward is right, but detached: autograd's Hessian is 0 where FD of grad is 2
    f = with_backward(
        lambda x: (x**2).sum(), lambda x, g: g * 2 * x.detach(), lambda x, t: (2 * x * t).sum()
    )
    r = finite_difference_check(
        f, ["x"], {"x": torch.tensor([0.5, 2.0], dtype=torch.float64)}, order=2
    )
    assert not r.passed and r.worst is not None
    assert r.worst.input == "x,x" and r.worst.output_index == r.worst.input_index
    assert r.worst.analytic == pytest.approx(0.0) and r.worst.numeric == pytest.approx(2.0)
    assert "d²f / dx[" in r.message


def test_order_two_needs_a_scalar() -> None:
    with pytest.raises(
        CheckError, match=r"^check\(f, order=2\): f returns shape \(2,\), not a scalar"
    ):
        finite_difference_check(lambda x: x * 2, ["x"], {"x": torch.ones(2)}, order=2)


# ---------------------------------------------------------------------------
# fast mode


def test_fast_mode_passes_and_is_chosen_by_size() -> None:
    x = rand(40, seed=4)
    r = finite_difference_check(lambda x: torch.tanh(x).cumsum(0)[:7], ["x"], {"x": x}, fast=True)
    assert r.passed and r.mode == "fast"
    assert r.worst is not None and r.worst.projection is not None
    r = finite_difference_check(lambda x: torch.sin(x).sum(), ["x"], {"x": x}, fast_threshold=10)
    assert r.mode == "fast" and r.passed
    r = finite_difference_check(lambda x: (x**3).sum(), ["x"], {"x": x}, fast=True, order=2)
    assert r.passed and r.mode == "fast" and r.symmetric


def test_fast_mode_failure_falls_back_to_name_the_element() -> None:
    mask = torch.ones(30, dtype=torch.float64)
    mask[17] = 3.0
    f = with_backward(lambda x: (x**2).sum(), lambda x, g: g * 2 * x * mask)
    x = rand(3, 30, seed=6, low=0.5, high=1.0)
    r = finite_difference_check(f, ["x"], {"x": x}, batched=True, fast=True)
    assert not r.passed and r.mode == "fast"
    assert r.worst is not None and r.worst.projection is None
    assert r.worst.input_index == (17,)
    assert r.point_passed == (False, False, False)


def test_fast_mode_failure_too_big_reports_the_projection() -> None:
    f = with_backward(lambda x: (x**2).sum(), lambda x, g: g * 3 * x)
    r = finite_difference_check(
        f, ["x"], {"x": rand(10, seed=7, low=0.5)}, fast=True,
        options=CheckOptions(full_fallback_limit=4),
    )  # fmt: skip
    assert not r.passed and r.worst is not None and r.worst.projection is not None
    assert "random projection" in r.message and "fast=False" in r.message


# ---------------------------------------------------------------------------
# claimed derivatives


def test_claimed_grad_correct_and_wrong() -> None:
    x = rand(5, 3, seed=8)
    f = lambda x: 2 * torch.dot(x, x)  # noqa: E731
    ok = claimed_check(f, {"x": lambda x: 4 * x}, ["x"], {"x": x}, kind="grad", batched=True)
    assert ok.passed and ok.kind == "claimed_grad" and ok.num_points == 5
    bad = claimed_check(f, {"x": lambda x: 2 * x}, ["x"], {"x": x}, kind="grad", batched=True)
    assert not bad.passed and bad.worst is not None
    i = int(torch.argmax(x.abs().reshape(-1)))
    assert (bad.worst.point, bad.worst.input_index) == (i // 3, (i % 3,))
    assert bad.worst.numeric == pytest.approx(2 * float(x.reshape(-1)[i]))
    assert bad.worst.analytic == pytest.approx(4 * float(x.reshape(-1)[i]))
    assert "claimed" in bad.message and "vs autograd" in bad.message


WRONG_CLAIMS: list[
    tuple[str, Callable[..., Tensor], dict[str, Callable[..., Tensor]], str, tuple[int, ...]]
] = [
    # (name, f(x, y), claims, worst input, worst index); x = [0.5, -1, 2], y = [1.5, 0.25]
    (
        "wrong_only_y",
        lambda x, y: (x**2).sum() * y.sum(),
        {"x": lambda x, y: 2 * x * y.sum(), "y": lambda x, y: torch.stack([(x**2).sum(), x[0]])},
        "y",
        (1,),
    ),
    (
        "wrong_x_element",
        lambda x, y: torch.sin(x).sum() + y.sum(),
        {
            "x": lambda x, y: torch.cos(x) * torch.tensor([1.0, 1.0, 2.0]).double(),
            "y": lambda x, y: torch.ones(2).double(),
        },
        "x",
        (2,),
    ),
    (
        "constant_claim_broadcast",
        lambda x, y: (3 * x).sum() + (y**2).sum(),
        {"x": lambda x, y: torch.tensor(3.0), "y": lambda x, y: y},
        "y",
        (0,),
    ),
]


@pytest.mark.parametrize("name,f,claims,inp,idx", WRONG_CLAIMS, ids=[w[0] for w in WRONG_CLAIMS])
def test_wrong_claims_fail_with_the_right_worst_element(
    name: str,
    f: Callable[..., Tensor],
    claims: dict[str, Callable[..., Tensor]],
    inp: str,
    idx: tuple[int, ...],
) -> None:
    inputs = {
        "x": torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64),
        "y": torch.tensor([1.5, 0.25], dtype=torch.float64),
    }
    r = claimed_check(f, claims, ["x", "y"], inputs, kind="grad")
    assert not r.passed and r.worst is not None, r.message
    assert (r.worst.point, r.worst.input, r.worst.input_index) == (0, inp, idx)


def test_claimed_jacobian() -> None:
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    ok = claimed_check(
        lambda x: x * x, {"x": lambda x: torch.diag(2 * x)}, ["x"], {"x": x}, kind="jacobian"
    )
    assert ok.passed and ok.kind == "claimed_jacobian"

    def bad_claim(x: Tensor) -> Tensor:  # one wrong element: d out[2] / d x[0] = 1
        wrong = torch.zeros(3, 3, dtype=x.dtype)
        wrong[2, 0] = 1.0
        return torch.diag(2 * x) + wrong

    bad = claimed_check(lambda x: x * x, {"x": bad_claim}, ["x"], {"x": x}, kind="jacobian")
    assert not bad.passed and bad.worst is not None
    assert (bad.worst.output_index, bad.worst.input_index) == ((2,), (0,))
    assert bad.worst.numeric == 1.0 and bad.worst.analytic == 0.0


def test_claimed_hessian_blocks_and_symmetry() -> None:
    f = lambda x, y: (x**2).sum() * y.sum()  # noqa: E731
    inputs = {"x": rand(2, seed=1), "y": rand(3, seed=2)}
    claims = {
        "x": lambda x, y: 2 * y.sum() * torch.eye(2, dtype=x.dtype),
        "x,y": lambda x, y: (2 * x)[:, None].expand(2, 3),
        "y,x": lambda x, y: (2 * x)[None, :].expand(3, 2),
        "y": lambda x, y: torch.zeros(3, 3, dtype=x.dtype),
    }
    r = claimed_check(f, claims, ["x", "y"], inputs, kind="hessian")
    assert r.passed and r.symmetric is True and r.order == 2, r.message
    wrong = dict(claims, **{"y,x": lambda x, y: (3 * x)[None, :].expand(3, 2)})
    r = claimed_check(f, wrong, ["x", "y"], inputs, kind="hessian")
    assert not r.passed and r.symmetric is False
    assert r.worst is not None and r.worst.input == "y,x"


def test_claim_with_the_wrong_shape_is_refused() -> None:
    with pytest.raises(
        CheckError,
        match=r"^check\(f, grad=\.\.\.\): the claimed grad for 'x' has shape \(2,\), "
        r"expected \(3,\)",
    ):
        claimed_check(
            lambda x: x.sum(), {"x": lambda x: x[:2]}, ["x"], {"x": torch.ones(3)}, kind="grad"
        )
    with pytest.raises(
        CheckError, match=r"^check\(f, grad=\.\.\.\): f returns shape \(3,\), not a scalar"
    ):
        claimed_check(lambda x: x, {"x": lambda x: x}, ["x"], {"x": torch.ones(3)}, kind="grad")
    with pytest.raises(CheckError, match="unknown input"):
        claimed_check(
            lambda x: x.sum(), {"z": lambda x: x}, ["x"], {"x": torch.ones(3)}, kind="grad"
        )


def test_claimed_check_with_control_flow_falls_back() -> None:
    def f(a: Tensor) -> Tensor:
        return (a * 2).sum() if a.sum() > 0 else (a * 3).sum()

    def claim(a: Tensor) -> Tensor:
        return torch.full_like(a, 2.0) if a.sum() > 0 else torch.full_like(a, 3.0)

    a = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    r = claimed_check(f, {"a": claim}, ["a"], {"a": a}, kind="grad", batched=True)
    assert r.passed and not r.vmapped
    fd = finite_difference_check(f, ["a"], {"a": a}, batched=True)
    assert fd.passed and not fd.vmapped


# ---------------------------------------------------------------------------
# non-finite values, errors


def test_non_finite_inputs_are_refused() -> None:
    with pytest.raises(
        NonFiniteInputError, match=r"^check\(f\): input 'x' contains NaN at point 1"
    ):
        finite_difference_check(
            lambda x: x.sum(), ["x"], {"x": torch.tensor([[1.0], [math.nan]])}, batched=True
        )


def test_non_finite_derivatives_fail_rather_than_pass() -> None:
    r = finite_difference_check(
        lambda x: torch.sqrt(x).sum(), ["x"], {"x": torch.tensor([0.0, 1.0])}
    )
    assert not r.passed
    assert math.isinf(r.max_abs_error) or math.isnan(r.max_abs_error) or r.non_differentiable


def test_bad_arguments() -> None:
    with pytest.raises(CheckError, match="order must be 1 or 2"):
        finite_difference_check(lambda x: x.sum(), ["x"], {"x": torch.ones(2)}, order=3)
    with pytest.raises(CheckError, match="eps must be a positive"):
        finite_difference_check(lambda x: x.sum(), ["x"], {"x": torch.ones(2)}, eps=0.0)
    with pytest.raises(CheckError, match=r"wrt names unknown input\(s\) q"):
        finite_difference_check(lambda x: x.sum(), ["x"], {"x": torch.ones(2)}, wrt=["q"])
    assert issubclass(CheckError, ValueError)
    # no elements to differentiate with respect to: said, rather than a reshape error
    empty = torch.zeros(0, dtype=torch.float64)
    with pytest.raises(CheckError, match=r"nothing to check: x has shape \(0,\)"):
        finite_difference_check(lambda x: x * 2, ["x"], {"x": empty})
    with pytest.raises(CheckError, match=r"nothing to check: x has shape \(0,\)"):
        claimed_check(lambda x: x * 2, {"x": lambda x: 2 * torch.eye(0)}, ["x"], {"x": empty},
                      kind="jacobian")  # fmt: skip
    with pytest.raises(CheckError, match=r"nothing to check: f returns shape \(0,\)"):
        finite_difference_check(lambda x: x[:0], ["x"], {"x": torch.ones(3)})
    with pytest.raises(CheckError, match=r"nothing to check: y has shape \(2, 0\)"):
        finite_difference_check(lambda x, y: x.sum() + y.sum(), ["x", "y"],
                                {"x": torch.ones(2), "y": torch.ones(2, 0)}, wrt=["y"])  # fmt: skip


# ---------------------------------------------------------------------------
# reports


def test_merge_reports_matches_one_big_check() -> None:
    f = with_backward(torch.sin, lambda x, g: g * torch.where(x > 1, -torch.cos(x), torch.cos(x)))
    x = rand(10, 2, seed=9, low=-0.5, high=1.5)
    whole = finite_difference_check(f, ["x"], {"x": x}, batched=True)
    parts = [
        finite_difference_check(f, ["x"], {"x": x[a:b]}, batched=True)
        for a, b in ((0, 4), (4, 7), (7, 10))
    ]
    merged = merge_reports(parts, [0, 4, 7])
    assert merged.passed == whole.passed is False
    assert merged.point_passed == whole.point_passed and merged.num_points == 10
    assert merged.worst == whole.worst
    assert merged.max_abs_error == whole.max_abs_error
    assert merged.message == whole.message


def test_merge_reports_kinks_and_errors() -> None:
    x = torch.tensor([[1.0], [0.0], [2.0]], dtype=torch.float64)
    parts = [
        finite_difference_check(lambda x: x.abs().sum(), ["x"], {"x": x[a:b]}, batched=True)
        for a, b in ((0, 1), (1, 3))
    ]
    merged = merge_reports(parts, [0, 1])
    assert merged.non_differentiable and merged.kink is not None and merged.kink.point == 1
    assert merged.point_passed == (True, False, True)
    with pytest.raises(ValueError, match="no reports"):
        merge_reports([], [])
    with pytest.raises(ValueError, match="point offsets"):
        merge_reports(parts, [0])
    claimed = claimed_check(
        lambda x: x.sum(), {"x": lambda x: torch.ones_like(x)}, ["x"], {"x": x[0]}, kind="grad"
    )
    with pytest.raises(ValueError, match="cannot merge"):
        merge_reports([parts[0], claimed], [0, 1])


def test_report_is_plain_and_picklable() -> None:
    r = finite_difference_check(lambda x: x.abs().sum(), ["x"], {"x": torch.zeros(2)})
    back = pickle.loads(pickle.dumps(r))
    assert back == r and isinstance(back, CheckReport)
    with pytest.raises(AttributeError):
        r.passed = True  # type: ignore[misc]
    assert replace(r, message="x").message == "x"


def test_report_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, importlib.util, pathlib;"
        "import gradserve_workers.report as r;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    env_path = str(__import__("pathlib").Path(report.__file__).resolve().parents[1])
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": env_path}
    )
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, r"missing input\(s\) x"),
        ({"x": torch.ones(2), "y": torch.ones(2)}, r"unknown input\(s\) y; f takes x"),
        ({"x": [1.0, 2.0]}, "input 'x' is a list, not a tensor"),
    ],
)
def test_inputs_that_do_not_match_the_function_are_refused_by_ops_and_checks_alike(
    inputs: dict[str, object], message: str
) -> None:
    """One rule (ops.plan.check_names) for both; the check raises its own CheckError."""
    from gradserve_workers.ops import OpsError, OpsRequest, compute

    with pytest.raises(OpsError, match=message) as by_ops:
        compute(torch.sin, ["x"], inputs, OpsRequest(("grad",)))  # type: ignore[arg-type]
    assert not isinstance(by_ops.value, CheckError)
    with pytest.raises(CheckError, match=message):
        finite_difference_check(torch.sin, ["x"], inputs)  # type: ignore[arg-type]
