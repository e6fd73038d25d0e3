"""Private: evaluate a function at ``x + s·e_i`` for every coordinate ``i`` without
redoing the work the perturbed points share.

Central differences need ``f`` at ``2n`` points that each differ from ``x`` in one
element. Evaluated densely that is ``2n`` evaluations of size ``n``: O(n²) work and
memory traffic, most of it recomputing elements no perturbation touched. Here every
intermediate value starts as a *one-hot batch*: one base tensor (the value at ``x``)
plus, per perturbed point (row), the one flat position that differs and its value.
Element-wise operations then cost O(n + rows) instead of O(n·rows); full reductions
(``sum``, ``mean``, ``dot``) turn into one dense number per row. Any other operation
materialises the batch and runs under ``torch.func.vmap``, so results are the same
as the dense evaluation up to round-off (the tests compare the two on the whole
function table).

The values are ``torch.Tensor`` wrapper subclasses that present the *per-point*
shape, so the function language runs on them unchanged; :class:`Unsupported` (or
any error) makes the caller fall back to the dense evaluation.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils import _pytree as pytree

__all__ = ["Unsupported", "evaluate", "one_hot_rows"]


class Unsupported(RuntimeError):
    """The one-hot evaluation cannot run this (data-dependent control flow, in-place
    writes): evaluate densely instead."""


class _Savings:
    """Whether this evaluation has run a one-hot rule yet (see :func:`evaluate`)."""

    __slots__ = ("refused", "shared")

    def __init__(self) -> None:
        self.shared = False
        self.refused: str | None = None


_SAVINGS: contextvars.ContextVar[_Savings | None] = contextvars.ContextVar(
    "gradserve_one_hot_savings", default=None
)


def _refuse(message: str) -> Unsupported:
    """:class:`Unsupported`, remembered for :func:`evaluate` (the function language
    re-raises every error as its own, without the cause)."""
    state = _SAVINGS.get()
    if state is not None and state.refused is None:
        state.refused = message
    return Unsupported(message)


def _functions(names: str) -> set[Any]:
    """The torch functions, Tensor methods and ``torch.nn.functional`` /
    ``torch.special`` functions of these names, by identity (so nothing else that
    happens to share a name matches)."""
    found: set[Any] = set()
    for name in names.split():
        for where in (torch, torch.Tensor, torch.nn.functional, torch.special):
            f = getattr(where, name, None)
            if f is not None:
                found.add(f)
    return found


# element-wise: each output element depends only on the same-position elements of
# the (broadcast) inputs. An allow-list: anything else takes the dense route.
_POINTWISE = _functions(
    """abs absolute acos arccos acosh asin arcsin asinh atan arctan atanh atan2 arctan2
    ceil clamp clamp_min clamp_max clip copysign cos cosh deg2rad digamma erf erfc erfinv
    exp exp2 expm1 float_power floor fmax fmin fmod frac heaviside hypot lerp lgamma log
    log10 log1p log2 logaddexp logaddexp2 logical_and logical_not logical_or logical_xor
    logit maximum minimum nan_to_num neg negative positive pow rad2deg reciprocal relu
    remainder round rsqrt sgn sigmoid sign signbit sin sinc sinh sqrt square tan tanh
    trunc xlogy add sub subtract mul multiply div divide true_divide floor_divide
    eq ne lt le gt ge greater less greater_equal less_equal not_equal
    softplus silu gelu elu selu celu leaky_relu logsigmoid hardtanh relu6 mish
    __add__ __radd__ __sub__ __rsub__ __mul__ __rmul__ __truediv__ __rtruediv__ __div__
    __rdiv__ __floordiv__ __rfloordiv__ __mod__ __rmod__ __pow__ __rpow__ __neg__ __pos__
    __abs__ __lt__ __le__ __gt__ __ge__ __eq__ __ne__ __and__ __rand__ __or__ __ror__
    __xor__ __rxor__ __invert__"""
)
_WHERE = _functions("where")
# order-preserving reshapes: every element keeps its row-major flat index
_RESHAPES = _functions("reshape view flatten squeeze unsqueeze contiguous clone detach")
_SUMS = _functions("sum mean")
_MEANS = _functions("mean")
_DOT = _functions("dot inner vdot")
_MATMUL = _functions("matmul __matmul__ __rmatmul__")
_CASTS = _functions("to double float as_tensor")
# reading a value into Python: the control flow depends on the data
_SCALAR_READS = _functions(
    "item tolist __bool__ __float__ __int__ __index__ __complex__ __array__ numpy"
)
_METADATA = _functions(
    """dim ndimension size numel nelement is_floating_point is_complex element_size
    __len__ get_device is_contiguous"""
)
_PROPERTIES = {
    "shape", "dtype", "device", "ndim", "layout", "requires_grad", "is_cuda", "is_cpu",
    "is_sparse", "is_quantized", "is_meta", "is_nested", "grad_fn", "is_leaf", "names",
}  # fmt: skip


def _is_property(func: Any) -> bool:
    owner = getattr(func, "__self__", None)
    return getattr(func, "__name__", "") == "__get__" and (
        getattr(owner, "__name__", "") in _PROPERTIES
    )


_IN_PLACE_OPERATORS = {
    "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
    "__ipow__", "__imatmul__", "__iand__", "__ior__", "__ixor__", "__ilshift__",
    "__irshift__", "__setitem__",
}  # fmt: skip


def _writes(name: str) -> bool:
    return (name.endswith("_") and not name.endswith("__")) or name in _IN_PLACE_OPERATORS


class _Batch(torch.Tensor):
    """A batch of ``rows`` tensors of the per-point shape ``self.shape``.

    One-hot form (``dense is None``): row r equals ``base`` except at flat position
    ``idx[r]`` (``-1``: nowhere), where it is ``val[r]``. Dense form: ``dense`` is
    ``(rows, *shape)``. It has no storage of its own: torch functions reach it
    through ``__torch_function__``, and whatever gets below that is refused.
    """

    base: torch.Tensor | None
    idx: torch.Tensor | None
    val: torch.Tensor | None
    dense: torch.Tensor | None
    rows: int

    @staticmethod
    def __new__(
        cls,
        shape: Sequence[int],
        dtype: torch.dtype,
        device: torch.device,
        rows: int,
        *,
        base: torch.Tensor | None = None,
        idx: torch.Tensor | None = None,
        val: torch.Tensor | None = None,
        dense: torch.Tensor | None = None,
    ) -> _Batch:
        t = torch.Tensor._make_wrapper_subclass(cls, tuple(shape), dtype=dtype, device=device)
        t.base, t.idx, t.val, t.dense, t.rows = base, idx, val, dense, rows
        return t  # type: ignore[no-any-return]

    def __repr__(self, *, tensor_contents: Any = None) -> Any:  # type: ignore[override]
        form = "dense" if self.dense is not None else "one-hot"
        return f"_Batch({form}, rows={self.rows}, shape={tuple(self.shape)})"

    @classmethod
    def one_hot(cls, base: torch.Tensor, idx: torch.Tensor, val: torch.Tensor) -> _Batch:
        rows = int(idx.shape[0])
        return cls(base.shape, base.dtype, base.device, rows, base=base, idx=idx, val=val)

    @classmethod
    def of_dense(cls, dense: torch.Tensor) -> _Batch:
        return cls(dense.shape[1:], dense.dtype, dense.device, int(dense.shape[0]), dense=dense)

    def materialise(self) -> torch.Tensor:
        """``(rows, *shape)``."""
        if self.dense is not None:
            return self.dense
        assert self.base is not None and self.idx is not None and self.val is not None
        flat = self.base.reshape(1, -1).expand(self.rows, -1).clone()
        hit = torch.nonzero(self.idx >= 0).reshape(-1)
        flat[hit, self.idx[hit]] = self.val[hit].to(flat.dtype)
        return flat.reshape(self.rows, *self.base.shape)

    @classmethod
    def __torch_function__(
        cls,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _METADATA or _is_property(func):
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if func in _SCALAR_READS:
            raise _refuse(f"{name} needs a value")
        if _writes(name):
            raise _refuse(f"{name} writes in place")
        batches = _batches_in(args, kwargs)
        if any(b.rows != batches[0].rows for b in batches):
            raise _refuse("batches of different sizes")
        one_hot = [b for b in batches if b.dense is None]
        if len(one_hot) == len(batches):
            out = _one_hot_op(func, args, kwargs, batches)
            if out is not None:
                _note_saving(func)
                return out
        if one_hot:
            # materialising: worth it only once one-hot rules have saved work (an
            # element-wise head before a cumsum); otherwise the dense batch from
            # the start is cheaper
            savings = _SAVINGS.get()
            if savings is not None and not savings.shared:
                raise _refuse(f"{name or func} needs every row")
        out = _dense_rule(func, args, kwargs, batches)
        if out is not None:
            return out
        flat, spec = pytree.tree_flatten((args, kwargs))
        return _dense_op(func, flat, spec)

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        raise _refuse(f"{func} reached the batch itself")


def _batches_in(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[_Batch]:
    """The batches among the arguments (one level of lists and tuples, as torch's
    functions take them; deeper nesting goes through pytree)."""
    found: list[_Batch] = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, _Batch):
            found.append(a)
        elif isinstance(a, list | tuple):
            found.extend(b for b in pytree.tree_leaves(a) if isinstance(b, _Batch))
    return found


def _map_args(
    f: Callable[[Any], Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``f`` applied to every argument (element-wise ops take no nested ones)."""
    return tuple(f(a) for a in args), {k: f(v) for k, v in kwargs.items()}


def _note_saving(func: Any) -> None:
    """Reshapes, slices and casts share nothing worth keeping; the other rules do."""
    savings = _SAVINGS.get()
    if savings is not None and func not in _RESHAPES and func not in _CASTS:
        savings.shared = savings.shared or func is not torch.Tensor.__getitem__


def _flat_gather(t: torch.Tensor, shape: torch.Size, idx: torch.Tensor) -> torch.Tensor:
    """``t`` broadcast to ``shape``, at flat positions ``idx`` (clamped to >= 0)."""
    return torch.broadcast_to(t, shape).reshape(-1)[idx.clamp_min(0)]


def _one_hot_op(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], batches: list[_Batch]
) -> _Batch | None:
    """The op on one-hot batches, staying one-hot or reducing to dense rows; ``None``
    when it has no one-hot rule (the caller materialises)."""
    b = batches[0]
    if any(x.base is None or x.base.numel() == 0 for x in batches):
        return None  # nothing to gather from: the dense route handles empty tensors
    alone = len(batches) == 1 and bool(args) and args[0] is b
    if alone:
        assert b.base is not None and b.idx is not None and b.val is not None
        if func in _RESHAPES and not kwargs and all(_shape_arg(a) for a in args[1:]):
            base = func(b.base, *args[1:])
            if not isinstance(base, torch.Tensor) or base.numel() != b.base.numel():
                return None
            return _Batch.one_hot(base, b.idx, b.val)
        if func in _CASTS:
            base = func(b.base, *args[1:], **kwargs)
            if base.shape != b.base.shape or base.device != b.base.device:
                return None
            return _Batch.one_hot(base, b.idx, func(b.val, *args[1:], **kwargs))
        if func is torch.Tensor.__getitem__ and len(args) == 2:
            return _getitem(b, args[1])
        if func in _SUMS:
            return _full_sum(func, b, args[1:], kwargs)
    if func in _DOT and len(args) == 2 and not kwargs:
        return _dot(args[0], args[1])
    if func in _MATMUL and len(args) == 2 and not kwargs and len(batches) == 1:
        left, right = (args[1], args[0]) if func is torch.Tensor.__rmatmul__ else args
        return _matmul(left, right)
    if func in _POINTWISE or (func in _WHERE and len(args) == 3 and not kwargs):
        return _pointwise(func, args, kwargs, batches)
    return None


def _common_idx(batches: list[_Batch]) -> torch.Tensor | None:
    """Per row, the one position any batch changes; ``None`` when two batches change
    different positions in the same row (the result would differ in two places)."""
    idx = batches[0].idx
    assert idx is not None
    for b in batches[1:]:
        other = b.idx
        assert other is not None
        if other is idx:
            continue
        if bool(((idx >= 0) & (other >= 0) & (idx != other)).any()):
            return None
        idx = torch.maximum(idx, other)
    return idx


def _row_values(b: _Batch, idx: torch.Tensor) -> torch.Tensor:
    """Row r of ``b`` at flat position ``idx[r]``."""
    assert b.base is not None and b.idx is not None and b.val is not None
    at_base = _flat_gather(b.base, b.base.shape, idx)
    mine = idx >= 0 if b.idx is idx else (b.idx == idx) & (idx >= 0)
    return torch.where(mine, b.val, at_base)


def _pointwise(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], batches: list[_Batch]
) -> _Batch | None:
    shape = batches[0].shape
    if any(b.shape != shape for b in batches):
        return None
    idx = _common_idx(batches)
    if idx is None:
        return None

    def at_base(a: Any) -> Any:
        return a.base if isinstance(a, _Batch) else a

    if any(isinstance(a, list | tuple | dict) for a in (*args, *kwargs.values())):
        return None
    base_args, base_kwargs = _map_args(at_base, args, kwargs)
    base = func(*base_args, **base_kwargs)
    if not isinstance(base, torch.Tensor) or base.shape != shape:
        return None  # a plain argument broadcasts the result beyond the batch's shape

    def at_rows(a: Any) -> Any:
        if isinstance(a, _Batch):
            return _row_values(a, idx)
        if isinstance(a, torch.Tensor) and a.dim() > 0:
            return _flat_gather(a, shape, idx)
        return a

    row_args, row_kwargs = _map_args(at_rows, args, kwargs)
    val = func(*row_args, **row_kwargs)
    return _Batch.one_hot(base, idx, val)


def _plain_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shape_arg(v: object) -> bool:
    """An int or a sequence of ints (not ``view(dtype)``, which reinterprets bits)."""
    return _plain_int(v) or (isinstance(v, list | tuple | torch.Size) and all(map(_plain_int, v)))


def _finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _getitem(b: _Batch, key: Any) -> _Batch | None:
    """``b[i]`` and ``b[lo:hi]`` of a 1-D batch; anything else goes dense."""
    assert b.base is not None and b.idx is not None and b.val is not None
    if b.base.dim() != 1:
        return None
    n = b.base.shape[0]
    if _plain_int(key) and -n <= key < n:
        i = key % n
        return _Batch.of_dense(torch.where(b.idx == i, b.val, b.base[i]))
    if isinstance(key, slice) and key.step in (None, 1):
        if not all(v is None or _plain_int(v) for v in (key.start, key.stop)):
            return None
        lo, hi, _ = key.indices(n)
        hi = max(hi, lo)
        idx = torch.where((b.idx >= lo) & (b.idx < hi), b.idx - lo, -1)
        return _Batch.one_hot(b.base[lo:hi], idx, b.val)
    return None


def _full_sum(func: Any, b: _Batch, rest: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``sum``/``mean`` over every dimension: the base's total plus each row's change."""
    assert b.base is not None and b.idx is not None and b.val is not None
    dims = rest[0] if rest else kwargs.get("dim")
    keepdim = rest[1] if len(rest) > 1 else kwargs.get("keepdim", False)
    if len(rest) > 2 or set(kwargs) - {"dim", "keepdim"} or keepdim:
        return None
    if not b.base.is_floating_point():
        return None
    nd = b.base.dim()
    if dims is not None:
        listed = [dims] if _plain_int(dims) else list(dims)
        if nd == 0 or not all(_plain_int(d) and -nd <= d < nd for d in listed):
            return None
        if sorted(d % nd for d in listed) != list(range(nd)):
            return None
    total = b.base.sum()
    # with a non-finite base or total, total + change would turn inf - inf into nan
    # where the dense sum gives inf or a number: the dense route keeps torch's rules
    if not _finite(b.base, total):
        return None
    change = b.val - _flat_gather(b.base, b.base.shape, b.idx)
    rows = total + torch.where(b.idx >= 0, change, torch.zeros_like(change))
    if func in _MEANS:
        rows = rows / max(b.base.numel(), 1)
    return _Batch.of_dense(rows)


def _dot(a: Any, b: Any) -> _Batch | None:
    """``dot`` with one or two one-hot vectors: the base product plus each row's change."""
    batches = [t for t in (a, b) if isinstance(t, _Batch)]
    idx = _common_idx(batches)
    if idx is None:
        return None
    base_a = a.base if isinstance(a, _Batch) else a
    base_b = b.base if isinstance(b, _Batch) else b
    if not isinstance(base_a, torch.Tensor) or not isinstance(base_b, torch.Tensor):
        return None
    if base_a.shape != base_b.shape or base_a.dim() != 1 or base_a.dtype != base_b.dtype:
        return None
    product = torch.dot(base_a, base_b)
    if not _finite(base_a, base_b, product):
        return None
    ra = _row_values(a, idx) if isinstance(a, _Batch) else _flat_gather(a, a.shape, idx)
    rb = _row_values(b, idx) if isinstance(b, _Batch) else _flat_gather(b, b.shape, idx)
    change = ra * rb - _flat_gather(base_a, base_a.shape, idx) * _flat_gather(
        base_b, base_b.shape, idx
    )
    rows = product + torch.where(idx >= 0, change, torch.zeros_like(change))
    return _Batch.of_dense(rows)


def _matmul(left: Any, right: Any) -> _Batch | None:
    """A matrix times a one-hot vector (or the reverse): the base product plus, per
    row, the matrix's column (row) at the changed position times the change."""
    if isinstance(right, _Batch) and isinstance(left, torch.Tensor) and left.dim() == 2:
        vec, mat, cols = right, left, True
    elif isinstance(left, _Batch) and isinstance(right, torch.Tensor) and right.dim() == 2:
        vec, mat, cols = left, right, False
    else:
        return None
    assert vec.base is not None and vec.idx is not None and vec.val is not None
    if vec.base.dim() != 1 or mat.dtype != vec.base.dtype:
        return None
    base = mat @ vec.base if cols else vec.base @ mat
    if not _finite(mat, vec.base, base):
        return None  # inf * 0 and inf - inf would differ from the dense product
    at = vec.idx.clamp_min(0)
    change = vec.val - vec.base[at]
    lines = mat[:, at].T if cols else mat[at, :]  # (rows, m)
    # rows that change nothing get exactly the base product
    delta = torch.where((vec.idx >= 0)[:, None], lines * change[:, None], 0.0)
    return _Batch.of_dense(base[None, :] + delta)


def _dense_rule(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], batches: list[_Batch]
) -> _Batch | None:
    """Reshapes and element-wise ops on dense batches, with the row dimension in
    front instead of a ``vmap`` per op; ``None`` for the rest."""
    b = batches[0]
    reshape = func in _RESHAPES and len(batches) == 1 and args and args[0] is b
    if reshape and not kwargs and all(_shape_arg(a) for a in args[1:]):
        shape = func(torch.empty(b.shape, dtype=b.dtype, device="meta"), *args[1:]).shape
        return _Batch.of_dense(b.materialise().reshape(b.rows, *shape))
    if func in _SUMS and len(batches) == 1 and args and args[0] is b:
        return _dense_sum(func, b, args[1:], kwargs)
    if not (func in _POINTWISE or (func in _WHERE and len(args) == 3 and not kwargs)):
        return None
    if any(isinstance(a, list | tuple | dict) for a in (*args, *kwargs.values())):
        return None
    rank = max(a.dim() for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))

    def lined_up(a: Any) -> Any:
        if not isinstance(a, _Batch):
            return a
        d = a.materialise()
        return d.reshape(a.rows, *([1] * (rank - a.dim())), *a.shape)

    out = func(*(lined_up(a) for a in args), **{k: lined_up(v) for k, v in kwargs.items()})
    return _Batch.of_dense(out) if isinstance(out, torch.Tensor) else None


def _dense_sum(func: Any, b: _Batch, rest: tuple[Any, ...], kw: dict[str, Any]) -> _Batch | None:
    """``sum``/``mean`` of a dense batch: the per-point dimensions move up by one."""
    if len(rest) > 2 or set(kw) - {"dim", "keepdim"}:
        return None
    dims = rest[0] if rest else kw.get("dim")
    keepdim = bool(rest[1] if len(rest) > 1 else kw.get("keepdim", False))
    d = b.materialise()
    if dims is None or (not _plain_int(dims) and len(dims) == 0):
        if keepdim or b.dim() == 0:
            return None  # a 0-dim sum's dtype rules (bool -> int64): vmap keeps torch's
        listed = list(range(b.dim()))
    else:
        listed = [dims] if _plain_int(dims) else list(dims)
        if not all(_plain_int(i) and -b.dim() <= i < b.dim() for i in listed):
            return None
    shifted = [i % b.dim() + 1 for i in listed]
    return _Batch.of_dense(func(d, shifted, keepdim=keepdim))


def _dense_op(func: Any, flat: list[Any], spec: Any) -> Any:
    """The op over materialised batches, mapped with ``vmap`` (plain arguments shared)."""
    positions = [i for i, a in enumerate(flat) if isinstance(a, _Batch)]
    dense = [flat[i].materialise() for i in positions]

    def per_row(*row_args: torch.Tensor) -> Any:
        filled = list(flat)
        for i, t in zip(positions, row_args, strict=True):
            filled[i] = t
        a, kw = pytree.tree_unflatten(filled, spec)
        return func(*a, **kw)

    try:
        out = torch.func.vmap(per_row)(*dense)
    except (RuntimeError, ValueError) as exc:
        raise _refuse(str(exc)) from exc
    return pytree.tree_map(lambda t: _Batch.of_dense(t) if isinstance(t, torch.Tensor) else t, out)


def one_hot_rows(
    x: torch.Tensor, steps: Sequence[float], start: int = 0, stop: int | None = None
) -> _Batch:
    """``x + s·e_i`` for each step ``s`` and coordinate ``start <= i < stop`` of the
    1-D ``x``, as one one-hot batch (row ``k·(stop - start) + i - start`` is step
    ``k``, coordinate ``i``)."""
    stop = x.shape[0] if stop is None else stop
    idx = torch.arange(start, stop, device=x.device).repeat(len(steps))
    val = torch.cat([x[start:stop] + s for s in steps])
    return _Batch.one_hot(x, idx, val)


def evaluate(
    g: Callable[..., torch.Tensor],
    x: torch.Tensor,
    consts: Sequence[torch.Tensor],
    steps: Sequence[float],
    start: int = 0,
    stop: int | None = None,
) -> torch.Tensor:
    """``g(x + s·e_i, *consts)`` for every step and coordinate (those from ``start``
    to ``stop``): ``(len(steps)·(stop - start), m)``.

    ``g`` maps a 1-D ``x`` to a 1-D output. Raises (:class:`Unsupported` or the
    function's own error) when the one-hot evaluation cannot run it, or when it would
    have to materialise every row before any one-hot rule saved work (the dense
    evaluation is then at least as fast).
    """
    batch = one_hot_rows(x, steps, start, stop)
    state = _Savings()
    token = _SAVINGS.set(state)
    try:
        with torch.no_grad():
            out = g(batch, *consts)
    except Exception as exc:
        if state.refused is not None and not isinstance(exc, Unsupported):
            raise Unsupported(state.refused) from exc
        raise
    finally:
        _SAVINGS.reset(token)
    if isinstance(out, _Batch):
        return out.materialise().reshape(batch.rows, -1)
    if not isinstance(out, torch.Tensor):
        raise Unsupported("the function did not return a tensor")
    return out.reshape(1, -1).expand(batch.rows, -1)  # does not depend on x
