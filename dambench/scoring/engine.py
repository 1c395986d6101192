"""Score methods cycle by cycle: per-cycle values of every metric, never all cycles in memory.

For each cycle of the split the target is read once, each method's analysis is read (one
cycle), and :func:`dambench.metrics.evaluate` gives the per-cycle scores of every channel in
every region. Ensembles are scored on their member mean, plus the fair CRPS and the
ensemble variance and ensemble-mean squared error behind the spread/skill ratio, all three
cos-latitude weighted like RMSE. Before a block is scored, a field in other units (its median
outside :data:`dambench.schema.PHYSICAL_RANGE`) is refused, and so are NaN and Inf unless
``skipna`` (which leaves every non-finite value out).
The result is a table of per-cycle values keyed by (method, seed, region, channel, metric), in
cycle order, which :mod:`dambench.scoring.report` aggregates with block-bootstrap intervals.
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr
from tqdm.auto import tqdm

from dambench import schema
from dambench.load import read_block
from dambench.metrics import crps, evaluate, spatial_mean
from dambench.normalize import normalize
from dambench.regions import Region, region_weights
from dambench.scoring.plausibility import check_finite, check_range

logger = logging.getLogger(__name__)

ALL_CHANNELS = "all"
"""The ``channel`` label of scores averaged over every channel scored (Table 3's columns)."""
CHANNEL_MEAN_METRICS = ("spec_div", "spec_res", "mse_norm", "mae_norm")
ENSEMBLE_NORMALISED = ("crps_norm", "ens_var_norm", "ens_mse_norm")

CycleReader = Callable[[np.datetime64], xr.DataArray]
BLOCK_BYTES = 32 * 2**20
"""Memory budget of one block of cycles scored together (float64 fields of one method)."""


@dataclass(frozen=True)
class Method:
    """One scored method: a name, a seed label and a reader of one cycle.

    ``read(time)`` returns ``([member,] channel, latitude, longitude)`` in physical units.
    """

    name: str
    read: CycleReader
    seed: int | None = None
    members: int = 0


@dataclass
class CycleScores:
    """Per-cycle values: ``values[(method, seed, region, channel, metric)]`` is a list in cycle
    order; ``times`` are the cycles; ``members`` maps method names to ensemble sizes;
    ``warnings`` are notes on what was scored as it is (values outside their channel's
    plausible range), to be recorded with the scores."""

    times: list[np.datetime64] = field(default_factory=list)
    values: dict[tuple, list[float]] = field(default_factory=lambda: defaultdict(list))
    members: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def series(self, key: tuple) -> np.ndarray:
        return np.asarray(self.values[key], dtype=np.float64)


def _append(out: CycleScores, key: tuple, values: xr.DataArray) -> None:
    """Append per-cycle ``values`` (time, [channel]) under ``key + (channel,)``: per channel,
    or the mean over channels under ``"all"`` when ``key`` ends with ``None``."""
    *prefix, metric = key
    if schema.CHANNEL in values.dims:
        table = values.transpose(schema.CHANNEL, schema.TIME)
        for channel, series in zip(table[schema.CHANNEL].values, table.values, strict=True):
            out.values[(*prefix, str(channel), metric)].extend(series.tolist())
    else:
        out.values[(*prefix, ALL_CHANNELS, metric)].extend(values.values.tolist())


def _record_evaluation(out: CycleScores, key: tuple, result: xr.Dataset) -> None:
    """Store an evaluate() result over a block of cycles: per channel and metric, and the
    channel means of :data:`CHANNEL_MEAN_METRICS`."""
    table = result.to_dataarray(dim=schema.CHANNEL)  # (channel, metric, time)
    for metric in table["metric"].values.tolist():
        values = table.sel(metric=metric, drop=True)
        _append(out, (*key, metric), values)
        if metric in CHANNEL_MEAN_METRICS:
            _append(out, (*key, metric), values.mean(schema.CHANNEL, skipna=False))


def _ensemble_parts(members, target, weights) -> dict[str, xr.DataArray]:
    """Per-cycle fair CRPS, ensemble variance and ensemble-mean squared error, each a
    cos-latitude weighted mean (``weights``: the region's RMSE weights), so that CRPS, spread
    and skill weigh the globe alike."""
    mean = members.mean("member")
    fair = crps(members, target, member_dim="member", fair=True, weights=weights, sample_dim=None)
    return {
        "crps": fair,
        "ens_var": spatial_mean(members.var("member", ddof=1), weights=weights),
        "ens_mse": spatial_mean((mean - target) ** 2, weights=weights),
    }


def _record_ensemble(out: CycleScores, key: tuple, members, target, stats, weights) -> None:
    """Fair CRPS, ensemble variance (ddof 1) and ensemble-mean MSE per cycle: per channel in
    physical units, and averaged over channels in normalised units (``*_norm``)."""
    for metric, values in _ensemble_parts(members, target, weights).items():
        _append(out, (*key, metric), values)
    normalised = _ensemble_parts(normalize(members, stats), normalize(target, stats), weights)
    for metric, values in normalised.items():
        _append(out, (*key, f"{metric}_norm"), values.mean(schema.CHANNEL, skipna=False))


def _region_weights(region: Region, target: xr.DataArray) -> xr.DataArray:
    """The region's cos-latitude weights (those of RMSE), for the ensemble scores."""
    lat, lon = target[schema.LATITUDE], target[schema.LONGITUDE]
    return region_weights(region, lat, lon, base="cos")


def _blocks(times: np.ndarray, n_fields: int, budget_bytes: int) -> list[np.ndarray]:
    """Consecutive blocks of cycles whose float64 fields fit ``budget_bytes``."""
    per_cycle = max(1, n_fields) * 8
    size = int(min(len(times), max(1, budget_bytes // per_cycle))) or 1
    return [times[i : i + size] for i in range(0, len(times), size)]


def score_cycles(
    ds: xr.Dataset,
    methods: Sequence[Method],
    *,
    channels: Sequence[str],
    stats: xr.Dataset,
    regions: Sequence[Region],
    skipna: bool = False,
    block_bytes: int = BLOCK_BYTES,
    verbose: bool = False,
) -> CycleScores:
    """Per-cycle scores of ``methods`` against ``ds["target"]`` (one split), block by block.

    Parameters
    ----------
    ds
        The split (``open_dataset(..., split=...)``), lazy: a block of cycles is read at a time.
    methods
        What to score; each reads its own cycles.
    channels
        The channels scored (the predictions' channels; every method is scored on these).
    stats
        Train-split per-channel mean/std for the normalised metrics.
    regions
        Regions (:func:`dambench.regions.resolve_region`); spectral metrics only globally.
    skipna
        Score the finite points only (weights renormalised); otherwise a NaN is an error.
    block_bytes
        Memory budget of one block of cycles (all members of one method, float64): memory stays
        flat however many cycles the split has.
    """
    out = CycleScores(members={m.name: m.members for m in methods})
    grid = ds.sizes[schema.LATITUDE] * ds.sizes[schema.LONGITUDE] * len(channels)
    widest = max([m.members for m in methods] + [1]) * grid
    blocks = _blocks(ds[schema.TIME].values, widest * 3, block_bytes)
    with tqdm(total=ds.sizes[schema.TIME], desc="scoring", disable=not verbose) as bar:
        for block in blocks:
            selection = {schema.TIME: block, schema.CHANNEL: list(channels)}
            target = read_block(ds, "target", selection)
            weight_sets = {r.name: _region_weights(r, target) for r in regions}
            for method in methods:
                _score_method_block(out, method, block, target, stats, regions, weight_sets, skipna)
            out.times.extend(block.tolist())
            bar.update(len(block))
    return out


def _read_block(method: Method, block: np.ndarray, target: xr.DataArray) -> xr.DataArray:
    """``method``'s cycles of ``block`` on the target's coordinates: (time, [member,] channel,
    latitude, longitude)."""
    fields = [method.read(t).sel({schema.CHANNEL: target[schema.CHANNEL].values}) for t in block]
    values = np.stack([np.asarray(f.values) for f in fields])
    coords = dict(target.coords)
    dims = [schema.TIME, schema.CHANNEL, *schema.SPATIAL_DIMS]
    if "member" in fields[0].dims:
        dims.insert(1, "member")
        coords["member"] = np.arange(fields[0].sizes["member"])
    return xr.DataArray(values, dims=dims, coords=coords)


def _checked(out: CycleScores, field_: xr.DataArray, method: str, skipna: bool) -> xr.DataArray:
    """``field_`` refused when in other units than the schema's (:func:`check_range`; a note on
    single implausible values goes to ``out.warnings`` and is issued as a warning) or, without
    ``skipna``, when a value is NaN or Inf; with ``skipna`` every non-finite value becomes NaN
    (left out of the scores)."""
    note = check_range(field_, method)
    if note is not None:
        out.warnings.append(note)
        warnings.warn(note, UserWarning, stacklevel=4)
    if not skipna:
        check_finite(field_, method)
        return field_
    return field_.where(np.isfinite(field_))


def _score_method_block(out, method, block, target, stats, regions, weight_sets, skipna) -> None:
    field_ = _checked(out, _read_block(method, block, target), method.name, skipna)
    members = field_ if "member" in field_.dims else None
    analysis = members.mean("member", skipna=skipna) if members is not None else field_
    for region in regions:
        key = (method.name, method.seed, region.name)
        result = evaluate(
            analysis, target, stats=stats, sample_dim=None, region=region, skipna=skipna
        )
        _record_evaluation(out, key, result)
        if members is not None:
            _record_ensemble(out, key, members, target, stats, weight_sets[region.name])


def times_frame(scores: CycleScores) -> pd.DatetimeIndex:
    """The scored cycles as a DatetimeIndex."""
    return pd.DatetimeIndex(scores.times)
