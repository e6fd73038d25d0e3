"""The blocked comparison and the kink screen agree bit for bit with the element-wise
rules (written out here as the oracle), whatever the blocks, layouts and values."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from gradserve_workers import lang
from gradserve_workers.check import (
    CheckOptions,
    analytic,
    claimed_check,
    comparison,
    evaluation,
    finite_difference_check,
    kinks,
    points,
)
from gradserve_workers.check.comparison import Comparison, Operands, all_pairs, compare
from gradserve_workers.ops import OpsRequest, compute

F64 = torch.float64
TINY = 1e-300
BLOCK = CheckOptions().compare_block


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def element_wise(
    analytic: torch.Tensor, reference: torch.Tensor, other: torch.Tensor, atol: float, rtol: float
) -> Comparison:
    """The comparison's rules element by element over whole (N, r, c) tensors in the
    report's order: what the blocked comparison must give."""
    err = (other - reference).abs()
    err = torch.where(torch.isnan(err), torch.full_like(err, math.inf), err)
    allowed = atol + rtol * reference.abs()
    ok = err <= allowed
    allowed = torch.where(torch.isfinite(allowed), allowed, torch.full_like(allowed, math.inf))
    ratio = torch.where(
        allowed > 0, err / allowed.clamp_min(TINY), torch.where(err > 0, math.inf, 0.0)
    )
    ratio = torch.where(torch.isnan(ratio), torch.full_like(ratio, math.inf), ratio)
    n_pts = err.shape[0]
    point_passed = [bool(b) for b in ok.reshape(n_pts, -1).all(dim=1)]
    rel = err / reference.abs().clamp_min(TINY)
    flat = int(torch.argmax(ratio.reshape(-1)))
    p, rest = divmod(flat, err.shape[1] * err.shape[2])
    r, c = divmod(rest, err.shape[2])
    ref_v = float(reference[p, r, c])
    n_v = float(other[p, r, c]) if analytic is reference else ref_v
    return Comparison(
        passed=bool(ok.all()),
        point_passed=point_passed,
        max_abs=float(err.max()),
        max_rel=float(rel.max()),
        worst_flat=(p, r, c),
        analytic=float(analytic[p, r, c]),
        numeric=n_v,
        abs_error=float(err[p, r, c]),
        rel_error=float(err[p, r, c]) / max(abs(ref_v), TINY),
    )


def same(a: Comparison, b: Comparison) -> None:
    """Equal, NaN included (a relative error is NaN beside a NaN)."""

    def key(c: Comparison) -> dict[str, object]:
        d = dataclasses.asdict(c)
        return {k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}

    assert key(a) == key(b)


def test_tensors_without_readable_memory_are_compared() -> None:
    """autograd's zero tensors have no storage: a claim returning one is compared."""
    x = torch.randn(4, generator=gen(3), dtype=F64)
    claim = lambda x: torch._efficientzerotensor((), dtype=F64)  # noqa: E731
    r = claimed_check(lambda x: torch.floor(x).sum(), {"x": claim}, ["x"], {"x": x}, kind="grad")
    assert r.passed  # floor's derivative is 0 where defined: the claim is right


def generic_fd(
    at: torch.Tensor, plus: torch.Tensor, minus: torch.Tensor, eps: float, atol: float, rtol: float
) -> Comparison:
    a = at.transpose(1, 2)
    numeric = ((plus - minus) / (2 * eps)).transpose(1, 2)
    return element_wise(a, numeric, a, atol, rtol)


def blocked(ops: Operands, atol: float, rtol: float, block: int = BLOCK) -> Comparison:
    return compare(ops, atol, rtol, block)[0]


@pytest.mark.parametrize("block", [7, 64, 1 << 15])
@pytest.mark.parametrize("shape", [(1, 30, 20), (4, 9, 1), (3, 1, 12), (5, 8, 6)])
def test_fused_fd_compare_matches_generic(block: int, shape: tuple[int, int, int]) -> None:
    eps = 1e-6
    at = torch.randn(shape, generator=gen(1), dtype=F64)
    noise = 1e-6 * torch.randn(shape, generator=gen(2), dtype=F64)
    noise[0, 0, 0] = 0.5  # one bad element at point 0
    plus = at * eps + noise * eps
    minus = -at * eps - noise * eps
    f0 = torch.zeros(shape[0], shape[2], dtype=F64)
    ops = Operands(at, None, at, plus, minus, 2 * f0[:, None, :], eps, True)
    same(blocked(ops, 1e-5, 1e-3, block), generic_fd(at, plus, minus, eps, 1e-5, 1e-3))


@pytest.mark.parametrize("block", [5, 1 << 15])
def test_fused_ties_pick_the_first_in_report_order(block: int) -> None:
    eps = 0.5
    at = torch.zeros(2, 4, 3, dtype=F64)
    at[1, 3, 0] = 1.0  # equal errors at (point 1, out 0, in 3) and (1, out 2, in 1)
    at[1, 1, 2] = 1.0
    zeros = torch.zeros_like(at)
    ops = Operands(at, None, at, zeros, zeros, None, eps, True)
    got = blocked(ops, 1e-5, 1e-3, block)
    assert got.worst_flat == (1, 0, 3)
    same(got, generic_fd(at, zeros, zeros, eps, 1e-5, 1e-3))
    # all ratios zero: the first element
    ops = Operands(zeros, None, zeros, zeros, zeros, None, eps, True)
    assert blocked(ops, 1e-5, 1e-3, block).worst_flat == (0, 0, 0)


def test_ratio_of_exactly_one_is_decided_by_the_rule() -> None:
    ref = torch.tensor([[[1.0, 2.0]]], dtype=F64)
    allowed = 1e-5 + 1e-3 * ref.abs()
    other = ref + allowed  # err == allowed (to rounding): passes iff err <= allowed
    got = blocked(Operands(ref, ref, other), 1e-5, 1e-3)
    same(got, element_wise(ref, ref, other, 1e-5, 1e-3))


@pytest.mark.parametrize("block", [2, 1 << 15])
def test_non_finite_and_zero_atol_follow_the_rules(block: int) -> None:
    ref = torch.tensor([[[1.0, 2.0, 0.0], [math.inf, -1.0, math.nan]]], dtype=F64)
    for other in (
        torch.tensor([[[1.0, math.inf, 0.0], [math.inf, -1.0, 1.0]]], dtype=F64),
        torch.tensor([[[1.0, 2.0, 1e-320], [1.0, -1.0, 1.0]]], dtype=F64),
        ref.clone(),
    ):
        for atol, rtol in ((1e-5, 1e-3), (1e-5, 0.0), (0.0, 1e-3), (0.0, 0.0)):
            got = blocked(Operands(ref, ref, other), atol, rtol, block)
            same(got, element_wise(ref, ref, other, atol, rtol))
            got = blocked(Operands(other, ref, other), atol, rtol, block)
            same(got, element_wise(other, ref, other, atol, rtol))


@pytest.mark.parametrize("block", [16, 1 << 15])
def test_screened_kink_search_matches_the_full_one(block: int) -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(torch.abs(x) + torch.relu(x - 0.5), 0)

    x = torch.linspace(-1, 1, 9, dtype=F64)  # abs kink at 0 (x[4])
    x[7] = 0.5  # relu kink
    s = points.setup(f, ["x"], {"x": x}, None, False, "check(f)")
    at, f0, _ = analytic.analytic_full(f, s, 1, True)
    ev = evaluation.Evaluator(evaluation.flat_fn(f, s.layout, 1), s.consts, True)
    eps = 1e-6
    plus, minus = ev.along(s.x, None, [eps, -eps])
    ops = Operands(at, None, at, plus, minus, 2 * f0[:, None, :], eps, True)
    _, screened = compare(ops, 1e-5, 1e-3, block)
    every = all_pairs(plus.shape[0], plus.shape[1], plus.device)
    assert 0 < screened.shape[0] < every.shape[0]
    new = kinks.find_kink(ev, s.x, f0, plus, minus, screened, at, eps, 1e-5, 1e-3)
    old = kinks.find_kink(ev, s.x, f0, plus, minus, every, at, eps, 1e-5, 1e-3)
    assert new is not None and old is not None
    assert new[1:] == old[1:]
    assert torch.equal(new[0], old[0])
    r = finite_difference_check(f, ["x"], {"x": x})
    assert r.non_differentiable and r.kink is not None and r.kink.input_index in ((4,), (7,))


def test_compiled_functions_vector_check_and_wrong_jacobian() -> None:
    fn = lang.compile_function("cumsum(sin(x))")
    x = torch.linspace(-2, 2, 300, dtype=F64)
    r = finite_difference_check(fn, ["x"], {"x": x})
    assert r.passed and r.worst is not None
    wrong = lang.compile_function("diag(cos(x))")
    r = claimed_check(fn, {"x": wrong}, ["x"], {"x": x}, kind="jacobian")
    assert not r.passed and r.worst is not None
    # the worst element is below the diagonal, where the claim says 0
    assert r.worst.output_index[0] > r.worst.input_index[0] and r.worst.numeric == 0.0


# ---------------------------------------------------------------------------
# the unbatched grad path


def test_unbatched_grad_is_the_closed_form() -> None:
    fn = lang.compile_function("sum(x ** 3) / 3 + sum(y) * 0")
    x = torch.linspace(-1, 1, 10, dtype=F64)
    y = torch.ones(3, dtype=F64)
    r = compute(fn, ["x", "y"], {"x": x, "y": y}, OpsRequest(ops=("value", "grad")))
    # closed form: the gradient is (x², 0)
    torch.testing.assert_close(r.outputs["grad"]["x"], x * x, rtol=1e-15, atol=1e-15)
    assert torch.equal(r.outputs["grad"]["y"], torch.zeros(3, dtype=F64))
    assert float(r.outputs["value"][""]) == pytest.approx(float((x**3).sum()) / 3, abs=1e-15)
    # second opinion: the fast path gives the general transform's numbers, bit for bit
    gx, _ = torch.func.grad(fn, argnums=(0, 1))(x, y)
    assert torch.equal(r.outputs["grad"]["x"], gx)
    assert r.unconnected == ("y",) and r.vmapped and r.out_shape == ()


def test_a_witnessed_input_stays_connected_without_probing() -> None:
    fn = lang.compile_function("sum(relu(x * 1.0)) * 1.0  # witness test")
    pos = torch.ones(3, dtype=F64)
    neg = -torch.ones(3, dtype=F64) * 100  # zero gradient, and at the probe point too
    first = compute(fn, ["x"], {"x": neg}, OpsRequest(ops=("grad",)))
    assert first.unconnected == ("x",)
    # a batch with a point where the derivative is nonzero witnesses the connection
    both = torch.stack([neg, pos])
    r = compute(fn, ["x"], {"x": both}, OpsRequest(ops=("grad",), batched=True))
    assert r.unconnected == ()
    again = compute(fn, ["x"], {"x": neg}, OpsRequest(ops=("grad",)))
    assert again.unconnected == ()
    assert torch.equal(again.outputs["grad"]["x"], torch.zeros(3, dtype=F64))


# ---------------------------------------------------------------------------
# the blocked comparison against the element-wise rules, bit for bit


def _screen_oracle(ops: Operands) -> torch.Tensor:
    """The (point, row) pairs the kink screen passes, element by element."""
    assert ops.plus is not None and ops.minus is not None and ops.twice_f0 is not None
    ref = (ops.plus - ops.minus) / (2 * ops.eps)
    allowed = 1e-5 + 1e-3 * ref.abs()
    s = (ops.plus + ops.minus - ops.twice_f0) / allowed
    return torch.nonzero(torch.logical_not(s.abs() < ops.eps / 4).any(-1))


def _fd_operands(shape: tuple[int, int, int], seed: int, style: str) -> Operands:
    n_pts, rows, cols = shape
    g = gen(seed)
    eps = 1e-6
    if style == "ties":  # small integers: many equal errors and ratios
        at = torch.randint(-2, 3, shape, generator=g).to(F64)
        num = torch.randint(-2, 3, shape, generator=g).to(F64)
    else:
        at = torch.randn(shape, generator=g, dtype=F64)
        num = at + 1e-4 * torch.randn(shape, generator=g, dtype=F64)
        if style == "zeros":  # exact zeros on both sides, as above a triangle
            tri = torch.ones(rows, cols, dtype=torch.bool).tril()
            at, num = at * tri, num * tri
        elif style == "wide":  # magnitudes from 1e-12 to 1e12: relative errors overflow
            scale = 10.0 ** torch.randint(-12, 13, shape, generator=g).to(F64)
            at, num = at * scale, num * scale
    f0 = torch.randn(n_pts, 1, cols, generator=g, dtype=F64)
    curve = (1e-9 if style == "kinks" else 1e-13) * torch.randn(shape, generator=g, dtype=F64)
    plus = f0 + eps * num + curve
    minus = f0 - eps * num + curve
    return Operands(at, None, at, plus, minus, 2 * f0, eps, True)


@pytest.mark.parametrize("style", ["random", "ties", "zeros", "wide", "kinks"])
@pytest.mark.parametrize(
    "shape", [(1, 1, 1), (1, 7, 300), (3, 5, 129), (2, 40, 128), (6, 3, 1), (1, 257, 2)]
)
@pytest.mark.parametrize("block", [97, 1 << 15])
def test_blocks_match_the_rules_on_finite_differences(
    shape: tuple[int, int, int], style: str, block: int
) -> None:
    ops = _fd_operands(shape, seed=sum(shape), style=style)
    got, screened = compare(ops, 1e-5, 1e-3, block)
    same(got, generic_fd(ops.analytic, ops.plus, ops.minus, ops.eps, 1e-5, 1e-3))  # type: ignore[arg-type]
    assert torch.equal(screened, _screen_oracle(ops))
    if style == "kinks":
        assert screened.shape[0], "second differences of 1e-9 pass the kink screen"


@pytest.mark.parametrize("which", ["analytic", "other"])
@pytest.mark.parametrize("style", ["random", "ties", "zeros", "wide"])
def test_blocks_match_on_claimed_derivatives(which: str, style: str) -> None:
    """Claimed checks: the reference is given (autograd's value or the claim), rows
    are in the report's order."""
    fd = _fd_operands((3, 9, 150), seed=5, style=style)
    analytic = fd.analytic
    claim = (fd.plus - fd.minus) / (2 * fd.eps)  # type: ignore[operator]
    ref = analytic if which == "analytic" else claim
    other = claim if which == "analytic" else analytic
    ops = Operands(analytic, ref, other)
    generic = element_wise(analytic, ref, other, 1e-5, 1e-3)
    for block in (97, 1 << 15):
        same(blocked(ops, 1e-5, 1e-3, block), generic)


def test_strided_points_and_non_finite_values() -> None:
    whole = _fd_operands((4, 30, 200), seed=9, style="random")
    assert whole.plus is not None and whole.minus is not None
    # a shard's rows of every point: rows contiguous, points 30 rows apart
    at, plus, minus = (t[:, 10:25] for t in (whole.analytic, whole.plus, whole.minus))
    cut = Operands(at, None, at, plus, minus, whole.twice_f0, whole.eps, True)
    assert not at.is_contiguous()
    for block in (97, 1 << 15):
        same(blocked(cut, 1e-5, 1e-3, block), generic_fd(at, plus, minus, whole.eps, 1e-5, 1e-3))
    for bad in (math.nan, math.inf):
        bad_plus = whole.plus.clone()
        bad_plus[2, 17, 150] = bad
        ops = dataclasses.replace(whole, plus=bad_plus)
        got = generic_fd(whole.analytic, bad_plus, whole.minus, whole.eps, 1e-5, 1e-3)
        assert not got.passed and got.worst_flat == (2, 150, 17)
        for block in (97, 1 << 15):
            cmp, screened = compare(ops, 1e-5, 1e-3, block)
            same(cmp, got)
            assert [2, 17] in screened.tolist()  # not finite: the exact kink test decides


@pytest.mark.parametrize("which", ["other", "reference", "plus"])
def test_transposed_operands_are_read_in_place(which: str) -> None:
    """Every operand may come transposed (a view read across its columns)."""
    fd = _fd_operands((2, 37, 300), seed=11, style="ties")
    assert fd.plus is not None and fd.minus is not None

    def across(t: torch.Tensor) -> torch.Tensor:  # same values, columns 37 apart
        view = t.transpose(1, 2).contiguous().transpose(1, 2)
        assert view.stride(2) == t.shape[1] and torch.equal(view, t)
        return view

    claim = (fd.plus - fd.minus) / (2 * fd.eps)
    if which == "plus":
        ops = dataclasses.replace(fd, plus=across(fd.plus), minus=across(fd.minus))
        generic = generic_fd(fd.analytic, fd.plus, fd.minus, fd.eps, 1e-5, 1e-3)
    else:  # autograd's value (the reference) against the claim
        ref = across(fd.analytic) if which == "reference" else fd.analytic
        other = across(claim) if which == "other" else claim
        ops = Operands(ref, ref, other)
        generic = element_wise(fd.analytic, fd.analytic, claim, 1e-5, 1e-3)
    for block in (97, 1 << 15):
        same(blocked(ops, 1e-5, 1e-3, block), generic)


@pytest.mark.parametrize("atol", [0.0, 1e-310])
def test_an_error_just_above_a_tiny_allowance_fails(atol: float) -> None:
    """Below TINY the ratio divides by a clamped allowance (1e-306 / 1e-300 looks
    small): the verdict is still err <= allowed."""
    ref = torch.tensor([[[1e-305, 1.0], [1e-305, 0.0]]], dtype=F64)
    other = ref.clone()
    other[0, 0, 0] += 1e-306  # err 1e-306 > allowed 1e-308
    got = blocked(Operands(ref, ref, other), atol, 1e-3)
    assert got.point_passed == [False]
    same(got, element_wise(ref, ref, other, atol, 1e-3))


def test_single_precision_allowances_below_its_smallest_normal() -> None:
    """float32's allowances are subnormal for atol below 1.2e-38: decided by the rule."""
    f32 = torch.float32
    ref = torch.tensor([[[1e-39, 3e-39]], [[1e-39, 0.0]]], dtype=f32)
    other = ref + torch.tensor([[[2e-41, 0.0]], [[0.0, 0.0]]], dtype=f32)
    for atol in (1e-40, 1e-5):
        got = blocked(Operands(ref, ref, other), atol, 1e-3)
        same(got, element_wise(ref, ref, other, atol, 1e-3))


@pytest.mark.parametrize("block", [7, 40, 1 << 15])
@pytest.mark.parametrize("atol", [1e-5, 0.0])
def test_the_kink_screen_is_the_element_wise_rule(block: int, atol: float) -> None:
    """The screen skips the division only where a row's bound rules it out: the
    screened rows are exactly those of ``|plus + minus - 2 f0| / allowed >= eps / 4``
    (NaN included)."""
    eps, rtol = 1e-3, 1e-3
    shape = (3, 10, 8)
    at = torch.randn(shape, generator=gen(5), dtype=F64)
    f0 = torch.randn(shape[0], shape[2], generator=gen(6), dtype=F64)
    # second differences: most far below the threshold, a few above it, one NaN
    s = 1e-12 * torch.randn(shape, generator=gen(7), dtype=F64)
    s[0, 3, 5] = 1e-2
    s[2, 9, 0] = -1e-4
    s[1, 4, 7] = math.nan
    plus = f0[:, None, :] + eps * at + s / 2
    minus = f0[:, None, :] - eps * at + s / 2
    ops = Operands(at, None, at, plus, minus, 2 * f0[:, None, :], eps, True)
    _, screened = compare(ops, atol, rtol, block)
    ref = (plus - minus) / (2 * eps)
    allowed = ref.abs() * rtol + atol
    ratio = (plus + minus - 2 * f0[:, None, :]).abs() / allowed
    want = torch.nonzero(torch.logical_not(ratio.amax(-1) < eps / 4))
    assert torch.equal(screened, want)
    assert {(0, 3), (1, 4)} <= {tuple(r) for r in want.tolist()}


def _screen_rule(ops: Operands, atol: float, rtol: float) -> torch.Tensor:
    """The kink screen's rows by its rule, element by element, for any tolerances."""
    assert ops.plus is not None and ops.minus is not None and ops.twice_f0 is not None
    allowed = atol + rtol * ((ops.plus - ops.minus) / (2 * ops.eps)).abs()
    ratio = (ops.plus + ops.minus - ops.twice_f0).abs() / allowed
    return torch.nonzero(torch.logical_not(ratio.amax(-1) < ops.eps / 4))


# (name, exact blocks expected): which of the screen's steps decides its rows
SCREEN_STEPS = [
    ("block bound", False),  # max |s| / atol below eps / 4: no row looked at
    ("row bounds", False),  # above it, but each row's own least allowance rules it out
    ("exact", True),  # a row's bound is above it too: divided element by element
    ("rtol 0, infinite reference", True),  # 0 * inf: a NaN allowance, no bound
    ("2 eps overflows", True),  # (1e308 - -1e308) / inf is NaN: no bound
]


@pytest.mark.parametrize("block", [100, 1 << 15])
@pytest.mark.parametrize(("step", "exact"), SCREEN_STEPS)
def test_each_step_of_the_kink_screen_gives_the_rule(
    step: str, exact: bool, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The screen's cheap bounds skip work only where they hold: wherever one does
    not, the next step (at last the exact test) decides, with the rule's rows."""
    shape, eps, atol, rtol = (2, 6, 50), 1e-6, 1e-5, 1e-3
    at = 1e3 * (1 + torch.rand(shape, generator=gen(12), dtype=F64))  # allowances ~1
    s = 1e-13 * torch.rand(shape, generator=gen(13), dtype=F64)
    if step in ("row bounds", "exact"):
        s += 1e-9  # max |s| / atol = 1e-4 > eps / 4
    if step == "exact":
        at[0, 1, 7], s[0, 1, 7] = 0.0, 0.0  # the row's least allowance is atol ...
        s[0, 1, 30] = 1e-7  # ... its bound 1e-2, but 1e-7 / 1.0 is below eps / 4
        s[1, 4, 2] = 1e-3  # screened
    f0 = torch.randn(shape[0], 1, shape[2], generator=gen(14), dtype=F64)
    f0[1, 0, 9] = 0.0  # where plus and minus cancel below: a second difference of 0
    plus, minus = f0 + eps * at + s / 2, f0 - eps * at + s / 2
    if step == "rtol 0, infinite reference":
        rtol = 0.0
        plus[1, 2, 9], minus[1, 2, 9] = 1e308, -1e308  # finite, but their difference is not
    if step == "2 eps overflows":
        eps = 1e308
        plus[1, 2, 9], minus[1, 2, 9] = 1e308, -1e308
    ops = Operands(at, None, at, plus, minus, 2 * f0, eps, True)
    calls: list[int] = []
    sums = comparison._sums

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return sums(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(comparison, "_sums", counted)
    _, screened = compare(ops, atol, rtol, block)
    want = _screen_rule(ops, atol, rtol)
    assert torch.equal(screened, want)
    blocks = 1 if block > at.numel() else 6  # 2 points of 3 blocks of 2 rows
    # each block forms its sums once, and again for the exact test
    assert (len(calls) > blocks) == exact
    if step == "exact":
        assert want.tolist() == [[1, 4]]
    elif step.startswith(("rtol", "2 eps")):
        assert [1, 2] in want.tolist()
    else:
        assert want.numel() == 0


@pytest.mark.parametrize("block", [5, 13, 1 << 15])
def test_points_decided_by_the_rule_in_shared_blocks(block: int) -> None:
    """Several points per block, some decided by their ratio, some by the rule itself
    (NaN ratios, atol = 0): each point gets its own verdict."""
    ref = torch.randn(6, 2, 3, generator=gen(8), dtype=F64)
    ref[1, 0, 0] = 1e-305  # err 1e-306 above allowed 1e-308: fails
    ref[3, 1, 2] = math.inf  # inf / inf: the rule decides (passes)
    ref[4, 0, 1] = math.nan  # fails
    other = ref.clone()
    other[1, 0, 0] += 1e-306
    other[5] += 1.0  # fails by its ratio
    for atol in (0.0, 1e-5):
        got = blocked(Operands(ref, ref, other), atol, 1e-3, block)
        same(got, element_wise(ref, ref, other, atol, 1e-3))
        assert got.point_passed[4:] == [False, False]
