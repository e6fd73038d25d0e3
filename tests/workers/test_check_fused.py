"""The fused comparisons (the compiled kernel, and the blocked eager torch code that
runs where it is not built or on a GPU) and the kink screen agree bit for bit with
the element-wise originals."""

from __future__ import annotations

import dataclasses
import importlib.machinery
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from gradserve_workers import _check_impl as ci
from gradserve_workers import _native, lang
from gradserve_workers.check import claimed_check, finite_difference_check
from gradserve_workers.ops import OpsRequest, compute

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(params=["native", "eager"])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each fused comparison through the compiled kernel and through the eager code."""
    if request.param == "eager":
        monkeypatch.setattr(_native, "AVAILABLE", False)
    yield request.param


def test_the_kernel_is_built_where_a_c_compiler_is() -> None:
    # a broken build would otherwise pass unnoticed: the eager code gives the same results
    if shutil.which("cc") or shutil.which("gcc"):
        assert _native.AVAILABLE, "the comparison kernel did not build (see workers/setup.py)"


def test_a_library_built_from_another_source_is_not_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not _native.AVAILABLE:
        pytest.skip("the comparison kernel is not built here")
    assert _native._load() is not None
    # built from another version of compare_rows.c: its arguments or arithmetic differ
    assert _native._load(expected=_native.source_id() + 1) is None
    assert _native.source_id(_native.SOURCE.with_name("missing.c")) == -1
    for off in ("1", "yes"):  # an operator rules it out
        monkeypatch.setenv(_native.DISABLE_ENV, off)
        assert _native._load() is None
    for on in ("0", "false", ""):
        monkeypatch.setenv(_native.DISABLE_ENV, on)
        assert _native._load() is not None


def test_a_library_that_will_not_load_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged file, or a shared library without the kernel's symbols, where the
    kernel should be: the eager code runs, nothing raises."""
    import _ctypes

    name = f"_compare_rows{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    monkeypatch.setattr(_native, "_HERE", tmp_path)
    monkeypatch.delenv(_native.DISABLE_ENV, raising=False)
    (tmp_path / name).write_bytes(b"\x7fELF, but cut short")
    assert _native._load() is None  # the loader's OSError
    shutil.copyfile(_ctypes.__file__, tmp_path / name)  # loads, lacks gs_compare_rows
    assert _native._load() is None


def test_tensors_without_readable_memory_take_the_eager_path() -> None:
    """autograd's zero tensors have no storage (a null data pointer) and sparse ones
    no strides: the kernel would read address 0, so they never reach it."""
    zero = torch._efficientzerotensor((1, 2, 3), dtype=F64)
    assert not _native.supports(zero)
    assert not _native.supports(torch.zeros(1, 2, 3, dtype=F64).to_sparse())
    assert _native.supports(torch.zeros(1, 2, 3, dtype=F64)) == _native.AVAILABLE
    x = torch.randn(4, generator=gen(3), dtype=F64)
    claim = lambda x: torch._efficientzerotensor((), dtype=F64)  # noqa: E731
    r = claimed_check(lambda x: torch.floor(x).sum(), {"x": claim}, ["x"], {"x": x}, kind="grad")
    assert r.passed  # floor's derivative is 0 where defined: the claim is right


def generic_fd(
    at: torch.Tensor, plus: torch.Tensor, minus: torch.Tensor, eps: float, atol: float, rtol: float
) -> ci._Comparison:
    a = at.transpose(1, 2)
    numeric = ((plus - minus) / (2 * eps)).transpose(1, 2)
    return ci._compare_generic(a, numeric, a, atol, rtol)


@pytest.mark.parametrize("block", [7, 64, 1 << 15])
@pytest.mark.parametrize("shape", [(1, 30, 20), (4, 9, 1), (3, 1, 12), (5, 8, 6)])
def test_fused_fd_compare_matches_generic(
    monkeypatch: pytest.MonkeyPatch, block: int, shape: tuple[int, int, int], impl: str
) -> None:
    monkeypatch.setattr(ci, "BLOCK", block)
    eps = 1e-6
    at = torch.randn(shape, generator=gen(1), dtype=F64)
    noise = 1e-6 * torch.randn(shape, generator=gen(2), dtype=F64)
    noise[0, 0, 0] = 0.5  # one bad element at point 0
    plus = at * eps + noise * eps
    minus = -at * eps - noise * eps
    f0 = torch.zeros(shape[0], shape[2], dtype=F64)
    ops = ci._Operands(at, None, at, plus, minus, 2 * f0[:, None, :], eps, True)
    fused = ci._fused_compare(ops, 1e-5, 1e-3)
    assert fused is not None
    assert dataclasses.asdict(fused[0]) == dataclasses.asdict(
        generic_fd(at, plus, minus, eps, 1e-5, 1e-3)
    )


@pytest.mark.parametrize("block", [5, 1 << 15])
def test_fused_ties_pick_the_first_in_report_order(
    monkeypatch: pytest.MonkeyPatch, block: int, impl: str
) -> None:
    monkeypatch.setattr(ci, "BLOCK", block)
    eps = 0.5
    at = torch.zeros(2, 4, 3, dtype=F64)
    at[1, 3, 0] = 1.0  # equal errors at (point 1, out 0, in 3) and (1, out 2, in 1)
    at[1, 1, 2] = 1.0
    zeros = torch.zeros_like(at)
    ops = ci._Operands(at, None, at, zeros, zeros, None, eps, True)
    fused = ci._fused_compare(ops, 1e-5, 1e-3)
    assert fused is not None
    assert fused[0].worst_flat == (1, 0, 3)
    assert dataclasses.asdict(fused[0]) == dataclasses.asdict(
        generic_fd(at, zeros, zeros, eps, 1e-5, 1e-3)
    )
    # all ratios zero: the first element
    ops = ci._Operands(zeros, None, zeros, zeros, zeros, None, eps, True)
    fused = ci._fused_compare(ops, 1e-5, 1e-3)
    assert fused is not None and fused[0].worst_flat == (0, 0, 0)


def test_ratio_of_exactly_one_is_decided_by_the_rule(impl: str) -> None:
    ref = torch.tensor([[[1.0, 2.0]]], dtype=F64)
    allowed = 1e-5 + 1e-3 * ref.abs()
    other = ref + allowed  # err == allowed (to rounding): passes iff err <= allowed
    got = ci._compare(ref, ref, other, 1e-5, 1e-3)
    assert dataclasses.asdict(got) == dataclasses.asdict(
        ci._compare_generic(ref, ref, other, 1e-5, 1e-3)
    )


def test_non_finite_and_zero_atol_use_the_generic_rules(impl: str) -> None:
    ref = torch.tensor([[[1.0, 2.0, 0.0]]], dtype=F64)
    other = torch.tensor([[[1.0, math.inf, 0.0]]], dtype=F64)
    assert (
        ci._fused_compare(ci._Operands(ref, ref, other, None, None, None, 0, False), 1e-5, 0)
        is None
    )
    ok = ref.clone()
    assert (
        ci._fused_compare(ci._Operands(ref, ref, ok, None, None, None, 0, False), 0.0, 1e-3) is None
    )
    got = ci._compare(ref, ref, other, 1e-5, 1e-3)
    assert dataclasses.asdict(got) == dataclasses.asdict(
        ci._compare_generic(ref, ref, other, 1e-5, 1e-3)
    )


@pytest.mark.parametrize("block", [16, 1 << 15])
def test_screened_kink_search_matches_the_full_one(
    monkeypatch: pytest.MonkeyPatch, block: int, impl: str
) -> None:
    monkeypatch.setattr(ci, "BLOCK", block)

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(torch.abs(x) + torch.relu(x - 0.5), 0)

    x = torch.linspace(-1, 1, 9, dtype=F64)  # abs kink at 0 (x[4])
    x[7] = 0.5  # relu kink
    s = ci._setup(f, ["x"], {"x": x}, None, False, "check(f)")
    at, f0, _ = ci._analytic_full(f, s, 1, True)
    ev = ci._Evaluator(ci._flat_fn(f, s.layout, 1), s.consts, True)
    eps = 1e-6
    plus, minus = ev.along(s.x, None, [eps, -eps])
    fused = ci._fused_compare(
        ci._Operands(at, None, at, plus, minus, 2 * f0[:, None, :], eps, True), 1e-5, 1e-3
    )
    assert fused is not None
    new = ci._find_kink_rows(ev, s.x, f0, plus, minus, at, fused[1], eps, 1e-5, 1e-3)
    old = ci._find_kink(ev, s.x, f0, plus, minus, None, at, eps, 1e-5, 1e-3)
    assert new is not None and old is not None
    assert new[1:] == old[1:]
    assert torch.equal(new[0], old[0].any(-1))
    r = finite_difference_check(f, ["x"], {"x": x})
    assert r.non_differentiable and r.kink is not None and r.kink.input_index in ((4,), (7,))


def test_compiled_functions_vector_check_and_wrong_jacobian(impl: str) -> None:
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
# the compiled kernel against the eager code and the generic rules, bit for bit


def _both(ops: ci._Operands, atol: float, rtol: float, monkeypatch: pytest.MonkeyPatch) -> tuple:
    native = ci._fused_compare(ops, atol, rtol)
    with monkeypatch.context() as m:
        m.setattr(_native, "AVAILABLE", False)
        m.setattr(ci, "BLOCK", 97)  # many uneven blocks
        eager = ci._fused_compare(ops, atol, rtol)
    return native, eager


def _same(native: tuple | None, eager: tuple | None) -> None:
    assert (native is None) == (eager is None)
    if native is None or eager is None:
        return
    assert dataclasses.asdict(native[0]) == dataclasses.asdict(eager[0])
    none = torch.zeros(0, 2, dtype=torch.long)
    cat = [torch.cat(x[1]) if x[1] else none for x in (native, eager)]
    assert torch.equal(cat[0], cat[1])


def _fd_operands(shape: tuple[int, int, int], seed: int, style: str) -> ci._Operands:
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
    return ci._Operands(at, None, at, plus, minus, 2 * f0, eps, True)


@pytest.mark.parametrize("style", ["random", "ties", "zeros", "wide", "kinks"])
@pytest.mark.parametrize(
    "shape", [(1, 1, 1), (1, 7, 300), (3, 5, 129), (2, 40, 128), (6, 3, 1), (1, 257, 2)]
)
def test_kernel_matches_eager_and_generic_on_finite_differences(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int, int], style: str
) -> None:
    if not _native.AVAILABLE:
        pytest.skip("the comparison kernel is not built here")
    ops = _fd_operands(shape, seed=sum(shape), style=style)
    native, eager = _both(ops, 1e-5, 1e-3, monkeypatch)
    _same(native, eager)
    assert native is not None
    assert dataclasses.asdict(native[0]) == dataclasses.asdict(
        generic_fd(ops.analytic, ops.plus, ops.minus, ops.eps, 1e-5, 1e-3)  # type: ignore[arg-type]
    )
    if style == "kinks":
        assert native[1], "second differences of 1e-9 pass the kink screen"


@pytest.mark.parametrize("which", ["analytic", "other"])
@pytest.mark.parametrize("style", ["random", "ties", "zeros", "wide"])
def test_kernel_matches_on_claimed_derivatives(
    monkeypatch: pytest.MonkeyPatch, which: str, style: str
) -> None:
    """Claimed checks: the reference is given (autograd's value or the claim), rows
    are in the report's order."""
    if not _native.AVAILABLE:
        pytest.skip("the comparison kernel is not built here")
    fd = _fd_operands((3, 9, 150), seed=5, style=style)
    analytic = fd.analytic
    claim = (fd.plus - fd.minus) / (2 * fd.eps)  # type: ignore[operator]
    ref = analytic if which == "analytic" else claim
    other = claim if which == "analytic" else analytic
    ops = ci._Operands(analytic, ref, other, None, None, None, 0.0, False)
    native, eager = _both(ops, 1e-5, 1e-3, monkeypatch)
    _same(native, eager)
    assert native is not None
    generic = ci._compare_generic(analytic, ref, other, 1e-5, 1e-3)
    assert dataclasses.asdict(native[0]) == dataclasses.asdict(generic)


def test_kernel_takes_strided_points_and_defers_non_finite_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not _native.AVAILABLE:
        pytest.skip("the comparison kernel is not built here")
    whole = _fd_operands((4, 30, 200), seed=9, style="random")
    assert whole.plus is not None and whole.minus is not None
    # a shard's rows of every point: rows contiguous, points 30 rows apart
    at, plus, minus = (t[:, 10:25] for t in (whole.analytic, whole.plus, whole.minus))
    cut = ci._Operands(at, None, at, plus, minus, whole.twice_f0, whole.eps, True)
    assert not at.is_contiguous() and _native.supports(at, plus, minus)
    native, eager = _both(cut, 1e-5, 1e-3, monkeypatch)
    _same(native, eager)
    assert native is not None
    assert dataclasses.asdict(native[0]) == dataclasses.asdict(
        generic_fd(at, plus, minus, whole.eps, 1e-5, 1e-3)
    )
    for bad in (math.nan, math.inf):
        bad_plus = whole.plus.clone()
        bad_plus[2, 17, 150] = bad
        ops = dataclasses.replace(whole, plus=bad_plus)
        native, eager = _both(ops, 1e-5, 1e-3, monkeypatch)
        assert native is None and eager is None  # the generic rules take over
        got = generic_fd(whole.analytic, bad_plus, whole.minus, whole.eps, 1e-5, 1e-3)
        assert not got.passed and got.worst_flat == (2, 150, 17)


@pytest.mark.parametrize("which", ["other", "reference", "plus"])
def test_kernel_reads_transposed_operands_in_place(
    monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    """A claimed Jacobian is compared in forward mode's layout, read across its
    columns without a copy; every operand may come transposed."""
    if not _native.AVAILABLE:
        pytest.skip("the comparison kernel is not built here")
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
        ops = ci._Operands(ref, ref, other, None, None, None, 0.0, False)
        generic = ci._compare_generic(fd.analytic, fd.analytic, claim, 1e-5, 1e-3)
    native, eager = _both(ops, 1e-5, 1e-3, monkeypatch)
    _same(native, eager)
    assert native is not None
    assert dataclasses.asdict(native[0]) == dataclasses.asdict(generic)
