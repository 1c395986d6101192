"""``dambench.evaluate_predictions``: score anyone's analyses on a DAMBench split.

The one scoring path of the package: ``dambench evaluate`` calls it, and so do the quickstart and
``baselines/evaluate.py`` (which first streams a model's analyses to a prediction store).
"""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchInputError
from dambench.load import read_cycle
from dambench.regions import open_land_sea_mask, resolve_region, with_land_sea_mask
from dambench.scoring import report as tables
from dambench.scoring.comparison import PER_CHANNEL_METRICS, compare
from dambench.scoring.engine import ALL_CHANNELS, CycleScores, Method, score_cycles
from dambench.scoring.finite import left_out_notes, paired_finite
from dambench.scoring.identity import DatasetIdentity, dataset_identity
from dambench.scoring.outputs import ResultFolder
from dambench.scoring.predictions import Predictions, check_against, open_predictions
from dambench.scoring.report import ENSEMBLE_TABLE, TABLE3, aggregate, format_table

__all__ = ["BACKGROUND", "ScoreReport", "compare", "evaluate_predictions"]

logger = logging.getLogger(__name__)

BACKGROUND = "Background"
CONVENTIONS = {
    "mse_mae": "grid means (unweighted) of fields normalised with the train-split per-channel "
    "mean/std, averaged over the channels scored; x100 in Table 3",
    "rmse": "per channel, cos-latitude weights of mean 1, RMSE per cycle then the mean over "
    "cycles, physical units",
    "observation_space": "per channel: RMSE at observed and at unobserved points (where the "
    "split's observation is finite or not), cos-latitude weighted; O-A mean and RMS over the "
    "observed points, unweighted (O-B in the Background row); cycles without such points are "
    "left out of n",
    "comparisons": "made on the channels, regions and cycles both results scored, same dataset "
    "digest and split (refused otherwise)",
    "skipna": "with skipna every non-finite prediction value is left out (weights "
    "renormalised); a cycle where a score is undefined (no finite point of a channel) is left "
    "out of that score's n and named in warnings; paired comparisons use the cycles defined "
    "in both series",
    "spectral_reduction": "per_sample: SpecDiv/SpecRes per cycle and channel, then means "
    "(ChaosBench averages fields first: reduce='mean_field')",
    "crps": "fair CRPS per grid point, cos-latitude weighted grid mean (physical units per "
    "channel; normalised and averaged over channels in the ensemble table)",
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
        Provenance, conventions, Table 3 rows, per-cycle values, paired comparisons and
        ``warnings`` (what was scored on trust or left out: :func:`scoring_notes`)
        (``summary.json``).
    table3, ensemble_table
        Markdown tables (the second only when ensembles were scored).
    cycles
        The per-cycle values behind every aggregate.
    tables
        Every Markdown file of the evaluation, headed by dataset, digest, split and units:
        ``{"table3.md": ..., "channels.md": ..., "regions.md": ..., "observed.md": ...}``.
    """

    scores: pd.DataFrame
    summary: dict
    table3: str
    ensemble_table: str | None
    cycles: CycleScores
    tables: dict[str, str] = field(default_factory=dict)

    def stage(self, folder: ResultFolder) -> list[Path]:
        """Write ``scores.parquet``, ``summary.json`` and the Markdown tables into ``folder``'s
        staging area (made visible by ``folder.commit()``)."""
        buffer = io.BytesIO()
        self.scores.to_parquet(buffer, index=False)
        text = json.dumps(self.summary, indent=2, default=_json_default) + "\n"
        written = [
            folder.write("scores.parquet", buffer.getvalue()),
            folder.write("summary.json", text.encode()),
        ]
        for name, table in self.tables.items():
            written.append(folder.write(name, (table + "\n").encode()))
        return written

    def write(self, out: str | os.PathLike, *, overwrite: bool = False) -> list[Path]:
        """``scores.parquet``, ``summary.json`` and the Markdown tables in ``out``, replaced as a
        whole (:class:`~dambench.scoring.outputs.ResultFolder`)."""
        with ResultFolder(out, overwrite=overwrite) as folder:
            self.stage(folder)
            return folder.commit()


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


def _location_key(path) -> str:
    """A prediction location made comparable: an absolute local path, or the URL as given."""
    text = os.fspath(path)
    if "://" in text:
        return text.rstrip("/")
    return str(Path(text).expanduser().resolve())


def check_unique(paths: list, seeds) -> None:
    """Refuse a prediction store given twice and repeated seed labels, before anything is read."""
    keys = [_location_key(p) for p in paths]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise DambenchInputError(
            f"The same prediction store is given more than once: {', '.join(repeated)}. Give "
            "each seed's store once (one store per seed)."
        )
    labels = [int(s) for s in seeds] if seeds is not None else []
    twice = sorted({s for s in labels if labels.count(s) > 1})
    if twice:
        raise DambenchInputError(
            f"Seed labels must be unique; {twice} given more than once in {labels}. Give one "
            "distinct label per prediction store (--seeds 0 1 ...)."
        )


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
            return read_cycle(ds, "background", time, list(channels))

        methods.append(Method(BACKGROUND, background, seed=None, members=0))
    return methods


def _seed_mean(cycles: CycleScores, method: str, region: str, channel: str, metric: str):
    series = [
        np.asarray(v, dtype=np.float64)
        for (m, _, r, c, k), v in cycles.values.items()
        if (m, r, c, k) == (method, region, channel, metric)
    ]
    return np.mean(series, axis=0) if series else None


def per_cycle_table3(cycles: CycleScores, method: str, region: str = "global") -> dict:
    """Seed-averaged per-cycle values of each Table 3 column of ``method`` (for paired tests)."""
    out = {}
    for title, channel, metric, scale in TABLE3:
        series = _seed_mean(cycles, method, region, channel, metric)
        if series is not None:
            out[title] = (scale * series).tolist()
    return out


def per_cycle_channels(cycles: CycleScores, method: str) -> dict:
    """Seed-averaged per-cycle values of :data:`PER_CHANNEL_METRICS` of ``method``, per region
    and channel: ``{region: {metric: {channel: [...]}}}`` (comparisons on common channels)."""
    out: dict = {}
    keys = {(r, c, k) for (m, _, r, c, k) in cycles.values if m == method and c != ALL_CHANNELS}
    for region, channel, metric in sorted(keys):
        if metric in PER_CHANNEL_METRICS:
            series = _seed_mean(cycles, method, region, channel, metric)
            out.setdefault(region, {}).setdefault(metric, {})[channel] = series.tolist()
    return out


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
        comparisons.append(paired_finite(name, BACKGROUND, "MSE(1e-2)", a, b))
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
        "per_cycle_channels": {m: per_cycle_channels(cycles, m) for m in names},
    }


def _markdown_files(frame, summary, channel_units, regions, ensemble: str | None) -> dict:
    """Every Markdown file of an evaluation, each headed by :func:`~report.table_header`."""
    meta = {**summary, "dataset": summary["dataset"]["name"]}
    meta["digest_kind"] = summary["dataset"]["digest_kind"]
    units = tables.channel_units_text(channel_units)
    channels = summary["channels"]
    normalised = f"normalised with the train-split mean/std, averaged over {', '.join(channels)}"
    files = {
        "table3.md": (
            f"SpecDiv (1), MSE(1e-2) and MAE(1e-2) on fields {normalised}; RMSE per channel in "
            f"physical units ({units}).",
            format_table(frame, TABLE3),
        ),
        "channels.md": (
            f"RMSE, MAE and Bias in each row's Units ({units}); SpecDiv, SpecRes and the "
            "normalised MSE (x100) dimensionless.",
            tables.format_channel_table(frame, channels),
        ),
        "regions.md": (
            f"RMSE in physical units ({units}); regions: "
            + "; ".join(f"{r.name} = {r.describe()}" for r in regions)
            + ".",
            tables.format_region_table(frame, channels, [r.name for r in regions]),
        ),
    }
    if ensemble:
        files["ensemble.md"] = (
            f"CRPS(1e-2) on fields {normalised}; spread/skill (1); CRPS per channel in "
            f"physical units ({units}).",
            ensemble,
        )
    if (frame["metric"] == "oma_rms").any():
        files["observed.md"] = (
            f"physical units ({units}). Observed points: where the split's observation is "
            "finite; RMSE cos-latitude weighted over the observed (unobserved) points; O-A mean "
            "and RMS over the observed points, each observation once (the Background row's "
            "O-A is O-B).",
            tables.format_channel_table(frame, channels, layout=tables.OBSERVED_TABLE),
        )
    return {
        name: tables.table_header(meta, about) + "\n" + table
        for name, (about, table) in files.items()
    }


def _regions(regions: Sequence, land_sea_mask) -> list:
    """Resolved regions with the land-sea mask (a DataArray or a path) attached to land/sea."""
    resolved = [resolve_region(r) for r in regions]
    if land_sea_mask is not None and not isinstance(land_sea_mask, xr.DataArray):
        land_sea_mask = open_land_sea_mask(land_sea_mask)
    surface = [r.name for r in resolved if r.surface and r.land_sea_mask is None]
    if surface and land_sea_mask is None:
        raise DambenchInputError(
            f"Regions {surface} need a land-sea mask: pass --land-sea-mask PATH (a netCDF file "
            "or Zarr store with an 'lsm' land fraction on the grid; land_sea_mask= in Python)."
        )
    return with_land_sea_mask(resolved, land_sea_mask)


def _score(ds, methods, channels, stats, region_list, *, skipna, by, n_resamples, meta, verbose):
    """The tidy frame and per-cycle values: the engine's scores, then the observation-space
    statistics (aggregated with undefined cycles left out of ``n``)."""
    from dambench.scoring.obsspace import score_observation_space

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
    settings = {"meta": meta, "channel_units": units, "by": by, "n_resamples": n_resamples}
    frame = aggregate(cycles, skipna=skipna, **settings)
    if "observation" in ds:
        observed = score_observation_space(ds, methods, channels=channels, skipna=skipna)
        frame = pd.concat([frame, aggregate(observed, skipna=True, **settings)], ignore_index=True)
    return frame, cycles, units


def evaluate_predictions(
    predictions: str | os.PathLike | Sequence[str | os.PathLike],
    dataset: str | os.PathLike = "era5-sample",
    *,
    split: str = "test",
    revision: str | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    name: str | None = None,
    seeds: Sequence[int] | None = None,
    members_dim: str | None = None,
    variable: str | None = None,
    regions: Sequence[str] = ("global",),
    land_sea_mask: xr.DataArray | str | os.PathLike | None = None,
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
        :mod:`dambench.scoring.predictions`). Their times must be exactly the split's cycles;
        each store once.
    dataset
        ``"era5-sample"``, a published name, a build folder or a URL (as ``open_dataset``).
    split
        ``"train"``, ``"validation"`` or ``"test"``.
    revision
        A Hub branch, tag or commit of a published dataset (``"v1.0"``).
    out
        Folder for ``scores.parquet``, ``summary.json``, ``table3.md``, ``channels.md``,
        ``regions.md``, ``observed.md`` (``ensemble.md``) and figures, written as a whole under
        a lock (:mod:`dambench.scoring.outputs`); nothing is written when ``None``.
    overwrite
        Replace earlier results in ``out`` (refused otherwise).
    name, seeds
        Row name (default: the store's ``model`` attribute or the file name) and seed labels
        (unique).
    members_dim
        The ensemble member dim (found automatically when named member/ensemble/number/
        realization): the ensemble mean is scored in Table 3, fair CRPS and spread/skill in the
        ensemble table.
    regions
        Region names or ``"box:lat_min,lat_max,lon_min,lon_max"`` (:mod:`dambench.regions`).
    land_sea_mask
        Land fraction on the grid (a DataArray, or a netCDF/Zarr path read by
        :func:`dambench.regions.open_land_sea_mask`), needed by the ``land``/``sea`` regions.
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
    paths = _as_list(predictions)
    check_unique(paths, seeds)
    region_list = _regions(regions, land_sea_mask)
    folder = ResultFolder(out, overwrite=overwrite) if out is not None else nullcontext()
    with folder:
        from dambench.load import open_dataset

        ds = open_dataset(dataset, split=split, revision=revision)
        opened = _open_all(paths, members_dim, variable, ds)
        identity = dataset_identity(dataset, revision)
        settings = {"name": name, "seeds": seeds, "skipna": skipna, "by": by}
        settings.update(reference=reference, n_resamples=n_resamples, verbose=verbose)
        report = _evaluate(ds, opened, identity, split, region_list, **settings)
        if out is not None:
            report.stage(folder)
            if figure_channel:
                from dambench.scoring.figures import stage_figures

                stage_figures(folder, ds, opened[0], figure_channel, report)
            folder.commit()
    return report


def _evaluate(
    ds, opened, identity, split, region_list, *, name, seeds, skipna, by, reference, n_resamples,
    verbose,
) -> ScoreReport:  # fmt: skip
    """Score ``opened`` on ``ds`` and assemble the report (nothing written)."""
    from dambench.load import stats_from_attrs

    seed_labels = _seed_labels(opened, seeds)
    name = name or _default_name(opened[0])
    channels = list(opened[0].channels)
    methods = _methods(opened, seed_labels, name, ds, channels, reference)
    meta = {"dataset": identity.name, "dataset_digest": identity.digest, "split": split}
    frame, cycles, units = _score(
        ds, methods, channels, stats_from_attrs(ds), region_list, skipna=skipna, by=by,
        n_resamples=n_resamples, meta=meta, verbose=verbose,
    )  # fmt: skip
    options = {
        "regions": [r.name for r in region_list],
        "land_sea_mask": _mask_source(region_list),
        "by": by,
        "skipna": skipna,
        "channel_means_over": channels,
        "run": uuid.uuid4().hex[:12],
        "warnings": scoring_notes(opened, cycles, skipna),
    }
    summary = _summary(
        frame, cycles, name=name, seeds=seed_labels, opened=opened, identity=identity,
        split=split, options=options,
    )  # fmt: skip
    ensemble = format_table(frame, ENSEMBLE_TABLE) if any(cycles.members.values()) else None
    files = _markdown_files(frame, summary, units, region_list, ensemble)
    return ScoreReport(frame, summary, format_table(frame, TABLE3), ensemble, cycles, files)


def scoring_notes(opened: Sequence[Predictions], cycles: CycleScores, skipna: bool) -> list[str]:
    """What was scored on trust or left out, in order, each once: the predictions' warnings
    (channels without units; prefixed by the store when there are several), the scorer's notes
    on values outside their channel's plausible range, and with ``skipna`` the cycles left out
    of ``n`` (:func:`~dambench.scoring.finite.left_out_notes`). Recorded in ``summary.json``
    (``warnings``) and printed by ``dambench evaluate``."""
    several = len(opened) > 1
    notes = [f"{p.location}: {w}" if several else w for p in opened for w in p.warnings]
    notes += cycles.warnings
    if skipna:
        notes += left_out_notes(cycles)
    return list(dict.fromkeys(notes))


def _mask_source(region_list) -> str | None:
    masks = [r.land_sea_mask for r in region_list if r.land_sea_mask is not None]
    return str(masks[0].attrs.get("source", "given as an array")) if masks else None
