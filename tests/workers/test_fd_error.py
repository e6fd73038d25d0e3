"""The finite difference's own error (Richardson, h and h/2) beside the worst element.

Measured on the gradcheck parity corpus (test_check_parity.py): every wrong
backward is a real disagreement, beyond the difference's error; every right one
checked at a tolerance tighter than finite differences can resolve (the
borderline failures of a strict check) is named noise; no verdict changes.
"""

from __future__ import annotations

import torch
from test_check_parity import CORPUS, as_function

from gradserve_workers.check import finite_difference_check
from gradserve_workers.report import beyond_fd_error

# finite_difference_check attaches the estimate; the verdicts are gradcheck's
# (test_check_parity.py asserts them), the estimate only explains a failure.
# far tighter than a central difference at eps=1e-6 resolves (~1e-10 relative at best)
STRICT = {"atol": 1e-13, "rtol": 1e-11}


def _checked(f, claim, low, high, **tolerances):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(11)
    x = low + (high - low) * torch.rand(4, generator=g, dtype=torch.float64)
    fn = as_function(f, claim)
    return finite_difference_check(fn, ["x"], {"x": x}, **tolerances)


def test_wrong_backwards_are_beyond_the_difference_s_error() -> None:
    for name, f, _, bad, low, high in CORPUS:
        estimated = _checked(f, bad, low, high)
        assert not estimated.passed, name
        assert estimated.worst is not None and estimated.worst.fd_error is not None
        assert beyond_fd_error(estimated.worst), (name, estimated.message)
        assert "a real disagreement" in estimated.message


def test_strict_tolerances_fail_right_backwards_within_the_noise() -> None:
    noise = 0
    for name, f, good, _, low, high in CORPUS:
        assert _checked(f, good, low, high).passed, name
        estimated = _checked(f, good, low, high, **STRICT)
        if not estimated.passed:
            assert estimated.worst is not None
            if name != "square_tiny_off":  # a real 1e-6 error, beyond the noise
                assert not beyond_fd_error(estimated.worst), (name, estimated.message)
                assert "within the noise of finite differences" in estimated.message
                noise += 1
    assert noise >= len(CORPUS) - 5  # most strict failures are noise, and said to be


def test_the_estimate_reaches_the_client(client) -> None:  # type: ignore[no-untyped-def]
    report = client.check("sum(exp(3 * x))", {"x": [0.5, 1.0]}, atol=1e-12, rtol=1e-12)
    assert not report.passed
    assert report.worst.fd_error is not None and report.worst.beyond_fd_error is False
    assert "within the noise of finite differences" in report.message
    report = client.check("sum(x ** 3)", {"x": [1.0, 2.0]})
    assert report.passed and report.worst.fd_error is not None
