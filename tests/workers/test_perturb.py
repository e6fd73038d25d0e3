"""One-hot evaluation of coordinate perturbations (``gradserve_workers._perturb``).

The oracle is the dense evaluation the checks used before: every perturbed point
materialised and the function vmapped over them. The one-hot evaluation must agree
with it (up to round-off) on every function of the language and on the constructs,
refuse what it cannot run (so the caller goes dense), and leave the checks' reports
unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from gradserve_workers import _perturb
from gradserve_workers.check import CheckOptions, evaluation, finite_difference_check, points
from gradserve_workers.lang import FUNCTIONS, compile_function

F64 = torch.float64
STEPS = (1e-6, -1e-6)

SAMPLES = {
    "x": torch.tensor([0.3, -1.2, 2.0, 0.7, -0.4], dtype=F64),
    "y": torch.tensor([1.5, 0.7, -0.4, 2.2, -1.1], dtype=F64),
    "a": torch.tensor([0.3, -1.2, 2.0, 0.7, -0.4], dtype=F64),
    "A": torch.tensor([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]], dtype=F64),
    "B": torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75], [-2.0, 1.0, 0.5]], dtype=F64),
}
# the documentation's examples pair A with a 3-vector
SAMPLES_3 = {**SAMPLES, "x": SAMPLES["x"][:3], "y": SAMPLES["y"][:3]}


def flat_function(source: str, wrt: tuple[str, ...] | None = None) -> tuple[Any, Any, list[Any]]:
    """(G, xflat, consts) as the checks build them: ``wrt`` inputs flattened into one
    vector (all inputs by default), the others passed as constants."""
    fn = compile_function(source)
    names = list(fn.inputs)
    samples = SAMPLES_3 if "A" in names or "B" in names else SAMPLES
    point = {n: samples[n] for n in names}
    chosen = tuple(names) if wrt is None else wrt
    layout = points.layout(names, chosen, point)
    g = evaluation.flat_fn(fn, layout, order=1)
    x = torch.cat([point[w].reshape(-1) for w in chosen])
    consts = [point[names[i]] for i in layout.const_idx]
    return g, x, consts


def dense(g: Callable[..., torch.Tensor], x: torch.Tensor, consts: list[Any]) -> torch.Tensor:
    n = x.shape[0]
    xs = x[None].expand(len(STEPS) * n, n).clone()
    for k, s in enumerate(STEPS):
        xs[k * n : (k + 1) * n].diagonal().add_(s)
    in_dims = (0, *([None] * len(consts)))
    return torch.func.vmap(g, in_dims=in_dims)(xs, *consts).reshape(len(STEPS) * n, -1)


def assert_same(one_hot: torch.Tensor, reference: torch.Tensor) -> None:
    assert type(one_hot) is torch.Tensor  # the wrapper never leaks out
    assert one_hot.shape == reference.shape
    scale = float(reference[torch.isfinite(reference)].abs().max()) if reference.numel() else 0.0
    torch.testing.assert_close(
        one_hot.to(F64),
        reference.to(F64),
        rtol=1e-12,
        atol=1e-13 * (1.0 + scale) * max(1, reference.shape[-1]),
        equal_nan=True,
    )


def function_sources() -> list[str]:
    return [f"def f({', '.join(compile_function(s.example).inputs)}):\n    return {s.example}"
            for s in FUNCTIONS.values() if compile_function(s.example).inputs]  # fmt: skip


# functions whose one-hot evaluation must not need the dense route: element-wise
# chains and the reductions and products with a one-hot rule
ONE_HOT_ONLY = [
    "sum(sin(x) * x)",
    "2 * dot(x, x)",
    "x[0] * sum(exp(x)) - x[-1]",
    "mean(tanh(x) ** 2) + sum(x[1:4])",
    "sum(where(x > 0, x, -x) / (1 + x * x))",
    "sum(clamp(x, min=-1, max=1) + relu(x) + sigmoid(x) + abs(x) ** 1.5)",
    "def f(x, A):\n    return sum(tanh(A @ x[:3]))",
    "def f(x, y):\n    return sum(x * y + sin(x) / (2 + cos(y)))",
    "def f(x):\n    s = 0.0\n    for i in range(3):\n        s = s + x[i] * x[i + 1]\n    return s",
]


@pytest.mark.parametrize(
    ("source", "wrt"),
    [(s, None) for s in function_sources() + ONE_HOT_ONLY] + [(s, ("x",)) for s in ONE_HOT_ONLY],
)
def test_one_hot_agrees_with_the_dense_evaluation(source: str, wrt: tuple[str] | None) -> None:
    """Every input perturbed (``wrt`` all), or only ``x`` with the others constant."""
    g, x, consts = flat_function(source, wrt)
    try:
        reference = dense(g, x, consts)
    except Exception:
        with pytest.raises(Exception):  # noqa: B017
            _perturb.evaluate(g, x, consts, STEPS)
        return
    try:
        got = _perturb.evaluate(g, x, consts, STEPS)
    except _perturb.Unsupported:
        assert wrt is None or source not in ONE_HOT_ONLY, "fell back to dense"
        return
    assert_same(got, reference)


@pytest.mark.parametrize("source", ONE_HOT_ONLY)
def test_one_hot_stays_one_hot_where_it_can(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No dense vmap for these: the work saved is the point."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("went dense")

    # a matrix times a vector has a one-hot rule when the matrix is a constant
    g, x, consts = flat_function(source, wrt=("x",))
    reference = dense(g, x, consts)
    monkeypatch.setattr(_perturb, "_dense_op", refuse)
    assert_same(_perturb.evaluate(g, x, consts, STEPS), reference)


def test_constants_and_one_input_of_several() -> None:
    """``wrt`` one input: the other is a plain constant, broadcast and gathered."""
    g, x, consts = flat_function("def f(x, y):\n    return sin(x) * y + x ** 2", wrt=("x",))
    assert len(consts) == 1
    assert_same(_perturb.evaluate(g, x, consts, STEPS), dense(g, x, consts))


def test_rows_are_x_plus_step_times_each_axis() -> None:
    x = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    batch = _perturb.one_hot_rows(x, [0.5, -0.25])
    expected = torch.cat([x + 0.5 * torch.eye(3, dtype=F64), x - 0.25 * torch.eye(3, dtype=F64)])
    assert torch.equal(batch.materialise(), expected)


@pytest.mark.parametrize(
    "source",
    [
        "def f(x):\n    if sum(x) > 0:\n        return sum(x)\n    return -sum(x)",
        "def f(x):\n    n = 0\n    while n < 3 and x[n] > -5:\n        n += 1\n    return x * n",
    ],
)
def test_data_dependent_control_flow_is_refused(source: str) -> None:
    g, x, consts = flat_function(source)
    with pytest.raises(Exception) as info:
        _perturb.evaluate(g, x, consts, STEPS)
    assert "_Batch" not in str(info.value)


def test_in_place_writes_are_refused() -> None:
    def g(v: torch.Tensor) -> torch.Tensor:
        buf = torch.zeros(5, dtype=F64)
        buf[0] = v[1]
        return buf

    with pytest.raises(_perturb.Unsupported, match="in place"):
        _perturb.evaluate(g, SAMPLES["x"], [], STEPS)


def test_a_function_of_nothing_is_constant_rows() -> None:
    out = _perturb.evaluate(lambda v: torch.ones(2, dtype=F64), SAMPLES["x"], [], STEPS)
    assert out.shape == (10, 2) and bool((out == 1).all())


def test_sums_are_at_least_as_accurate_as_dense() -> None:
    """Central differences from the one-hot rows are no further from the exact
    gradient than the dense ones (the base total is shared, so its round-off cancels)."""
    fn = compile_function("sum(sin(x) * x) + 2 * dot(x, x)")
    x = torch.linspace(-2, 2, 500, dtype=F64)

    def g(v: torch.Tensor) -> torch.Tensor:
        return fn(v).reshape(-1)

    def numeric(rows: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return ((rows[:n] - rows[n:]) / 2e-6).reshape(-1)

    exact = torch.sin(x) + x * torch.cos(x) + 4 * x  # the closed form
    err_one_hot = float((numeric(_perturb.evaluate(g, x, [], STEPS)) - exact).abs().max())
    err_dense = float((numeric(dense(g, x, [])) - exact).abs().max())
    assert err_one_hot <= 1.5 * err_dense
    assert err_one_hot < 1e-6


@pytest.mark.parametrize(
    "source",
    ["sum(sin(x) * x)", "cumsum(sin(x))", "sum(relu(x))", "sum(abs(x - 0.25))", "x * x[0]"],
)
def test_checks_report_the_same_with_and_without_one_hot(source: str) -> None:
    fn = compile_function(source)
    x = torch.linspace(-1.0, 1.0, 257, dtype=F64)  # hits 0 and 0.25 exactly
    assert x.shape[0] >= CheckOptions().one_hot_min_inputs
    one_hot = finite_difference_check(fn, ["x"], {"x": x}, fast=False)
    never = CheckOptions(one_hot_min_inputs=math.inf)
    plain = finite_difference_check(fn, ["x"], {"x": x}, fast=False, options=never)
    assert (one_hot.passed, one_hot.non_differentiable) == (plain.passed, plain.non_differentiable)
    assert one_hot.point_passed == plain.point_passed
    assert (one_hot.kink is None) == (plain.kink is None)
    if plain.kink is not None:
        assert one_hot.kink is not None and one_hot.kink.input_index == plain.kink.input_index
    # round-off differs (sums are formed differently); failures are far above it
    assert one_hot.max_abs_error == pytest.approx(plain.max_abs_error, rel=1e-3, abs=1e-7)
    assert one_hot.worst is not None and plain.worst is not None
    if plain.max_abs_error > 1e-6:  # a real failure: the same worst element
        assert one_hot.worst.input_index == plain.worst.input_index


def test_kinks_and_failures_found_one_hot(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check takes the one-hot route at this size, and still finds the kink."""
    calls: list[int] = []
    real = _perturb.evaluate

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_perturb, "evaluate", counting)
    fn = compile_function("sum(abs(x))")
    x = torch.linspace(-1.0, 1.0, 257, dtype=F64)  # x[128] == 0
    r = finite_difference_check(fn, ["x"], {"x": x}, fast=False)
    assert calls, "one-hot evaluation was not used"
    assert not r.passed and r.non_differentiable
    assert r.kink is not None and r.kink.input_index == (128,)


def test_a_refused_one_hot_evaluation_goes_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    """softmax needs every row before any one-hot rule saved work: the one-hot route
    refuses (Unsupported), the check evaluates densely and reports as it would."""
    refusals: list[str] = []
    real = _perturb.evaluate

    def recording(*args: Any) -> torch.Tensor:
        try:
            return real(*args)
        except _perturb.Unsupported as exc:
            refusals.append(str(exc))
            raise

    monkeypatch.setattr(_perturb, "evaluate", recording)
    fn = compile_function("sum(softmax(x, dim=0) * x)")
    x = torch.linspace(-1.0, 1.0, 257, dtype=F64)
    r = finite_difference_check(fn, ["x"], {"x": x}, fast=False)
    assert refusals and "every row" in refusals[0]
    never = CheckOptions(one_hot_min_inputs=math.inf)
    plain = finite_difference_check(fn, ["x"], {"x": x}, fast=False, options=never)
    assert r.passed and plain.passed
    assert r.max_abs_error == plain.max_abs_error and r.worst == plain.worst


def test_no_materialising_before_anything_was_shared() -> None:
    """A function whose first step needs every row goes dense from the start; one
    that shares an element-wise head first may materialise later."""
    g, x, consts = flat_function("sum(softmax(x, dim=0) * x)")
    with pytest.raises(_perturb.Unsupported, match="every row"):
        _perturb.evaluate(g, x, consts, STEPS)
    g, x, consts = flat_function("def f(x):\n    return sum(tanh(x[1:] - x[:-1]) ** 2)")
    with pytest.raises(_perturb.Unsupported, match="every row"):
        _perturb.evaluate(g, x, consts, STEPS)
    g, x, consts = flat_function("cumsum(sin(x))")
    assert_same(_perturb.evaluate(g, x, consts, STEPS), dense(g, x, consts))


def test_chunks_of_coordinates_agree_with_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large inputs are evaluated a chunk of coordinates at a time (bounded memory)."""
    fn = compile_function("cumsum(sin(x)) * x[0]")
    x = torch.linspace(-1.0, 1.0, 300, dtype=F64)
    ev = evaluation.Evaluator(lambda v: fn(v).reshape(-1), [], True, one_hot=True)
    whole = ev.along(x[None], None, list(STEPS))
    small = CheckOptions(eval_budget=2 * 300 * 7)  # 7 coordinates a chunk
    ev_small = evaluation.Evaluator(lambda v: fn(v).reshape(-1), [], True, True, options=small)
    calls: list[tuple[int, int]] = []
    real = _perturb.evaluate

    def spy(*args: Any) -> torch.Tensor:
        calls.append(args[-2:])
        return real(*args)

    monkeypatch.setattr(_perturb, "evaluate", spy)
    chunked = ev_small.along(x[None], None, list(STEPS))
    assert len(calls) == math.ceil(300 / 7) and calls[-1] == (294, 300)
    for a, b in zip(whole, chunked, strict=True):
        assert a.shape == b.shape == (1, 300, 300)
        assert torch.equal(a, b)


def test_batched_points_with_a_constant_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several points, each with its own constant, one-hot point by point."""
    fn = compile_function("def f(x, w):\n    return sum(w * sin(x)) + relu(x[3])")
    x = torch.linspace(-1.0, 1.0, 2 * 300, dtype=F64).reshape(2, 300)
    x[1, 3] = 0.0  # a kink at the second point only
    w = torch.stack([torch.ones(300, dtype=F64), torch.linspace(0, 2, 300, dtype=F64)])
    inputs = {"x": x, "w": w}
    used: list[int] = []
    real = _perturb.evaluate

    def counting(*args: Any) -> torch.Tensor:
        used.append(1)
        return real(*args)

    monkeypatch.setattr(_perturb, "evaluate", counting)
    # several points go one-hot only from one_hot_min_inputs_batched on: lower it here
    lower = CheckOptions(one_hot_min_inputs_batched=256)
    one_hot = finite_difference_check(
        fn, ["x", "w"], inputs, wrt=["x"], batched=True, fast=False, options=lower
    )
    assert used, "one-hot evaluation was not used"
    never = CheckOptions(one_hot_min_inputs_batched=math.inf)
    used.clear()
    plain = finite_difference_check(
        fn, ["x", "w"], inputs, wrt=["x"], batched=True, fast=False, options=never
    )
    assert not used, "below the batched threshold several points go dense"
    assert one_hot.point_passed == plain.point_passed == (True, False)
    assert one_hot.kink is not None and plain.kink is not None
    assert (one_hot.kink.point, one_hot.kink.input_index) == (1, (3,))
    assert (plain.kink.point, plain.kink.input_index) == (1, (3,))


# -- non-finite values, empty slices and bad dims: the dense evaluation's results ----

NON_FINITE = [
    # (source, x): an inf or nan in the base, or a total that overflows
    ("sum(1 / x)", [0.5, -1.0, 0.0]),
    ("dot(x, 1 / x)", [0.5, -1.0, 0.0]),
    ("mean(log(abs(x)))", [0.5, -1.0, 0.0]),
    ("sum(exp(1000 * x))", [0.5, -1.0, 0.8]),
    ("sum(x * 1e308) + sum(x)", [1.5, 1.0, -0.5]),
    ("def f(x, A):\n    return A @ x[:2]", [0.5, -1.0, 0.25]),
    ("sum(sin(x)[2:2]) + sum(x)", [0.5, -1.0, 0.25]),
    ("sum(sin(x)[3:1]) * 2 + x[0]", [0.5, -1.0, 0.25]),
]


@pytest.mark.parametrize(("source", "values"), NON_FINITE)
def test_non_finite_and_empty_cases_equal_dense(source: str, values: list[float]) -> None:
    fn = compile_function(source)
    x = torch.tensor(values, dtype=F64)
    consts = []
    if "A" in fn.inputs:
        consts = [torch.tensor([[math.inf, 1.0], [0.0, 1.0]], dtype=F64)]

    def g(v: torch.Tensor, *c: torch.Tensor) -> torch.Tensor:
        return fn(v, *c).reshape(-1)

    reference = dense(g, x, consts)
    try:
        got = _perturb.evaluate(g, x, consts, STEPS)
    except _perturb.Unsupported:
        return  # refused: the check evaluates densely, as the contract allows
    torch.testing.assert_close(got, reference, equal_nan=True, rtol=1e-12, atol=0.0)


def test_out_of_range_dims_are_not_summed() -> None:
    fn = compile_function("sum(x, dim=1)")

    def g(v: torch.Tensor) -> torch.Tensor:
        return fn(v).reshape(-1)

    with pytest.raises(Exception, match="ut of range"):
        dense(g, SAMPLES["x"], [])
    with pytest.raises(Exception):  # noqa: B017 - refused or the same error, never a sum
        _perturb.evaluate(g, SAMPLES["x"], [], STEPS)


def test_a_check_with_an_inf_in_the_base_reports_what_dense_does() -> None:
    fn = compile_function("sum(x) + 1 / (1 + sum(1 / x ** 2))")
    x = torch.linspace(-1.0, 1.0, 257, dtype=F64)  # x[128] == 0: 1/x**2 is inf
    one_hot = finite_difference_check(fn, ["x"], {"x": x}, fast=False)
    never = CheckOptions(one_hot_min_inputs=math.inf)
    plain = finite_difference_check(fn, ["x"], {"x": x}, fast=False, options=never)
    assert one_hot.passed == plain.passed
    assert one_hot.worst is not None and plain.worst is not None
    assert one_hot.worst.input_index == plain.worst.input_index
    assert one_hot.worst.numeric == pytest.approx(plain.worst.numeric, nan_ok=True)
