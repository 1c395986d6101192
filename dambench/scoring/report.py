"""Aggregate per-cycle scores into the benchmark's outputs: a long, tidy score table
(``scores.parquet``), the paper's Table 3 layout and an ensemble table (Markdown).

Every aggregated value is the mean over cycles of a per-cycle value (RMSE: per cycle, then the
mean, the benchmark protocol), with a circular block-bootstrap interval over the cycles
(:mod:`dambench.scoring.bootstrap`; the block length is recorded in each row). With several
seeds, rows per seed are followed by a row with ``seed`` missing: the mean over seeds, the
interval of the seed-averaged per-cycle values and ``std_over_seeds``. The spread/skill ratio is
``sqrt((N + 1) / N * mean(ensemble variance) / mean(ensemble-mean MSE))``, cos-latitude weighted
(the ``(N + 1) / N`` factor makes a perfectly reliable N-member ensemble score 1).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pandas as pd

from dambench import schema
from dambench.metrics import metric_units
from dambench.regions import period_labels
from dambench.scoring.bootstrap import block_bootstrap
from dambench.scoring.engine import ALL_CHANNELS, CycleScores

COLUMNS = [
    "model",
    "seed",
    "dataset",
    "dataset_digest",
    "split",
    "channel",
    "metric",
    "units",
    "region",
    "period",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "block_length",
    "std_over_seeds",
]
SPREAD_SKILL = {
    "spread_skill": ("ens_var", "ens_mse"),
    "spread_skill_norm": ("ens_var_norm", "ens_mse_norm"),
}
ENSEMBLE_PARTS = ("ens_var", "ens_mse", "ens_var_norm", "ens_mse_norm")
TABLE3 = [
    ("SpecDiv", ALL_CHANNELS, "spec_div", 1.0),
    ("MSE(1e-2)", ALL_CHANNELS, "mse_norm", 100.0),
    ("MAE(1e-2)", ALL_CHANNELS, "mae_norm", 100.0),
    *((f"RMSE {c}", c, "rmse", 1.0) for c in schema.HEADLINE_CHANNELS),
]
"""The paper's Table 3: (column title, channel, metric, scale)."""
ENSEMBLE_TABLE = [
    ("CRPS(1e-2)", ALL_CHANNELS, "crps_norm", 100.0),
    ("Spread/skill", ALL_CHANNELS, "spread_skill_norm", 1.0),
    *((f"CRPS {c}", c, "crps", 1.0) for c in schema.HEADLINE_CHANNELS),
]
"""The ensemble table: fair CRPS (normalised over all channels, and per headline channel in
physical units) and the spread/skill ratio."""


FIELD_UNIT_STATISTICS = frozenset({"rmse_observed", "rmse_unobserved", "oma_mean", "oma_rms"})
"""Observation-space statistics (:mod:`dambench.scoring.obsspace`), in the field's units."""


def _units(channel: str, metric: str, channel_units: dict[str, str]) -> str:
    if metric in SPREAD_SKILL or channel == ALL_CHANNELS:
        return "1"
    rule = "rmse" if metric in FIELD_UNIT_STATISTICS else metric
    return metric_units(rule, channel_units.get(channel, "1"))


def _period_groups(times: pd.DatetimeIndex, by: str | None) -> dict[str, np.ndarray]:
    groups = {"all": np.arange(len(times))}
    if by:
        labels = np.asarray(period_labels(times.values, by=by))
        for label in dict.fromkeys(labels.tolist()):
            groups[str(label)] = np.flatnonzero(labels == label)
    return groups


def _finite_cycles(series: np.ndarray, skipna: bool) -> np.ndarray:
    """With ``skipna``, the cycles whose value is undefined (e.g. a spectrum of a field with
    NaN) are left out and ``n`` counts the rest; otherwise a NaN reaches the bootstrap, which
    refuses it."""
    if not skipna:
        return series
    finite = np.isfinite(series).reshape(series.shape[0], -1).all(axis=1)
    return series[finite]


def _interval(series: np.ndarray, statistic, n_resamples: int, seed: int) -> dict:
    if series.shape[0] == 0:
        nan = float("nan")
        return {"value": nan, "ci_low": nan, "ci_high": nan, "n": 0, "block_length": 0}
    result = block_bootstrap(series, statistic=statistic, n_resamples=n_resamples, seed=seed)
    return {
        "value": result.value,
        "ci_low": result.low,
        "ci_high": result.high,
        "n": result.n,
        "block_length": result.block_length,
    }


def _series_by_metric(scores: CycleScores) -> dict[tuple, dict[int | None, np.ndarray]]:
    """{(method, region, channel, metric): {seed: (n_cycles,) or (n_cycles, 2) values}}."""
    out: dict[tuple, dict] = defaultdict(dict)
    for (method, seed, region, channel, metric), values in scores.values.items():
        out[(method, region, channel, metric)][seed] = np.asarray(values, dtype=np.float64)
    for (method, region, channel, metric), per_seed in list(out.items()):
        for ratio, (var, mse) in SPREAD_SKILL.items():
            if metric != var or (method, region, channel, mse) not in out:
                continue
            n = scores.members[method]
            partner = out[(method, region, channel, mse)]
            out[(method, region, channel, ratio)] = {
                s: np.stack([per_seed[s] * (n + 1) / n, partner[s]], axis=1) for s in per_seed
            }
    return out


def _statistic(metric: str):
    if metric in SPREAD_SKILL:
        return lambda means: np.sqrt(means[..., 0] / means[..., 1])
    return None


def aggregate(
    scores: CycleScores,
    *,
    meta: dict,
    channel_units: dict[str, str],
    by: str | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    skipna: bool = False,
) -> pd.DataFrame:
    """The tidy score table (columns :data:`COLUMNS`) of per-cycle ``scores``.

    ``meta`` gives ``dataset``, ``dataset_digest`` and ``split`` for every row; with ``skipna``
    cycles whose value is NaN are left out of that row (``n`` says how many remain).
    """
    times = pd.DatetimeIndex(scores.times)
    groups = _period_groups(times, by)
    rows = []
    for (method, region, channel, metric), per_seed in _series_by_metric(scores).items():
        if metric in ENSEMBLE_PARTS:
            continue
        statistic = _statistic(metric)
        units = _units(channel, metric, channel_units)
        base = {"model": method, "channel": channel, "metric": metric, "region": region}
        base.update(units=units, **meta)
        for period, index in groups.items():
            for seed_label, series in per_seed.items():
                values = _finite_cycles(series[index], skipna)
                entry = _interval(values, statistic, n_resamples, seed)
                rows.append({**base, "seed": seed_label, "period": period, **entry})
            if len(per_seed) > 1:
                chosen = {k: v[index] for k, v in per_seed.items()}
                rows.append(_seed_mean_row(base, period, chosen, statistic, n_resamples, skipna))
    frame = pd.DataFrame(rows).reindex(columns=COLUMNS)
    frame["seed"] = frame["seed"].astype("Int64")
    return frame


def _seed_mean_row(base, period, per_seed, statistic, n_resamples, skipna) -> dict:
    stacked = np.stack(list(per_seed.values()), axis=1)  # (n_cycles, n_seeds[, 2])
    stacked = _finite_cycles(stacked, skipna)
    means = np.array(
        [_interval(stacked[:, k], statistic, 2, 0)["value"] for k in range(stacked.shape[1])]
    )
    entry = _interval(stacked.mean(axis=1), statistic, n_resamples, 0)
    entry["value"] = float(means.mean())
    return {
        **base,
        "seed": None,
        "period": period,
        **entry,
        "std_over_seeds": float(means.std(ddof=1)),
    }


def _row_for(frame: pd.DataFrame, model: str, region: str, period: str) -> pd.DataFrame:
    chosen = frame[
        (frame["model"] == model) & (frame["region"] == region) & (frame["period"] == period)
    ]
    seeds = chosen["seed"]
    if seeds.isna().any():
        return chosen[seeds.isna()]
    return chosen


def _cell(rows: pd.DataFrame, channel: str, metric: str, scale: float) -> str | None:
    hit = rows[(rows["channel"] == channel) & (rows["metric"] == metric)]
    if hit.empty:
        return None
    row = hit.iloc[0]
    text = f"{scale * row['value']:.4g}"
    if pd.notna(row["std_over_seeds"]):
        text += f" ± {scale * row['std_over_seeds']:.2g}"
    return f"{text} [{scale * row['ci_low']:.4g}, {scale * row['ci_high']:.4g}]"


def format_table(
    frame: pd.DataFrame,
    layout: Sequence[tuple] = TABLE3,
    *,
    region: str = "global",
    period: str = "all",
    models: Sequence[str] | None = None,
) -> str:
    """Markdown table (one row per model) in ``layout`` (:data:`TABLE3` or
    :data:`ENSEMBLE_TABLE`): ``mean [low, high]`` (``± std`` over seeds when several); columns
    with no value for any model are left out."""
    models = list(models or dict.fromkeys(frame["model"]))
    body, used = {}, set()
    for model in models:
        rows = _row_for(frame, model, region, period)
        cells = {title: _cell(rows, ch, metric, scale) for title, ch, metric, scale in layout}
        body[model] = cells
        used |= {t for t, c in cells.items() if c is not None}
    columns = [t for t, *_ in layout if t in used]
    lines = ["| Method | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for model, cells in body.items():
        if any(cells[c] is not None for c in columns):
            lines.append(f"| {model} | " + " | ".join(cells[c] or "-" for c in columns) + " |")
    return "\n".join(lines)


CHANNEL_TABLE = [
    ("RMSE", "rmse", 1.0),
    ("MAE", "mae", 1.0),
    ("Bias", "bias", 1.0),
    ("SpecDiv", "spec_div", 1.0),
    ("SpecRes", "spec_res", 1.0),
    ("MSE(1e-2) normalised", "mse_norm", 100.0),
]
"""The per-channel table: (column title, metric, scale); physical units per row."""
OBSERVED_TABLE = [
    ("RMSE observed", "rmse_observed", 1.0),
    ("RMSE unobserved", "rmse_unobserved", 1.0),
    ("O-A mean", "oma_mean", 1.0),
    ("O-A RMS", "oma_rms", 1.0),
]
"""Scores at observed and unobserved points and O-A statistics (O-B in the Background row)."""


def table_header(meta: dict, units: str) -> str:
    """The lines heading every Markdown table of an evaluation: dataset, digest, split, cycles,
    channels and the units of the values (``units``)."""
    digest = str(meta.get("dataset_digest", ""))
    kind = meta.get("digest_kind")
    times = meta.get("times") or []
    span = f", {len(times)} cycles {times[0][:16]} .. {times[-1][:16]}" if times else ""
    lines = [
        f"Dataset {meta.get('dataset')}, digest {digest[:16]}"
        + (f" ({kind})" if kind else "")
        + f", split {meta.get('split')}{span}; channels {', '.join(meta.get('channels', []))}.",
        f"Units: {units}",
    ]
    if meta.get("run"):
        lines.append(f"Evaluation run {meta['run']}; mean [95 % block-bootstrap interval].")
    return "\n".join(lines) + "\n"


def channel_units_text(channel_units: dict[str, str]) -> str:
    """``u10 m s-1, t2m K, ...``."""
    return ", ".join(f"{c} {u or '?'}" for c, u in channel_units.items())


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def format_channel_table(
    frame: pd.DataFrame, channels: Sequence[str], *, layout=CHANNEL_TABLE, region="global"
) -> str:
    """Markdown table, one row per (model, channel): ``layout`` columns (default
    :data:`CHANNEL_TABLE`), the units of the row's RMSE/MAE/Bias in a ``Units`` column."""
    models = list(dict.fromkeys(frame["model"]))
    rows = []
    for model in models:
        chosen = _row_for(frame, model, region, "all")
        for channel in channels:
            cells = [_cell(chosen, channel, metric, scale) for _, metric, scale in layout]
            if all(c is None for c in cells):
                continue
            units = chosen[(chosen["channel"] == channel) & (chosen["metric"] == layout[0][1])]
            unit = units["units"].iloc[0] if not units.empty else ""
            rows.append([model, channel, unit, *(c or "-" for c in cells)])
    return _markdown(["Method", "Channel", "Units", *(t for t, *_ in layout)], rows)


def format_region_table(
    frame: pd.DataFrame, channels: Sequence[str], regions: Sequence[str], metric: str = "rmse"
) -> str:
    """Markdown table, one row per (model, region): ``metric`` of each channel (physical
    units, named in the header)."""
    models = list(dict.fromkeys(frame["model"]))
    rows = []
    for model in models:
        for region in regions:
            chosen = _row_for(frame, model, region, "all")
            cells = [_cell(chosen, channel, metric, 1.0) for channel in channels]
            if any(c is not None for c in cells):
                rows.append([model, region, *(c or "-" for c in cells)])
    titles = [f"{metric.upper()} {c}" for c in channels]
    return _markdown(["Method", "Region", *titles], rows)
