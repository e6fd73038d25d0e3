"""Declared distributions for sampled points (checks and job tasks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gradserve._suggest import unknown_key
from gradserve.names import DTYPES
from gradserve.v1 import gradserve_pb2 as pb


@dataclass(frozen=True)
class Sample:
    """``count`` points of ``shape`` drawn from a distribution, reproducible by ``seed``.

    >>> s = uniform(-1.0, 1.0, shape=(3,), count=10, seed=7)
    >>> (s.dist, s.params, s.shape, s.count)
    ('uniform', (-1.0, 1.0), (3,), 10)
    """

    dist: str
    params: tuple[float, float]
    shape: tuple[int, ...]
    count: int
    seed: int = 0
    dtype: str | None = None

    def _to_proto(self) -> pb.SampleSpec:
        if self.dist == "uniform":
            low, high = self.params
            distribution = pb.Distribution(uniform=pb.Uniform(low=low, high=high))
        elif self.dist == "normal":
            mean, std = self.params
            distribution = pb.Distribution(normal=pb.Normal(mean=mean, std=std))
        else:
            raise ValueError(f"sample: unknown distribution {self.dist!r}; use uniform or normal")
        spec = pb.SampleSpec(
            distribution=distribution, shape=list(self.shape), count=self.count, seed=self.seed
        )
        if self.dtype is not None:
            spec.dtype = DTYPES[self.dtype]
        return spec


def uniform(
    low: float, high: float, *, shape: Sequence[int] = (), count: int = 1, seed: int = 0
) -> Sample:
    """Points uniform in ``[low, high)``."""
    return Sample("uniform", (float(low), float(high)), tuple(int(d) for d in shape), count, seed)


def normal(
    mean: float = 0.0, std: float = 1.0, *, shape: Sequence[int] = (), count: int = 1, seed: int = 0
) -> Sample:
    """Points from a normal distribution."""
    return Sample("normal", (float(mean), float(std)), tuple(int(d) for d in shape), count, seed)


def sample_from_mapping(spec: Mapping[str, Any], where: str = "sample") -> Sample:
    """A Sample from the job-file form ``{dist: normal, mean: 0, std: 1, shape: [4], ...}``."""
    known = {"dist", "low", "high", "mean", "std", "shape", "count", "seed", "dtype"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"{where}: {unknown_key(unknown[0], known)}")
    dist = spec.get("dist", "uniform")
    shape = tuple(int(d) for d in spec.get("shape", ()))
    count = int(spec.get("count", 1))
    seed = int(spec.get("seed", 0))
    if dist == "uniform":
        params = (float(spec.get("low", 0.0)), float(spec.get("high", 1.0)))
    elif dist == "normal":
        params = (float(spec.get("mean", 0.0)), float(spec.get("std", 1.0)))
    else:
        raise ValueError(f"{where}: dist must be uniform or normal, not {dist!r}")
    dtype = spec.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"{where}: dtype must be one of {list(DTYPES)}, not {dtype!r}")
    return Sample(dist, params, shape, count, seed, dtype)
