"""The analyses' measures as numbers read off their curves, torch-free: the measuring modules call them on what
they measure, and the report (``report.why_shortcuts``) on the curves an analysis logged, so a number and its
definition have one home. Declared before the rerun of issue 35, each as its paper defines it; the page says which
was chosen after seeing the earlier (one-class) measurements."""

from __future__ import annotations

import math

# Lesion (Veit et al. 2016): chance on CIFAR-10's ten classes, the test error a network that has lost everything
# tends to; the most one deletion can cost is the distance from the base error to it.
CHANCE_ERROR = 90.0
# Shattering (Balduzzi et al. 2017): the decay length is the first lag at which the correlation falls below this.
DECAY_THRESHOLD = 0.5
# Loss surface (Li et al. 2018): second differences smaller than this (nats) count as zero. The fp32 loss of a
# thousand images is good to about 1e-6, and a flat stretch (a loss at chance, ln 10) wobbles about zero without
# bending either way.
CURVATURE_FLOOR = 1e-4


def lesion_summary(base: float, single: list[float], downsampling: list[float]) -> dict[str, float]:
    """The numbers of one lesion (Veit et al.'s Figure 3) from the test error with nothing deleted (``base``), with
    each block of unchanged shape deleted alone (``single``) and each deletable downsampling block (``downsampling``,
    a residual net's; a plain net's cannot be deleted):

    * ``single_cost`` (primary): the mean over ``single`` minus ``base``, in points;
    * ``downsampling_cost``: the same over the downsampling blocks, which also remove a stage's change of scale
      (nan where there are none);
    * ``single_share``: ``single_cost`` as a share of the distance from ``base`` to chance (90%), the most a
      deletion can cost: a net at 67% test error can lose at most 23 points.
    """
    cost = _mean(single) - base
    room = CHANCE_ERROR - base
    return {"base_error": base, "single_cost": cost, "downsampling_cost": _mean(downsampling) - base,
            "single_share": cost / room if room > 0 else math.nan}


def shattering_summary(curve: list[float]) -> dict[str, float]:
    """From the correlations at lags 1, 2, ... (Balduzzi et al.'s autocorrelation of the gradient along a line):

    * ``lag1``: the correlation of neighbouring points, the primary measure at initialisation;
    * ``decay_length``: the first lag at which the correlation falls below ``DECAY_THRESHOLD`` (the last lag + 1
      where it never does: censored);
    * ``at_max_lag``: the correlation at the last lag, the primary measure at the end of training, where lag 1
      saturates (0.99-1.00 for every trained network of the committed cpu-long reference). Chosen after seeing the
      one-class measurements of that reference, where the last lag (32) still separated the networks.
    """
    below = [lag for lag, value in enumerate(curve, start=1) if value < DECAY_THRESHOLD]
    return {"lag1": curve[0], "decay_length": float(below[0] if below else len(curve) + 1), "at_max_lag": curve[-1]}


def surface_summary(curves: list[dict[float, float]]) -> dict[str, float]:
    """A loss surface's 1-D curves (each alpha -> loss), averaged over the curves (directions):

    * ``curvature_sign_changes`` (primary): how many times a curve's second difference changes sign (0 for a
      convex bowl; a chaotic surface changes often), those under ``CURVATURE_FLOOR`` skipped; on Li et al.'s
      1-D grid of 51 points in [-1, 1] (``AnalysisConfig.surface_points``). Li et al.'s claim is about shape
      (chaotic, non-convex without shortcuts), not height;
    * ``relative_rise`` (secondary): the loss rise at alpha = +-0.5 as a share of the loss at the weights, so that
      nets that end at different losses compare;
    * ``rise_at_half``: that rise in nats, the measure the page used before (kept for the record).

    Where +-0.5 is not a grid point (the 51-point grid steps by 0.04: 0.48, 0.52), the loss there is interpolated
    linearly between its neighbours."""
    rises, relative, changes = [], [], []
    for curve in curves:
        at = {round(alpha, 6): loss for alpha, loss in curve.items()}
        half = [_interpolated(at, alpha) for alpha in (0.5, -0.5)]
        if 0.0 in at and all(value == value for value in half):
            rises.append(sum(half) / 2 - at[0.0])
            relative.append(rises[-1] / at[0.0] if at[0.0] > 0 else math.nan)
        changes.append(curvature_sign_changes([at[alpha] for alpha in sorted(at)]))
    return {"rise_at_half": _mean(rises), "relative_rise": _mean(relative), "curvature_sign_changes": _mean(changes)}


def _interpolated(curve: dict[float, float], alpha: float) -> float:
    """The loss at ``alpha``: the curve's own point, else linear between the grid points either side (nan outside)."""
    if alpha in curve:
        return curve[alpha]
    below = max((a for a in curve if a < alpha), default=None)
    above = min((a for a in curve if a > alpha), default=None)
    if below is None or above is None:
        return math.nan
    return curve[below] + (curve[above] - curve[below]) * (alpha - below) / (above - below)


def curvature_sign_changes(losses: list[float], floor: float = CURVATURE_FLOOR) -> int:
    """Sign changes of the second difference of ``losses`` (evenly spaced), those under ``floor`` skipped."""
    second = [losses[i - 1] - 2 * losses[i] + losses[i + 1] for i in range(1, len(losses) - 1)]
    signs = [value > 0 for value in second if abs(value) >= floor]
    return sum(a != b for a, b in zip(signs, signs[1:]))


def _mean(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else math.nan
