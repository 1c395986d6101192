"""``dambench.evaluate_predictions``: score anyone's analyses on a DAMBench split.

The one scoring path of the package: ``dambench evaluate`` calls it, and so do the quickstart and
``baselines/evaluate.py`` (which first streams a model's analyses to a prediction store).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchInputError
from dambench.regions import resolve_region
from dambench.scoring.bootstrap import paired_difference
from dambench.scoring.engine import CycleScores, Method, score_cycles
from dambench.scoring.identity import DatasetIdentity, dataset_identity
from dambench.scoring.predictions import Predictions, check_against, open_predictions
from dambench.scoring.report import ENSEMBLE_TABLE, TABLE3, aggregate, format_table

logger = logging.getLogger(__name__)

BACKGROUND = "Background"
CONVENTIONS = {
    "mse_mae": "grid means (unweighted) of fields normalised with the train-split per-channel "
    "mean/std, averaged over the channels scored; x100 in Table 3",
    "rmse": "per channel, cos-latitude weights of mean 1, RMSE per cycle then the mean over "
    "cycles, physical units",
    "spectral_reduction": "per_sample: SpecDiv/SpecRes per cycle and channel, then means "
    "(ChaosBench averages fields first: reduce='mean_field')",
    "crps": "fair CRPS per grid point, unweighted grid mean (physical units per channel; "
    "normalised and averaged over channels in the ensemble table)",
    "spread_skill": "sqrt((N+1)/N * mean ensemble variance / mean ensemble-mean MSE), "
    "cos-latitude weighted",
    "intervals": "95 % circular block bootstrap over cycles (data-driven block length, "
    "recorded per row), widened by t_df/z with df = 1.5 (n/b - 1)",
}


@dataclass
class ScoreReport:
    """What :func:`evaluate_predictions` returns (and writes with :meth:`write`).

    Attributes
    ----------
    scores
        The long, tidy score table (``scores.parquet``).
    summary
        Provenance, conventions, Table 3 rows and paired comparisons (``summary.json``).
    table3, ensemble_table
        Markdown tables (the second only when ensembles were scored).
    cycles
        The per-cycle values behind every aggregate.
    """

    scores: pd.DataFrame
    summary: dict
    table3: str
    ensemble_table: str | None
    cycles: CycleScores

    def write(self, out: str | os.PathLike) -> list[Path]:
        """``scores.parquet``, ``summary.json``, ``table3.md`` (and ``ensemble.md``) in ``out``."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        written = [folder / "scores.parquet", folder / "summary.json", folder / "table3.md"]
        self.scores.to_parquet(written[0], index=False)
        written[1].write_text(json.dumps(self.summary, indent=2, default=_json_default) + "\n")
        written[2].write_text(self.table3 + "\n")
        if self.ensemble_table:
            written.append(folder / "ensemble.md")
            written[-1].write_text(self.ensemble_table + "\n")
        return written


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


def _open_all(paths: list, members_dim, variable, ds) -> list[Predictions]:
    if not paths:
        raise DambenchInputError("No predictions given; pass one path or URL per seed.")
    opened = [open_predictions(p, members_dim=members_dim, variable=variable) for p in paths]
    for predictions in opened:
        check_against(predictions, ds)
    channels = {p.channels for p in opened}
    if len(channels) > 1:
        raise DambenchInputError(
            f"The seeds' predictions hold different channels {sorted(channels)}; score each "
            "channel set separately."
        )
    return opened


def _default_name(predictions: Predictions) -> str:
    recorded = predictions.attrs.get("model")
    if recorded:
        return str(recorded)
    return Path(predictions.location.rstrip("/")).stem


def _seed_labels(opened: list[Predictions], seeds) -> list[int]:
    if seeds is not None:
        labels = [int(s) for s in seeds]
        if len(labels) != len(opened):
            raise DambenchInputError(
                f"{len(labels)} seeds given for {len(opened)} prediction stores; give one each."
            )
        return labels
    recorded = [p.attrs.get("seed") for p in opened]
    if all(r is not None for r in recorded) and len(set(recorded)) == len(recorded):
        return [int(r) for r in recorded]
    return list(range(len(opened)))


def _methods(opened, seeds, name, ds, channels, reference: bool) -> list[Method]:
    methods = [
        Method(name, p.cycle, seed=s, members=p.n_members)
        for p, s in zip(opened, seeds, strict=True)
    ]
    if reference:

        def background(time: np.datetime64) -> xr.DataArray:
            picked = {schema.TIME: time, schema.CHANNEL: list(channels)}
            return ds["background"].sel(picked).load()

        methods.append(Method(BACKGROUND, background, seed=None, members=0))
    return methods


def per_cycle_table3(cycles: CycleScores, method: str, region: str = "global") -> dict:
    """Seed-averaged per-cycle values of each Table 3 column of ``method`` (for paired tests)."""
    out = {}
    for title, channel, metric, scale in TABLE3:
        series = [
            np.asarray(v, dtype=np.float64)
            for (m, _, r, c, k), v in cycles.values.items()
            if (m, r, c, k) == (method, region, channel, metric)
        ]
        if series:
            out[title] = (scale * np.mean(series, axis=0)).tolist()
    return out


def compare(a: dict, b: dict, column: str = "MSE(1e-2)", *, seed: int = 0) -> dict:
    """Paired block-bootstrap interval of ``a - b`` on ``column`` for two ``summary.json``
    results of the same dataset digest, split and cycles (refused otherwise)."""
    from dambench.scoring.identity import check_same_data

    check_same_data(a, b)
    values_a = np.asarray(a["per_cycle"][a["model"]][column])
    values_b = np.asarray(b["per_cycle"][b["model"]][column])
    return _comparison(a["model"], b["model"], column, values_a, values_b, seed)


def _comparison(name_a, name_b, column, values_a, values_b, seed: int = 0) -> dict:
    interval = paired_difference(values_a, values_b, seed=seed)
    if interval.low <= 0 <= interval.high:
        verdict = "not distinguishable from"
    else:
        verdict = "lower than" if interval.value < 0 else "higher than"
    return {
        "a": name_a,
        "b": name_b,
        "column": column,
        "difference": interval.value,
        "ci_low": interval.low,
        "ci_high": interval.high,
        "block_length": interval.block_length,
        "n": interval.n,
        "verdict": f"{name_a} is {verdict} {name_b} on {column}",
    }


def _table_summary(frame: pd.DataFrame, model: str, layout) -> dict:
    rows = frame[(frame["model"] == model) & (frame["region"] == "global")]
    rows = rows[(rows["period"] == "all")]
    rows = rows[rows["seed"].isna()] if rows["seed"].isna().any() else rows
    out = {}
    for title, channel, metric, scale in layout:
        hit = rows[(rows["channel"] == channel) & (rows["metric"] == metric)]
        if not hit.empty:
            row = hit.iloc[0]
            out[title] = {
                "value": scale * row["value"],
                "ci": [scale * row["ci_low"], scale * row["ci_high"]],
                "std_over_seeds": None
                if pd.isna(row["std_over_seeds"])
                else scale * row["std_over_seeds"],
                "n": int(row["n"]),
                "block_length": int(row["block_length"]),
            }
    return out


def _summary(frame, cycles, *, name, seeds, opened, identity: DatasetIdentity, split, options):
    import dambench

    names = list(cycles.members)
    ensemble = {m: _table_summary(frame, m, ENSEMBLE_TABLE) for m in names if cycles.members[m]}
    per_cycle = {m: per_cycle_table3(cycles, m) for m in names}
    comparisons = []
    if BACKGROUND in names and "MSE(1e-2)" in per_cycle[name]:
        a, b = per_cycle[name]["MSE(1e-2)"], per_cycle[BACKGROUND]["MSE(1e-2)"]
        comparisons.append(_comparison(name, BACKGROUND, "MSE(1e-2)", a, b))
    return {
        "model": name,
        "seeds": seeds,
        "predictions": [p.location for p in opened],
        "members": opened[0].n_members,
        "dataset": identity.to_dict(),
        "dataset_digest": identity.digest,
        "split": split,
        "n_cycles": len(cycles.times),
        "times": [str(pd.Timestamp(t)) for t in cycles.times],
        "channels": list(opened[0].channels),
        **options,
        "conventions": CONVENTIONS,
        "dambench_version": dambench.__version__,
        "table3": {m: _table_summary(frame, m, TABLE3) for m in names},
        "ensemble": ensemble,
        "comparisons": comparisons,
        "per_cycle": per_cycle,
    }


def evaluate_predictions(
    predictions: str | os.PathLike | Sequence[str | os.PathLike],
    dataset: str | os.PathLike = "era5-sample",
    *,
    split: str = "test",
    revision: str | None = None,
    out: str | os.PathLike | None = None,
    name: str | None = None,
    seeds: Sequence[int] | None = None,
    members_dim: str | None = None,
    variable: str | None = None,
    regions: Sequence[str] = ("global",),
    by: str | None = None,
    skipna: bool = False,
    reference: bool = True,
    n_resamples: int = 2000,
    figure_channel: str | None = "t2m",
    verbose: bool = False,
) -> ScoreReport:
    """Score predictions on a split of a DAMBench dataset with the benchmark's metrics.

    Parameters
    ----------
    predictions
        One path or URL per seed (Zarr or netCDF; stacked or per-variable layout, any latitude
        order and longitude convention, any channel subset; see
        :mod:`dambench.scoring.predictions`). Their times must be exactly the split's cycles.
    dataset
        ``"era5-sample"``, a published name, a build folder or a URL (as ``open_dataset``).
    split
        ``"train"``, ``"validation"`` or ``"test"``.
    revision
        A Hub branch, tag or commit of a published dataset (``"v1.0"``).
    out
        Folder for ``scores.parquet``, ``summary.json``, ``table3.md`` (``ensemble.md``) and
        figures; nothing is written when ``None``.
    name, seeds
        Row name (default: the store's ``model`` attribute or the file name) and seed labels.
    members_dim
        The ensemble member dim (found automatically when named member/ensemble/number/
        realization): the ensemble mean is scored in Table 3, fair CRPS and spread/skill in the
        ensemble table.
    regions
        Region names or ``"box:lat_min,lat_max,lon_min,lon_max"`` (:mod:`dambench.regions`).
    by
        ``"month"`` or ``"season"``: per-period rows besides ``"all"``.
    skipna
        Score finite points only (weights renormalised); by default a NaN is an error.
    reference
        Also score the dataset's background (the ``Background`` row and a paired comparison).
    n_resamples
        Bootstrap resamples per interval.
    figure_channel
        Channel of the maps and spectra (``None``: no figures).

    Returns
    -------
    ScoreReport
    """
    from dambench.load import open_dataset, stats_from_attrs

    ds = open_dataset(dataset, split=split, revision=revision)
    identity = dataset_identity(dataset, revision)
    stats = stats_from_attrs(ds)
    opened = _open_all(_as_list(predictions), members_dim, variable, ds)
    seed_labels = _seed_labels(opened, seeds)
    name = name or _default_name(opened[0])
    channels = list(opened[0].channels)
    region_list = [resolve_region(r) for r in regions]
    methods = _methods(opened, seed_labels, name, ds, channels, reference)
    cycles = score_cycles(
        ds,
        methods,
        channels=channels,
        stats=stats,
        regions=region_list,
        skipna=skipna,
        verbose=verbose,
    )
    units = dict(zip(channels, (schema.channel_units(c) for c in channels), strict=True))
    meta = {"dataset": identity.name, "dataset_digest": identity.digest, "split": split}
    frame = aggregate(
        cycles, meta=meta, channel_units=units, by=by, n_resamples=n_resamples, skipna=skipna
    )
    options = {
        "regions": [r.name for r in region_list],
        "by": by,
        "skipna": skipna,
        "channel_means_over": channels,
    }
    summary = _summary(
        frame,
        cycles,
        name=name,
        seeds=seed_labels,
        opened=opened,
        identity=identity,
        split=split,
        options=options,
    )
    ensemble = format_table(frame, ENSEMBLE_TABLE) if any(cycles.members.values()) else None
    report = ScoreReport(frame, summary, format_table(frame, TABLE3), ensemble, cycles)
    if out is not None:
        report.write(out)
        if figure_channel:
            from dambench.scoring.figures import save_figures

            save_figures(Path(out), ds, opened[0], name, figure_channel, report)
    return report
