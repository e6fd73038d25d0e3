"""Checks split by input elements (``columns``) and the forward-mode Jacobian.

A check the server splits across workers runs one shard per worker, each over its
own input elements; :func:`merge_shards` puts the reports back together. The merged
report must be the one the whole check gives. Functions with at least as many
outputs as inputs build autograd's Jacobian by forward mode and hold reverse mode to
it by projections: a wrong reverse mode must still be caught, element by element.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
from support.autograd import with_backward

from gradserve_workers.check import (
    CheckError,
    CheckOptions,
    analytic,
    evaluation,
    finite_difference_check,
    merge_shards,
    points,
)
from gradserve_workers.lang import compile_function

Tensor = torch.Tensor


def uniform(n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return -2 + 4 * torch.rand(n, generator=g, dtype=torch.float64)


def split(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    edges = [0, *cuts, n]
    return list(itertools.pairwise(edges))


# (source, input sizes, wrt or None, zeros to plant in x for kinks)
CORPUS = [
    ("cumsum(sin(x))", {"x": 300}, None, ()),  # m = n: forward mode
    ("sum(sin(x) * x)", {"x": 300}, None, ()),  # m = 1: reverse mode
    ("softmax(x, 0)", {"x": 280}, None, ()),  # dense Jacobian, goes dense one-hot
    ("x[:10] * sum(x)", {"x": 260}, None, ()),  # m < n: reverse mode, sliced
    ("x * y", {"x": 140, "y": 140}, None, ()),  # two inputs, shards across them
    ("cumsum(x * y)", {"x": 150, "y": 150}, ("x",), ()),  # y a constant
    ("relu(x) * 2", {"x": 270}, None, (7, 200)),  # two kinks of equal jump
    ("cumsum(abs(x)) + sum(y)", {"x": 260, "y": 40}, None, (7, 250)),
    ("log(x + 2.5) * 0 + where(x > 0, x, 0) ** 2", {"x": 270}, None, ()),
]


@pytest.fixture
def forward_always() -> CheckOptions:
    """Whole checks build Jacobians the way shards do (forward mode first whenever
    outputs >= inputs), as they do at the sizes the server splits, so that the two
    reports can be compared bit for bit at these small sizes."""
    return CheckOptions(forward_min_elements=0)


def _inputs(sizes: dict[str, int], zeros: tuple[int, ...]) -> dict[str, Tensor]:
    inputs = {k: uniform(n, seed=i) for i, (k, n) in enumerate(sizes.items())}
    for z in zeros:
        inputs["x"][z] = 0.0
    return inputs


@pytest.mark.parametrize(("source", "sizes", "wrt", "zeros"), CORPUS)
def test_merged_shards_are_the_whole_check(
    source: str,
    sizes: dict[str, int],
    wrt: tuple[str, ...] | None,
    zeros: tuple[int, ...],
    forward_always: CheckOptions,
) -> None:
    fn = compile_function(source)
    names = list(fn.inputs)
    inputs = _inputs(sizes, zeros)
    whole = finite_difference_check(fn, names, inputs, wrt=wrt, options=forward_always)
    n = sum(sizes[w] for w in (wrt or names))
    for cuts in ([n // 2], [17, n // 3, n - 1]):
        shards = [
            finite_difference_check(fn, names, inputs, wrt=wrt, columns=c, options=forward_always)
            for c in split(n, cuts)
        ]
        merged = merge_shards(shards)
        assert merged.passed == whole.passed
        assert merged.point_passed == whole.point_passed
        assert merged.worst == whole.worst
        assert merged.max_abs_error == whole.max_abs_error
        assert merged.max_rel_error == whole.max_rel_error
        assert merged.kink == whole.kink
        assert merged.message == whole.message
    if zeros:
        assert not whole.passed and whole.kink is not None
        assert whole.kink.input == "x" and whole.kink.input_index == (zeros[0],)


def test_a_shard_reports_its_own_elements_under_their_global_names() -> None:
    fn = compile_function("x * y")
    x, y = uniform(300, 1), uniform(300, 2)
    y_bad = y.clone()
    shard = finite_difference_check(fn, ["x", "y"], {"x": x, "y": y}, columns=(300, 600))
    assert shard.passed and shard.worst is not None and shard.worst.input == "y"
    # a kink at y[40], which only the shard holding the y elements can see
    kinked = compile_function("x * abs(y)")
    y_bad[40] = 0.0
    inputs = {"x": x, "y": y_bad}
    first = finite_difference_check(kinked, ["x", "y"], inputs, columns=(0, 300))
    second = finite_difference_check(kinked, ["x", "y"], inputs, columns=(300, 600))
    assert first.passed and first.kink is None
    assert not second.passed and second.kink is not None
    assert (second.kink.input, second.kink.input_index) == ("y", (40,))


def test_shards_of_non_finite_outputs_take_the_generic_comparison(
    forward_always: CheckOptions,
) -> None:
    """log at 0 is -inf: the fused comparison steps aside, the generic one runs with the
    shard's offset, and the worst element keeps its global index."""
    fn = compile_function("log(abs(x))")
    x = uniform(300, 3)
    x[210] = 0.0
    whole = finite_difference_check(fn, ["x"], {"x": x}, options=forward_always)
    merged = merge_shards(
        [
            finite_difference_check(fn, ["x"], {"x": x}, columns=c, options=forward_always)
            for c in split(300, [150])
        ]
    )
    assert not whole.passed and whole.worst is not None
    assert whole.worst.input_index == (210,)
    assert repr(merged.worst) == repr(whole.worst)  # NaN analytic: compared as text
    assert merged.passed == whole.passed and merged.message == whole.message


def test_shards_with_data_dependent_control_flow(forward_always: CheckOptions) -> None:
    source = "def f(x):\n    if sum(x) > 1000:\n        return x\n    return cumsum(x * x)"
    fn = compile_function(source)
    x = uniform(260, 4)
    whole = finite_difference_check(fn, ["x"], {"x": x}, options=forward_always)
    merged = merge_shards(
        [
            finite_difference_check(fn, ["x"], {"x": x}, columns=c, options=forward_always)
            for c in split(260, [100])
        ]
    )
    assert whole.passed and not whole.vmapped
    assert merged.worst == whole.worst and merged.max_abs_error == whole.max_abs_error


@pytest.mark.parametrize(
    ("columns", "kwargs"),
    [((0, 0), {}), ((5, 3), {}), ((0, 11), {}), ((-1, 4), {}), ((0, 5), {"order": 2}),
     ((0, 5), {"fast": True})],
)  # fmt: skip
def test_bad_columns_are_refused(columns: tuple[int, int], kwargs: dict[str, object]) -> None:
    x = uniform(10, 5)
    with pytest.raises(CheckError, match=r"^check\(f.*columns="):
        finite_difference_check(lambda v: (v**4).sum(), ["x"], {"x": x}, columns=columns, **kwargs)


# ---------------------------------------------------------------------------
# forward mode, with reverse mode held to it


def _cumsum_cos(x: Tensor) -> Tensor:
    return torch.cumsum(torch.sin(x), 0)


def _true_vjp(x: Tensor, g: Tensor) -> Tensor:
    return torch.cos(x) * g.flip(0).cumsum(0).flip(0)


def _true_jvp(x: Tensor, t: Tensor) -> Tensor:
    return torch.cumsum(torch.cos(x) * t, 0)


def _wrong_at(vjp: Callable[[Tensor, Tensor], Tensor], i: int) -> Callable[..., Tensor]:
    """``vjp`` wrong in the derivative with respect to input ``i`` only (by 1e-3)."""

    def wrong(x: Tensor, g: Tensor) -> Tensor:
        out = vjp(x, g).clone()
        out[..., i] += 1e-3 * g.sum(-1)
        return out

    return wrong


@pytest.mark.parametrize("columns", [None, (100, 300)])
def test_a_wrong_reverse_mode_is_caught_though_forward_mode_is_right(
    columns: tuple[int, int] | None,
) -> None:
    """The forward-mode Jacobian is right, so only the projections can see that the
    backward is wrong (in one input's column, by 1e-3, far below a typical entry);
    the check then compares reverse mode's own Jacobian and names that column."""
    f = with_backward(_cumsum_cos, _wrong_at(_true_vjp, 123), jvp=_true_jvp)
    x = uniform(300, 6)
    r = finite_difference_check(f, ["x"], {"x": x}, columns=columns)
    assert not r.passed and r.worst is not None
    assert r.worst.input_index == (123,)
    assert abs(r.worst.analytic - r.worst.numeric) == pytest.approx(1e-3, rel=1e-3)


def test_a_wrong_forward_mode_falls_back_to_reverse_mode() -> None:
    """gradcheck's verdict is about the backward: a right backward passes even when the
    forward-mode rule is wrong (the modes disagree, so reverse mode's Jacobian is
    the one compared)."""

    def wrong_jvp(x: Tensor, t: Tensor) -> Tensor:
        return _true_jvp(x, t) * 1.01

    f = with_backward(_cumsum_cos, _true_vjp, jvp=wrong_jvp)
    r = finite_difference_check(f, ["x"], {"x": uniform(300, 7)})
    assert r.passed, r.message


def _softmax_jacobian(x: Tensor) -> Tensor:
    p = torch.exp(x - x.max())
    p = p / p.sum()
    return 3 * (torch.diag(p) - torch.outer(p, p))


def _outer_row_jacobian(x: Tensor) -> Tensor:
    jac = torch.diag(x[0] + 3 * x**2)
    jac[:, 0] += x
    return jac


# source -> its Jacobian in closed form (rows: outputs)
JACOBIANS: dict[str, Callable[[Tensor], Tensor]] = {
    "cumsum(sin(x))": lambda x: torch.tril(torch.cos(x).expand(len(x), len(x))),
    "softmax(x, 0) * 3": _softmax_jacobian,
    "outer(x, x)[0] + x ** 3": _outer_row_jacobian,
}


def test_forward_mode_is_used_and_reverse_mode_agrees_on_language_functions() -> None:
    for source, jacobian in JACOBIANS.items():
        fn = compile_function(source)
        s = points.setup(fn, ["x"], {"x": uniform(200, 8)}, None, False, "check(f)")
        g = evaluation.flat_fn(fn, s.layout, 1)
        forward = analytic.forward_columns(g, s, 0, s.layout.n)
        assert forward is not None
        # forward mode's Jacobian, transposed, against the closed form
        torch.testing.assert_close(forward[0][0], jacobian(s.x[0]).T, rtol=1e-12, atol=1e-14)
        assert analytic.reverse_agrees(g, s, forward[0]), source
        cols = analytic.forward_columns(g, s, 50, 120)
        assert cols is not None
        torch.testing.assert_close(cols[0], forward[0][:, 50:120], rtol=0, atol=0)
        assert analytic.reverse_agrees(g, s, cols[0], 50)
        # a reverse mode wrong in one element, by 1e-7 of a unit entry: seen
        wrong = forward[0].clone()
        wrong[0, 77, 150] += 1e-7
        assert not analytic.reverse_agrees(g, s, wrong), source


def test_agreement_where_a_projection_cancels_uses_the_columns_bound() -> None:
    """Most elements pass on ``|vᵀJ[:, i]|`` (a lower bound of ``|v|ᵀ|J[:, i]|``);
    a column orthogonal to a cotangent has a projection of round-off size, so it is
    decided by its own bound: round-off between the modes passes, an error fails."""
    n = 60
    s0 = points.setup(lambda x: x, ["x"], {"x": uniform(n, 3)}, None, False, "f")
    v = points.unit_rows(CheckOptions().agreement_projections, n,
                               torch.Generator().manual_seed(0))  # fmt: skip
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a[:, 7] -= (v[0] @ a[:, 7]) * v[0]  # column 7 orthogonal to the first cotangent
    g = evaluation.flat_fn(lambda x: a @ torch.sin(x), s0.layout, 1)
    forward = analytic.forward_columns(g, s0, 0, n)
    assert forward is not None
    expected = forward[0][0] @ v.T
    assert abs(float(expected[7, 0])) < 1e-14 < float(forward[0][0, 7].abs().max())
    assert analytic.reverse_agrees(g, s0, forward[0])
    wrong = forward[0].clone()
    wrong[0, 7, 20] += 1e-9  # small, but far above round-off in that column
    assert not analytic.reverse_agrees(g, s0, wrong)
    wrong = forward[0].clone()
    wrong[0, 7, 20] = float("nan")
    assert not analytic.reverse_agrees(g, s0, wrong)


# ---------------------------------------------------------------------------
# claimed Jacobians, split the same way


def _claim(source: str, names: list[str]) -> Callable[..., Tensor]:
    from gradserve_workers import lang

    program = lang.parse_and_validate(source, lang.Limits(), known_inputs=names)
    claim = lang.compile_program(program, lang.Limits())
    order = [names.index(n) for n in claim.inputs]
    return lambda *t: claim(*(t[i] for i in order))


# (function, inputs, claims by input, the worst element a wrong claim must name)
CLAIMS = [
    ("cumsum(sin(x))", {"x": 300}, {"x": "tril(outer(ones(300), cos(x)))"}, None),
    ("cumsum(sin(x))", {"x": 300}, {"x": "diag(cos(x))"}, "below the diagonal"),
    ("x * y", {"x": 150, "y": 150}, {"x": "diag(y)", "y": "diag(x)"}, None),
    ("x * y", {"x": 150, "y": 150}, {"y": "diag(x)", "x": "diag(y)"}, None),  # dict order
    # m < n (reverse mode); equal errors in both inputs: the first in output order wins
    ("x[:20] * y[:20]", {"x": 150, "y": 150},
     {"x": "diag(y)[:20] + outer(where(arange(20) == 5, 1.0, 0.0), "
           "where(arange(150) == 9, 1.0, 0.0))",
      "y": "diag(x)[:20] + outer(where(arange(20) == 2, 1.0, 0.0), "
           "where(arange(150) == 9, 1.0, 0.0))"},
     "y"),
    ("x * y", {"x": 150, "y": 150}, {"x": "diag(y)", "y": "diag(x) + where(x > 1.9, 1, 0)"},
     "y"),
    ("x[:20] * sum(x)", {"x": 260},
     {"x": "outer(x[:20], ones(260)) + diag(sum(x) * ones(260))[:20]"}, None),  # m < n
]  # fmt: skip


@pytest.mark.parametrize(("source", "sizes", "claims", "bad"), CLAIMS)
def test_merged_claimed_jacobian_shards_are_the_whole_check(
    source: str,
    sizes: dict[str, int],
    claims: dict[str, str],
    bad: object,
    forward_always: CheckOptions,
) -> None:
    from gradserve_workers.check import claimed_check

    fn = compile_function(source)
    names = list(fn.inputs)
    inputs = _inputs(sizes, ())
    claim_fns = {k: _claim(v, names) for k, v in claims.items()}
    whole = claimed_check(fn, claim_fns, names, inputs, kind="jacobian", options=forward_always)
    assert whole.passed == (bad is None), whole.message
    if bad == "below the diagonal":
        # the claim misses d f_j / d x_i = cos(x_i) for j > i: worst where |cos(x_i)| is
        # largest (i < n - 1), first in output order there
        i = int(torch.argmax(torch.cos(inputs["x"][:-1]).abs()))
        assert whole.worst is not None
        assert (whole.worst.output_index, whole.worst.input_index) == ((i + 1,), (i,))
        assert whole.worst.numeric == 0.0
        assert whole.worst.analytic == pytest.approx(math.cos(float(inputs["x"][i])))
    elif bad is not None:
        assert whole.worst is not None and whole.worst.input == bad
    n = sum(sizes[k] for k in claims)
    for cuts in ([n // 2], [17, n // 3, n - 1]):
        shards = [
            claimed_check(
                fn, claim_fns, names, inputs, kind="jacobian", columns=c, options=forward_always
            )
            for c in split(n, cuts)
        ]
        merged = merge_shards(shards)
        assert merged.passed == whole.passed and merged.kind == "claimed_jacobian"
        assert merged.worst == whole.worst
        assert merged.max_abs_error == whole.max_abs_error
        assert merged.max_rel_error == whole.max_rel_error
        assert merged.message == whole.message


def test_claimed_columns_need_a_claimed_jacobian() -> None:
    from gradserve_workers.check import claimed_check

    x = uniform(10, 9)
    with pytest.raises(CheckError, match=r"columns=.*claimed Jacobian"):
        claimed_check(
            lambda v: (v**2).sum(), {"x": lambda v: 2 * v}, ["x"], {"x": x}, kind="grad",
            columns=(0, 5),
        )  # fmt: skip
    with pytest.raises(CheckError, match=r"columns="):
        claimed_check(lambda v: v**2, {"x": lambda v: torch.diag(2 * v)}, ["x"], {"x": x},
                      kind="jacobian", columns=(4, 11))  # fmt: skip


def test_small_whole_checks_use_reverse_mode_and_agree_with_forward_shards() -> None:
    """Below FORWARD_MIN_ELEMENTS a whole check compares reverse mode's Jacobian; its
    shards (forward mode) give the same verdict and worst element, and errors equal
    to round-off."""
    fn = compile_function("softmax(x, 0)")
    x = uniform(300, 10)
    assert CheckOptions().forward_min_elements > 300 * 300
    s = points.setup(fn, ["x"], {"x": x}, None, False, "check(f)")
    at, _, _ = analytic.analytic_full(fn, s, 1, True)
    assert not at.is_contiguous()  # the transposed view of reverse mode's Jacobian
    whole = finite_difference_check(fn, ["x"], {"x": x})
    merged = merge_shards(
        [finite_difference_check(fn, ["x"], {"x": x}, columns=c) for c in split(300, [150])]
    )
    assert merged.passed == whole.passed and merged.worst is not None and whole.worst is not None
    assert merged.worst.input_index == whole.worst.input_index
    assert merged.worst.output_index == whole.worst.output_index
    assert merged.max_abs_error == pytest.approx(whole.max_abs_error, rel=1e-6)
    assert merged.max_rel_error == pytest.approx(whole.max_rel_error, rel=1e-6)


def test_a_nan_in_one_shard_is_the_merged_maximum(forward_always: CheckOptions) -> None:
    """sqrt at 0: one shard's relative error is NaN; the merged maximum is NaN too,
    whichever shard holds it (max() would keep or drop it by position)."""
    fn = compile_function("sqrt(x) * 2")
    x = uniform(40, 11).abs()
    x[30] = 0.0
    whole = finite_difference_check(fn, ["x"], {"x": x}, options=forward_always)
    for cut in (20, 35):
        merged = merge_shards(
            [
                finite_difference_check(fn, ["x"], {"x": x}, columns=c, options=forward_always)
                for c in split(40, [cut])
            ]
        )
        assert math.isnan(whole.max_rel_error) and math.isnan(merged.max_rel_error)
        assert repr(merged.worst) == repr(whole.worst) and merged.passed == whole.passed


def test_a_wrong_backward_is_seen_next_to_entries_1e8_times_larger() -> None:
    """A column holds 1e8 (from 1e8 * x) and cos(x_i) (from sin(x)): reverse mode's
    projections must still see a 1e-2 error in the small entry, element by element
    (the tolerance scales with |v|ᵀ|J|, not with the column's norm)."""
    n, bad = 300, 123

    def f(x: Tensor) -> Tensor:
        return torch.cat([1e8 * x, torch.sin(x)])

    def vjp(x: Tensor, g: Tensor) -> Tensor:
        out = 1e8 * g[..., :n] + torch.cos(x) * g[..., n:]
        out[..., bad] += 1e-2 * g[..., n + bad]
        return out

    def jvp(x: Tensor, t: Tensor) -> Tensor:
        return torch.cat([1e8 * t, torch.cos(x) * t], -1)

    fn = with_backward(f, vjp, jvp=jvp)
    x = uniform(n, 12)
    for columns in (None, (100, 200)):
        if columns is None:  # the whole check, by forward mode first
            s = points.setup(fn, ["x"], {"x": x}, None, False, "check(f)")
            g = evaluation.flat_fn(fn, s.layout, 1)
            forward = analytic.forward_columns(g, s, 0, n)
            assert forward is not None
            assert not analytic.reverse_agrees(g, s, forward[0])
        r = finite_difference_check(fn, ["x"], {"x": x}, columns=columns, atol=1e-5, rtol=1e-3)
        assert not r.passed and r.worst is not None
        assert (r.worst.output_index, r.worst.input_index) == ((n + bad,), (bad,))


def test_more_kink_candidates_than_are_retested_pick_the_same_kink() -> None:
    """5,000 kinks of equal jump (abs at 0 everywhere): the whole check retests the
    first 4,096 by a stable order and names the first; so do the shards."""
    fn = compile_function("sum(abs(x))")
    x = torch.zeros(5000, dtype=torch.float64)
    whole = finite_difference_check(fn, ["x"], {"x": x}, fast=False)
    merged = merge_shards(
        [finite_difference_check(fn, ["x"], {"x": x}, columns=c) for c in split(5000, [2500])]
    )
    assert whole.kink is not None and whole.kink.input_index == (0,)
    assert merged.kink == whole.kink and not merged.passed


def test_a_function_without_forward_mode_is_checked_by_reverse_mode(
    forward_always: CheckOptions,
) -> None:
    """A backward but no forward-mode rule: building columns by forward mode fails, so
    whole checks and shards fall back to reverse mode's Jacobian and still agree."""
    fn = with_backward(_cumsum_cos, _true_vjp)  # no jvp: torch raises on forward mode
    x = uniform(300, 13)
    s = points.setup(fn, ["x"], {"x": x}, None, False, "check(f)")
    assert analytic.forward_columns(evaluation.flat_fn(fn, s.layout, 1), s, 0, 10) is None
    whole = finite_difference_check(fn, ["x"], {"x": x}, options=forward_always)
    merged = merge_shards(
        [
            finite_difference_check(fn, ["x"], {"x": x}, columns=c, options=forward_always)
            for c in split(300, [120])
        ]
    )
    assert whole.passed and merged.passed, whole.message
    assert merged.worst == whole.worst and merged.max_abs_error == whole.max_abs_error


def test_a_function_without_reverse_mode_fails_the_agreement_and_the_check() -> None:
    """A forward-mode rule but no backward: holding reverse mode to forward mode
    cannot run (torch's NotImplementedError), which says no; the reverse-mode route
    then runs the backward itself, whose error is the check's."""

    def no_backward(x: Tensor, g: Tensor) -> Tensor:
        raise NotImplementedError("no backward here")

    fn = with_backward(_cumsum_cos, no_backward, jvp=_true_jvp)
    x = uniform(300, 14)
    s = points.setup(fn, ["x"], {"x": x}, None, False, "check(f)")
    g = evaluation.flat_fn(fn, s.layout, 1)
    forward = analytic.forward_columns(g, s, 0, 300)
    assert forward is not None  # forward mode runs it
    assert not analytic.reverse_agrees(g, s, forward[0])
    with pytest.raises(NotImplementedError, match="no backward here"):
        finite_difference_check(fn, ["x"], {"x": x}, options=CheckOptions(forward_min_elements=0))
