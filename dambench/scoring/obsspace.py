"""Scores at observed and at unobserved points, and observation-space statistics.

An analysis that merely copies its observations scores well where it was observed and no better
than its background elsewhere; these per-cycle statistics show it. Observed points are the
points where the split's stored ``observation`` is finite (per channel and cycle), unobserved
points all others. Per channel and cycle:

- ``rmse_observed``, ``rmse_unobserved``: the cos-latitude weighted RMSE of the analysis against
  the target over the observed (unobserved) points only;
- ``oma_mean``, ``oma_rms``: the mean and root mean square of observation minus analysis (O-A)
  over the observed points, each observation counting once (unweighted). For the ``Background``
  row these are O-B.

Cycles are read one at a time (target, observation and each method's analysis of one cycle), so
memory stays that of one cycle; the dataset's arrays are read through
:func:`dambench.load.read_cycle`, so a corrupted chunk is one error naming the file and
``dambench verify``. A cycle without an observed (unobserved) point of a channel gives
NaN, left out of that row's ``n`` when aggregated.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import xarray as xr

from dambench import schema
from dambench.grid import lat_weights
from dambench.load import read_cycle
from dambench.scoring.engine import CycleScores, Method

OBS_METRICS = ("rmse_observed", "rmse_unobserved", "oma_mean", "oma_rms")
"""The per-cycle statistics of this module, recorded per channel in the ``global`` region."""
REGION = "global"


def _weighted_rmse(squared: np.ndarray, weights: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """(channel,) weighted RMSE over the points ``inside`` (channel, lat, lon); NaN where
    there is no point (or all weights are zero)."""
    w = np.where(inside, weights, 0.0)
    total = w.sum(axis=(1, 2))
    summed = (np.where(inside, squared, 0.0) * w).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.sqrt(summed / np.where(total > 0, total, 1.0)), np.nan)


def cycle_statistics(
    analysis: np.ndarray, target: np.ndarray, observation: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """The :data:`OBS_METRICS` of one cycle, each (channel,).

    ``analysis``, ``target``, ``observation``: (channel, latitude, longitude) float64, the
    observation NaN where unobserved; ``weights``: (latitude, 1) cos-latitude weights. Points
    where the analysis or target is not finite are left out (they reach here only when scoring
    with ``skipna``).
    """
    valid = np.isfinite(analysis) & np.isfinite(target)
    observed = np.isfinite(observation)
    squared = (analysis - target) ** 2
    full = np.broadcast_to(weights, analysis.shape[1:])[None]
    out = {
        "rmse_observed": _weighted_rmse(squared, full, valid & observed),
        "rmse_unobserved": _weighted_rmse(squared, full, valid & ~observed),
    }
    inside = observed & np.isfinite(analysis)
    count = inside.sum(axis=(1, 2))
    increment = np.where(inside, observation - analysis, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["oma_mean"] = np.where(count > 0, increment.sum(axis=(1, 2)) / count, np.nan)
        out["oma_rms"] = np.sqrt(
            np.where(count > 0, (increment**2).sum(axis=(1, 2)) / count, np.nan)
        )
    return out


def _analysis(method: Method, time, channels: Sequence[str], skipna: bool) -> np.ndarray:
    field = method.read(time).sel({schema.CHANNEL: list(channels)})
    values = np.asarray(field.values, dtype=np.float64)
    if skipna:  # as the engine: every non-finite value is left out
        values = np.where(np.isfinite(values), values, np.nan)
    if "member" in field.dims:
        axis = field.dims.index("member")
        values = np.nanmean(values, axis=axis) if skipna else values.mean(axis=axis)
    return values


def score_observation_space(
    ds: xr.Dataset,
    methods: Sequence[Method],
    *,
    channels: Sequence[str],
    skipna: bool = False,
) -> CycleScores:
    """Per-cycle :data:`OBS_METRICS` of every method, in the global region, cycle by cycle.

    Returns a :class:`~dambench.scoring.engine.CycleScores` keyed like the engine's
    (method, seed, ``"global"``, channel, metric), ready for
    :func:`dambench.scoring.report.aggregate`.
    """
    out = CycleScores(members={m.name: m.members for m in methods})
    out.values = defaultdict(list)
    weights = lat_weights(ds[schema.LATITUDE], method="cos").values[:, None]
    for time in ds[schema.TIME].values:
        target, observation = (
            np.asarray(read_cycle(ds, name, time, list(channels)).values, dtype=np.float64)
            for name in ("target", "observation")
        )
        for method in methods:
            analysis = _analysis(method, time, channels, skipna)
            stats = cycle_statistics(analysis, target, observation, weights)
            for metric, values in stats.items():
                for channel, value in zip(channels, values.tolist(), strict=True):
                    out.values[(method.name, method.seed, REGION, channel, metric)].append(value)
        out.times.append(time)
    return out
