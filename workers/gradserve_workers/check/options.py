"""The check's tuning values: sizes and thresholds that trade speed for memory or
decide between equivalent routes, never a verdict's rule (tolerances are the
caller's arguments)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_OPTIONS", "CheckOptions"]


@dataclass(frozen=True)
class CheckOptions:
    """Tuning values of one check; the defaults are measured on CPU (see
    ``docs/performance.md``). Tests shrink them to reach a route at a small size."""

    # float64 elements per vmapped evaluation (perturbed points x input elements)
    eval_budget: int = 1 << 22
    # coordinate perturbations of at least this many input elements are evaluated
    # one-hot (see _perturb): below it the dense vmapped batch is as fast (~0.6 ms of
    # Python per evaluation against O(n²) element work)
    one_hot_min_inputs: float = 256
    # ... and with several points, which one-hot takes one at a time in Python while
    # the dense batch maps them all at once (200 points of 256: 1.24 s one-hot, 0.24 s
    # dense)
    one_hot_min_inputs_batched: float = 1024
    # largest n * m (per point) for which a failed fast check re-runs element-wise
    full_fallback_limit: int = 1 << 22
    # at most this many failing points are re-checked element-wise after a fast failure
    full_fallback_points: int = 16
    # Jacobians of at least this many elements (and as many outputs as inputs) are
    # built by forward mode first: below it the projections that hold reverse mode to
    # it cost more than forward mode saves (0.6 ms more at 10 x 10, even at ~500 x 500)
    forward_min_elements: int = 1 << 18
    # elements per block of the comparison: its handful of float64 scratch blocks stay
    # in a core's L2 cache, so the element-wise steps run from cache
    compare_block: int = 1 << 15
    # a kink candidate is re-evaluated at this fraction of the step
    kink_step_ratio: float = 0.25
    # at most this many kink candidates are re-evaluated, the largest gaps first
    kink_retests: int = 4096
    # random cotangents that hold reverse mode to a forward-mode Jacobian
    agreement_projections: int = 4
    # allowed round-off of such a projection, in units of (n + m) u |v|ᵀ|J[:, i]|:
    # differences between the modes on the language's functions stay below 0.95 of
    # that unit (0.015 of the tolerance); a false disagreement only costs building
    # reverse mode's Jacobian
    agreement_roundoff: float = 64.0
    # whether a finite-difference check's worst element gets the difference's own
    # error estimate (Richardson, four more evaluations: see fd_error); it changes no
    # verdict, only what the message can say about it
    fd_error_estimate: bool = True


DEFAULT_OPTIONS = CheckOptions()
