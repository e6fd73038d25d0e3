"""Points and layout: the checked inputs as one flat float64 vector per point.

The ``wrt`` inputs of one point are flattened and concatenated into a vector of
``n`` float64 numbers; the function's output (order 1) or its gradient (order 2) is
flattened into ``m`` numbers; a derivative is an ``(N, m, n)`` array over ``N``
points (or its transpose). Unbatched checks run as one point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from ..ops import OpsError, check_finite
from ..ops.plan import check_names
from ..transforms import Fn, measure
from .options import DEFAULT_OPTIONS, CheckOptions

F64 = torch.float64
TINY = 1e-300
UNIT_ROUNDOFF = 2.0**-52


class CheckError(OpsError):
    """A check that cannot be run as asked; the message starts with the call form."""


@dataclass(frozen=True)
class Layout:
    names: tuple[str, ...]
    wrt: tuple[str, ...]
    wrt_idx: tuple[int, ...]
    const_idx: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]  # per wrt input, per point
    sizes: tuple[int, ...]
    offsets: tuple[int, ...]

    @property
    def n(self) -> int:
        return sum(self.sizes)

    def locate(self, flat: int) -> tuple[str, tuple[int, ...]]:
        """Input name and index within it of flat column ``flat``."""
        for w, shape, size, off in zip(
            self.wrt, self.shapes, self.sizes, self.offsets, strict=True
        ):
            if off <= flat < off + size:
                return w, unravel(flat - off, shape)
        raise IndexError(flat)

    def unflatten(self, xflat: torch.Tensor) -> list[torch.Tensor]:
        return [
            xflat[off : off + size].reshape(shape)
            for shape, size, off in zip(self.shapes, self.sizes, self.offsets, strict=True)
        ]


def unravel(flat: int, shape: Sequence[int]) -> tuple[int, ...]:
    idx = []
    for s in reversed(shape):
        idx.append(flat % s)
        flat //= s
    return tuple(reversed(idx))


def layout(names: Sequence[str], wrt: Sequence[str], point0: Mapping[str, torch.Tensor]) -> Layout:
    shapes = tuple(tuple(int(s) for s in point0[w].shape) for w in wrt)
    sizes = tuple(math.prod(s) for s in shapes)
    offsets = tuple(sum(sizes[:i]) for i in range(len(sizes)))
    wrt_idx = tuple(names.index(w) for w in wrt)
    const_idx = tuple(i for i in range(len(names)) if i not in wrt_idx)
    return Layout(tuple(names), tuple(wrt), wrt_idx, const_idx, shapes, sizes, offsets)


def shape_txt(shape: Sequence[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def unit_rows(k: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """``k`` random unit vectors of length ``dim`` (float64, from ``gen``)."""
    u = torch.randn(k, dim, generator=gen, dtype=F64)
    return u / u.norm(dim=1, keepdim=True).clamp_min(TINY)


def _to64(inputs: Mapping[str, torch.Tensor], batched: bool) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in inputs.items():
        t = v.to(F64) if v.is_floating_point() else v
        out[k] = t if batched else t.unsqueeze(0)
    return out


def _input_dtype(inputs: Mapping[str, torch.Tensor], wrt: Sequence[str]) -> str:
    dtypes = {str(inputs[w].dtype).removeprefix("torch.") for w in wrt}
    narrow = {"float32", "float16", "bfloat16"}
    return "float32" if dtypes & narrow else "float64"


def _resolve_wrt(
    call: str, names: Sequence[str], inputs: Mapping[str, torch.Tensor], wrt: Sequence[str] | None
) -> tuple[str, ...]:
    check_names(call, names, inputs, CheckError)
    chosen = tuple(names) if wrt is None else tuple(wrt)
    unknown = [w for w in chosen if w not in names]
    if unknown:
        raise CheckError(f"{call}: wrt names unknown input(s) {', '.join(unknown)}")
    if not chosen:
        raise CheckError(f"{call}: no inputs to check derivatives with respect to")
    for w in chosen:
        if not inputs[w].is_floating_point():
            raise CheckError(f"{call}: input '{w}' has dtype {inputs[w].dtype}; checks need floats")
    return chosen


@dataclass
class Setup:
    """One check's inputs, validated and laid out, with its tuning values."""

    call: str
    layout: Layout
    x: torch.Tensor  # (N, n) float64
    consts: list[torch.Tensor]
    inputs64: dict[str, torch.Tensor]
    n_points: int
    out_shape: tuple[int, ...]
    dtype: str
    peak: int = 0  # the function's largest intermediate at one point, in elements
    options: CheckOptions = DEFAULT_OPTIONS

    def subset(self, points: list[int]) -> Setup:
        """The same check at some of the points."""
        idx = torch.tensor(points, device=self.x.device)
        return replace(
            self,
            x=self.x[idx],
            consts=[c[idx] for c in self.consts],
            inputs64={k: v[idx] for k, v in self.inputs64.items()},
            n_points=len(points),
        )


def setup(
    fn: Fn,
    input_names: Sequence[str],
    inputs: Mapping[str, torch.Tensor],
    wrt: Sequence[str] | None,
    batched: bool,
    call: str,
    options: CheckOptions = DEFAULT_OPTIONS,
) -> Setup:
    """Validate a check's inputs and lay them out; ``call`` starts every error."""
    names = tuple(input_names)
    wrt_t = _resolve_wrt(call, names, inputs, wrt)
    check_finite(call, names, inputs, batched)
    if batched:
        sizes = {int(inputs[n].shape[0]) if inputs[n].ndim else -1 for n in names}
        if len(sizes) != 1 or -1 in sizes:
            raise CheckError(
                f"{call}: batched inputs must share a leading point dimension: "
                + ", ".join(f"{n}: {tuple(inputs[n].shape)}" for n in names)
            )
        if 0 in sizes:
            raise CheckError(f"{call}: batched=True with no points (leading dimension 0)")
    x64 = _to64(inputs, batched)
    n_points = int(x64[names[0]].shape[0]) if names else 1
    point0 = {k: v[0] for k, v in x64.items()}
    lay = layout(names, wrt_t, point0)
    if lay.n == 0:
        raise CheckError(
            f"{call}: nothing to check: "
            + ", ".join(f"{w} has shape {shape_txt(point0[w].shape)}" for w in wrt_t)
            + " (no elements to differentiate with respect to)"
        )
    x = torch.cat([x64[w].reshape(n_points, -1) for w in wrt_t], dim=1)
    consts = [x64[names[i]] for i in lay.const_idx]
    with torch.no_grad():
        out0, peak = measure(fn, [point0[k] for k in names])
    if not out0.is_floating_point():
        raise CheckError(
            f"{call}: f returns dtype {out0.dtype}; checks need a floating-point output"
        )
    if out0.numel() == 0:
        raise CheckError(
            f"{call}: nothing to check: f returns shape {shape_txt(out0.shape)} "
            "(no elements to differentiate)"
        )
    return Setup(
        call=call,
        layout=lay,
        x=x,
        consts=consts,
        inputs64=x64,
        n_points=n_points,
        out_shape=tuple(int(s) for s in out0.shape),
        dtype=_input_dtype(inputs, wrt_t),
        peak=peak,
        options=options,
    )
