"""A grading job from a YAML file: claimed gradients checked, a Hessian swept.

Submits ``examples/jobs/grading.yaml``, waits with a progress bar, prints each
student's verdict and checks the Hessian sweep against its closed form
``6 diag(x) - 4 I + 2 (1 x^T + x 1^T) + 2 sum(x) I``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import gradserve

JOB_FILE = Path(__file__).parent / "jobs" / "grading.yaml"


def hessian(x: np.ndarray) -> np.ndarray:
    n = x.shape[-1]
    ones = np.ones(n)
    return (
        6 * np.diag(x)
        - 4 * np.eye(n)
        + 2 * (np.outer(ones, x) + np.outer(x, ones))
        + (2 * x.sum() * np.eye(n))
    )


def run(client: gradserve.Client) -> None:
    job = client.submit(JOB_FILE)
    status = job.wait(timeout=300, progress=True)
    print(f"job {job.id}: {status.state}, {status.tasks_failed} of {status.tasks_total} failed")
    verdicts = {}
    for result in job.results():
        if result.error is not None:
            verdicts[result.task_id] = "error"
            print(f"{result.task_id:14s} ERROR {result.error_code}: {result.error.splitlines()[0]}")
            continue
        assert result.check is not None
        verdicts[result.task_id] = "pass" if result.check.passed else "fail"
        print(f"{result.task_id:14s} {result.check.message.split(': ')[0]}")
        if result.task_id == "hessian-sweep":
            x = np.random.default_rng(11).uniform(-2, 2, size=(1000, 3))
            expected = np.stack([hessian(p) for p in x])
            np.testing.assert_allclose(result.outputs["hessian"], expected, atol=1e-10)
    assert status.state == "succeeded"
    assert verdicts == {
        "alice": "pass", "bob": "fail", "carol": "pass", "dave": "fail", "erin": "error",
        "hessian-sweep": "pass",
    }  # fmt: skip


def test_example(client: gradserve.Client) -> None:
    run(client)


if __name__ == "__main__":
    with gradserve.Client() as c:
        run(c)
