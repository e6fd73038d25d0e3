"""The worker's operations and checks on a CUDA device agree with the CPU.

Runs where torch sees a GPU (a session's device check: ``python3 -m pytest --noconftest
tests/workers/test_cuda.py`` with ``PYTHONPATH=workers``; no Ray needed); a CPU-only
machine skips it. The CPU results are the oracle, and closed forms where there are.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from gradserve_workers import transforms
from gradserve_workers.actor import GradActor
from gradserve_workers.check import CheckOptions, claimed_check, finite_difference_check
from gradserve_workers.lang import compile_function
from gradserve_workers.ops import OpsRequest, compute
from gradserve_workers.tasks import CheckSpec, ComputeSpec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

F64 = torch.float64
CUDA = torch.device("cuda")

FUNCTIONS = [
    "sum(sin(x) * x)",
    "cumsum(sin(x))",
    "sum(softmax(x, dim=0) * x) + logsumexp(x, dim=0)",
    "def f(x):\n    y = x[1:] - x[:-1]\n    return sum(tanh(y) ** 2) + norm(x)",
    "def f(x):\n    if sum(x) > 0:\n        return sum(x * x)\n    return sum(exp(x))",
]


def points(n_points: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1.5, 1.5, (n_points, n)))


SCALAR = [f for f in FUNCTIONS if not f.startswith("cumsum")]
OPS_CASES = [(f, ops) for f in SCALAR for ops in [("value", "grad"), ("hessian",)]] + [
    (f, ("jacobian",)) for f in FUNCTIONS
]


@pytest.mark.parametrize(("source", "ops"), OPS_CASES)
def test_batched_ops_agree_with_cpu(source: str, ops: tuple[str, ...]) -> None:
    fn = compile_function(source)
    x = points(16, 8)
    cpu = compute(fn, ["x"], {"x": x}, OpsRequest(ops=ops, batched=True))
    gpu = compute(fn, ["x"], {"x": x.to(CUDA)}, OpsRequest(ops=ops, batched=True))
    assert gpu.vmapped == cpu.vmapped
    for op, by_key in cpu.outputs.items():
        for key, want in by_key.items():
            got = gpu.outputs[op][key]
            assert got.device.type == "cuda"
            torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("source", FUNCTIONS)
@pytest.mark.parametrize("n", [50, 300])  # dense perturbations, then one-hot ones
def test_full_checks_agree_with_cpu(source: str, n: int) -> None:
    fn = compile_function(source)
    x = points(1, n)[0]
    cpu = finite_difference_check(fn, ["x"], {"x": x}, fast=False)
    gpu = finite_difference_check(fn, ["x"], {"x": x.to(CUDA)}, fast=False)
    assert gpu.passed == cpu.passed and gpu.passed, gpu.message
    assert gpu.max_abs_error < 1e-5 and cpu.max_abs_error < 1e-5


def test_kink_found_on_cuda_one_hot() -> None:
    fn = compile_function("sum(abs(x)) + sum(x ** 2)")
    x = torch.linspace(-1.0, 1.0, 301, dtype=F64, device=CUDA)  # x[150] == 0
    r = finite_difference_check(fn, ["x"], {"x": x}, fast=False)
    assert not r.passed and r.non_differentiable
    assert r.kink is not None and r.kink.input_index == (150,)


def test_fast_mode_and_a_wrong_claim_on_cuda() -> None:
    fn = compile_function("sum(sin(x) * x)")
    x = points(1, 3000)[0].to(CUDA)
    fast = finite_difference_check(fn, ["x"], {"x": x})
    assert fast.mode == "fast" and fast.passed, fast.message
    good = claimed_check(
        fn, {"x": lambda x: torch.cos(x) * x + torch.sin(x)}, ["x"], {"x": x}, kind="grad"
    )
    assert good.passed, good.message
    bad = claimed_check(fn, {"x": lambda x: torch.cos(x) * x}, ["x"], {"x": x}, kind="grad")
    assert not bad.passed and bad.worst is not None
    i = bad.worst.input_index[0]
    assert bad.worst.analytic == pytest.approx(float(torch.cos(x[i]) * x[i] + torch.sin(x[i])))


def test_float32_inputs_on_cuda_do_not_fail_falsely() -> None:
    fn = compile_function("sum(exp(x) * sin(x))")
    x = points(1, 300)[0].to(torch.float32).to(CUDA)
    r = finite_difference_check(fn, ["x"], {"x": x}, fast=False)
    assert r.passed and r.dtype == "float32", r.message


def test_chunked_batches_agree_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches split by the largest intermediate give the same numbers on the GPU."""
    fn = compile_function("sum(outer(x, x)) + sum(sin(x))")
    x = points(12, 40).to(CUDA)
    whole = compute(fn, ["x"], {"x": x}, OpsRequest(ops=("grad",), batched=True))
    monkeypatch.setattr(transforms, "BATCH_ELEMENTS", 40 * 40 * 3 * 2)  # 2 points a chunk
    chunked = compute(fn, ["x"], {"x": x}, OpsRequest(ops=("grad",), batched=True))
    torch.testing.assert_close(chunked.outputs["grad"]["x"], whole.outputs["grad"]["x"])
    expected = 2 * x.sum(dim=1, keepdim=True) + torch.cos(x)
    torch.testing.assert_close(whole.outputs["grad"]["x"], expected)
    small = CheckOptions(eval_budget=2 * 1600 * 3)
    r = finite_difference_check(fn, ["x"], {"x": x[0]}, fast=False, options=small)
    assert r.passed, r.message


def test_actor_on_cuda_matches_cpu_actor() -> None:
    """The worker class itself (no Ray) with device="cuda": numpy in, numpy out."""
    src = "sum(sin(x) * x) + 2 * dot(x, x)"
    digest = hashlib.sha256(src.encode()).hexdigest()
    x = points(64, 5).numpy()
    spec = ComputeSpec(src, digest, ("value", "grad"), None, True, "float64")
    gpu, cpu = GradActor(device="cuda"), GradActor(device="cpu")
    assert gpu.info()["device"].startswith("cuda")
    a = gpu.compute(spec, {"x": x}, 0, 64)
    b = cpu.compute(spec, {"x": x}, 0, 64)
    assert a.error is None and b.error is None
    np.testing.assert_allclose(a.outputs["grad"]["x"], b.outputs["grad"]["x"], rtol=1e-10)
    np.testing.assert_allclose(a.outputs["grad"]["x"], np.cos(x) * x + np.sin(x) + 4 * x)
    check = CheckSpec(src, digest, None, False, "float64", "finite_difference")
    r = gpu.check(check, {"x": points(1, 300)[0].numpy()}, 0, 1)
    assert r.error is None and r.report is not None and r.report.passed


@pytest.mark.parametrize("source", ["cumsum(sin(x))", "softmax(x, 0) * 3", "x * sum(x ** 2)"])
def test_forward_mode_and_shards_on_cuda(source: str) -> None:
    """Forward-mode Jacobians (reverse mode held to them) and checks split by input
    elements run on the device and merge into the CPU's whole report."""
    from gradserve_workers.check import merge_shards

    forward_always = CheckOptions(forward_min_elements=0)
    fn = compile_function(source)
    x = points(1, 400, seed=3)[0]
    x[17] = 0.0
    cpu = finite_difference_check(fn, ["x"], {"x": x}, options=forward_always)
    xg = x.to(CUDA)
    whole = finite_difference_check(fn, ["x"], {"x": xg}, options=forward_always)
    shards = [
        finite_difference_check(fn, ["x"], {"x": xg}, columns=c, options=forward_always)
        for c in [(0, 150), (150, 400)]
    ]
    merged = merge_shards(shards)
    for r in (whole, merged):
        assert r.passed == cpu.passed and r.passed, r.message
        assert r.worst is not None and cpu.worst is not None
        assert r.max_abs_error == pytest.approx(cpu.max_abs_error, rel=1e-3, abs=1e-12)
    claim = compile_function("diag(cos(x))")  # wrong below the diagonal for cumsum(sin(x))
    if source.startswith("cumsum"):
        parts = [
            claimed_check(
                fn,
                {"x": claim},
                ["x"],
                {"x": xg},
                kind="jacobian",
                columns=c,
                options=forward_always,
            )
            for c in [(0, 200), (200, 400)]
        ]
        on_cpu = claimed_check(
            fn, {"x": claim}, ["x"], {"x": x}, kind="jacobian", options=forward_always
        )
        got = merge_shards(parts)
        assert not got.passed and got.worst is not None and on_cpu.worst is not None
        assert got.worst.input_index == on_cpu.worst.input_index
        assert got.worst.output_index == on_cpu.worst.output_index
