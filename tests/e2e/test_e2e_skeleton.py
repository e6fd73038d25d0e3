"""The walking skeleton end to end: SDK -> real server -> real Ray actors -> back."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import gradserve


def test_grad_of_quadratic_is_4x(client: gradserve.Client) -> None:
    g = client.grad("2 * dot(x, x)", {"x": [0.0, 1.0, 2.0, 3.0]})
    np.testing.assert_allclose(g, [0.0, 4.0, 8.0, 12.0])


def test_bare_array_binds_to_the_only_input(client: gradserve.Client) -> None:
    np.testing.assert_allclose(client.value("sum(x * x)", [1.0, 2.0]), 5.0)


def test_batched_grad_over_10000_points(client: gradserve.Client) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10_000, 4))
    result = client.compute("2 * dot(x, x)", {"x": x}, ["grad"], batched=True)
    assert result["grad"].shape == (10_000, 4)
    np.testing.assert_allclose(result["grad"], 4 * x, rtol=1e-12)
    assert result.metadata.execution_path == "vmap"
    assert result.metadata.points == 10_000


def test_value_and_grad_of_several_inputs(client: gradserve.Client) -> None:
    x, y = np.array([1.0, 2.0]), np.array([3.0, -1.0])
    result = client.compute("dot(x, y) + sum(sin(x))", {"x": x, "y": y}, ["value", "grad"])
    np.testing.assert_allclose(result["value"], x @ y + np.sin(x).sum())
    np.testing.assert_allclose(result["grad"]["x"], y + np.cos(x))
    np.testing.assert_allclose(result["grad"]["y"], x)


def test_float32_stays_float32(client: gradserve.Client) -> None:
    g = client.grad("sum(exp(x))", {"x": np.array([0.0, 1.0], dtype=np.float32)})
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, np.exp([0.0, 1.0]), rtol=1e-6)


def test_syntax_error_names_line_and_column_and_server_keeps_serving(
    client: gradserve.Client,
) -> None:
    with pytest.raises(gradserve.InvalidSpecError) as info:
        client.grad("sum(x *)", {"x": [1.0]})
    assert info.value.line == 1
    assert info.value.column >= 1
    assert "line 1" in str(info.value)
    np.testing.assert_allclose(client.grad("sum(x)", {"x": [1.0, 2.0]}), [1.0, 1.0])


def test_missing_input_is_invalid_argument(client: gradserve.Client) -> None:
    with pytest.raises(gradserve.InvalidArgumentError, match="'y' is missing"):
        client.value("x + y", {"x": [1.0]})


def test_nan_input_is_reported_not_propagated(client: gradserve.Client) -> None:
    with pytest.raises(gradserve.InvalidArgumentError, match="NaN at point 1"):
        client.grad("sum(x)", {"x": [[1.0], [float("nan")]]}, batched=True)


def test_async_client_matches_sync(address: str) -> None:
    async def run() -> np.ndarray:
        async with gradserve.AsyncClient(address) as client:
            results = await asyncio.gather(
                *(client.grad("2 * dot(x, x)", {"x": [float(i), 1.0]}) for i in range(4))
            )
            with pytest.raises(gradserve.InvalidSpecError):
                await client.value("sin(", {"x": [1.0]})
            return np.stack(results)

    np.testing.assert_allclose(asyncio.run(run()), [[4.0 * i, 4.0] for i in range(4)])


def test_timeout_is_a_deadline(client: gradserve.Client) -> None:
    with pytest.raises(gradserve.DeadlineExceededError):
        client.value("sum(x)", {"x": np.ones((200_000, 3))}, batched=True, timeout=0.001)


def test_server_info(client: gradserve.Client) -> None:
    info = client.server_info()
    assert info.workers == 2
    assert "sin" in {f.name for f in info.functions}
    assert info.limits["max_loop_iterations"] > 0
