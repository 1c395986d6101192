"""``dambench leaderboard``: several evaluations side by side, against a reference method.

Each result is a folder written by ``dambench evaluate --out`` (its ``summary.json``). All must
share the dataset digest, split and cycles (refused otherwise); the leaderboard is made on the
channels and regions they all scored (:func:`dambench.scoring.comparison.common_ground`), with a
note saying what was left out. Every row, the reference included, is recomputed per cycle on
those channels from the per-channel values each result recorded, so no row is borrowed from a
run scored on other channels. Values are means over cycles with 95 % block-bootstrap intervals;
the last column is the paired interval of each method minus the reference.

The scorecard is WeatherBench2's: per channel and region, the relative RMSE difference to the
reference, ``100 (RMSE - RMSE_ref) / RMSE_ref`` %, negative (blue) is better; a cell is
significant when the paired interval of the per-cycle RMSE differences excludes 0.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dambench.exceptions import DambenchInputError
from dambench.scoring.bootstrap import block_bootstrap
from dambench.scoring.comparison import Common, column_series, common_ground
from dambench.scoring.engine import ALL_CHANNELS
from dambench.scoring.finite import finite_in_both, finite_values, paired_finite
from dambench.scoring.report import TABLE3, table_header


@dataclass(frozen=True)
class Row:
    """One method of the leaderboard: its ``name`` and the ``result`` holding its values."""

    name: str
    result: dict


@dataclass
class Leaderboard:
    """What :func:`leaderboard` returns: the Markdown table, the scorecard cells, the notes of
    what was restricted, and the comparisons against the reference."""

    markdown: str
    common: Common
    reference: str
    comparisons: list[dict] = field(default_factory=list)
    scorecard: list[dict] = field(default_factory=list)
    observed: str | None = None
    methods: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "reference": self.reference,
            "channels": list(self.common.channels),
            "regions": list(self.common.regions),
            "notes": list(self.common.notes),
            "comparisons": self.comparisons,
            "scorecard": self.scorecard,
        }


def load_result(folder: str | os.PathLike) -> dict:
    """The ``summary.json`` of an evaluation folder (``dambench evaluate --out``)."""
    path = Path(folder) / "summary.json"
    if not path.is_file():
        raise DambenchInputError(
            f"{folder} holds no summary.json; give folders written by dambench evaluate --out."
        )
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise DambenchInputError(f"{path} is not valid JSON ({err}); evaluate again.") from err


def load_scores(folder: str | os.PathLike) -> pd.DataFrame | None:
    """The ``scores.parquet`` of an evaluation folder, or None when it has none."""
    path = Path(folder) / "scores.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def observed_table(frames: Sequence[pd.DataFrame], board: Leaderboard) -> str | None:
    """Scores at observed and unobserved points and O-A of every leaderboard row on the common
    channels, in the leaderboard's order (each row from the first result that scored it; the
    rows each result scored beside its own, such as the dataset's ``Background``, only when
    they are leaderboard rows), headed like the leaderboard; None when no result recorded
    them."""
    from dambench.scoring.report import OBSERVED_TABLE, format_channel_table

    metrics = [metric for _, metric, _ in OBSERVED_TABLE]
    chosen = [
        f[f["metric"].isin(metrics) & (f["region"] == "global")].assign(source=k)
        for k, f in enumerate(frames)
    ]
    stacked = pd.concat([f for f in chosen if not f.empty] or [pd.DataFrame()])
    if stacked.empty:
        return None
    first = stacked.groupby("model")["source"].transform("min")
    stacked = stacked[stacked["source"] == first]  # each row from the first result holding it
    stacked = _in_order(stacked, board.methods)
    if stacked.empty:
        return None
    table = format_channel_table(stacked, board.common.channels, layout=OBSERVED_TABLE)
    head = board.markdown.split("\n|", 1)[0].split("Units:")[0]
    units = (
        "physical units of each row. Observed points: where the split's observation is finite; "
        "RMSE cos-latitude weighted; O-A mean and RMS over the observed points, unweighted (the "
        f"{board.reference} row's O-A is O-B)."
    )
    return f"{head}Units: {units}\n\n{table}"


def _in_order(frame: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """The rows of ``frame`` whose model is one of ``methods``, in that order (all rows, as
    they are, when ``methods`` is empty)."""
    if not methods:
        return frame
    parts = [frame[frame["model"] == m] for m in methods]
    return pd.concat(parts) if parts else frame.iloc[:0]


def _rows(results: Sequence[dict], reference: str) -> tuple[list[Row], Row]:
    """One row per result (its own model), and the reference row: a result's model or another
    row a result scored (``Background``), matched case-insensitively."""
    rows = [Row(str(r["model"]), r) for r in results]
    names = [row.name for row in rows]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DambenchInputError(
            f"Several results are named {twice}; give each method its own name "
            "(dambench evaluate --name)."
        )
    wanted = reference.lower()
    for row in rows:
        if row.name.lower() == wanted:
            return rows, row
    for result in results:
        for model in result.get("per_cycle_channels", {}):
            if model.lower() == wanted:
                return [Row(model, result), *rows], Row(model, result)
    scored = sorted({m for r in results for m in r.get("per_cycle_channels", {})} | set(names))
    raise DambenchInputError(f"No result holds the reference {reference!r}; scored: {scored}.")


def _columns(common: Common) -> list[str]:
    return [
        title
        for title, channel, _, _ in TABLE3
        if channel == ALL_CHANNELS or channel in common.channels
    ]


def _cell(values: np.ndarray, n_resamples: int, seed: int) -> str:
    """``mean [low, high]`` over the cycles whose value is defined (a result scored with
    ``skipna`` may hold undefined cycles; they are left out of ``n`` as in its own tables)."""
    interval = block_bootstrap(finite_values(values), n_resamples=n_resamples, seed=seed)
    return f"{interval.value:.4g} [{interval.low:.4g}, {interval.high:.4g}]"


def leaderboard(
    results: Sequence[dict],
    *,
    reference: str = "background",
    column: str = "MSE(1e-2)",
    n_resamples: int = 2000,
    seed: int = 0,
) -> Leaderboard:
    """The leaderboard of ``results`` (``summary.json`` dicts) against ``reference``.

    Parameters
    ----------
    results
        Evaluations of the same dataset digest, split and cycles.
    reference
        A result's model name or a row the results scored (``"background"``: the dataset's
        background), case-insensitive.
    column
        The Table 3 column of the paired comparison against the reference.
    """
    common = common_ground(results)
    rows, ref = _rows(results, reference)
    columns = _columns(common)
    if column not in columns:
        raise DambenchInputError(f"Column {column!r} not available; choose from {columns}.")
    ref_series = column_series(ref.result, ref.name, column, common.channels)
    body, comparisons = [], []
    for row in rows:
        values = [
            _cell(column_series(row.result, row.name, c, common.channels), n_resamples, seed)
            for c in columns
        ]
        series = column_series(row.result, row.name, column, common.channels)
        if row == ref:
            values.append("reference")
        else:
            found = paired_finite(row.name, ref.name, column, series, ref_series, seed=seed)
            comparisons.append(found)
            low, high = found["ci_low"], found["ci_high"]
            values.append(f"{found['difference']:+.4g} [{low:.4g}, {high:.4g}]")
        body.append(f"| {row.name} | " + " | ".join(values) + " |")
    head = ["Method", *columns, f"{column} - {ref.name} (paired 95 %)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *body]
    markdown = _heading(results[0], common, ref.name) + "\n" + "\n".join(lines)
    cells = scorecard_cells(rows, ref, common, n_resamples=n_resamples, seed=seed)
    methods = [row.name for row in rows]
    return Leaderboard(markdown, common, ref.name, comparisons, cells, methods=methods)


def _heading(first: dict, common: Common, reference: str) -> str:
    meta = {**first, "dataset": first["dataset"]["name"], "channels": list(common.channels)}
    meta["digest_kind"] = first["dataset"].get("digest_kind")
    meta.pop("run", None)
    units = (
        "SpecDiv (1), MSE(1e-2) and MAE(1e-2) on normalised fields averaged over the channels "
        f"{', '.join(common.channels)}; RMSE in physical units. Per-cycle values averaged over "
        f"seeds; mean [95 % block-bootstrap interval]; reference {reference}."
    )
    notes = "".join(f"Note: {note}.\n" for note in common.notes)
    return table_header(meta, units) + notes


def scorecard_cells(
    rows: Sequence[Row], ref: Row, common: Common, *, n_resamples: int = 2000, seed: int = 0
) -> list[dict]:
    """Per method (but the reference), channel and region: the relative RMSE difference to the
    reference in %, the paired interval of the RMSE difference and whether it excludes 0."""
    cells = []
    for row in rows:
        if row == ref:
            continue
        for channel in common.channels:
            for region in common.regions:
                cells.append(_scorecard_cell(row, ref, channel, region, n_resamples, seed))
    return cells


def _scorecard_cell(row: Row, ref: Row, channel: str, region: str, n_resamples, seed) -> dict:
    column = f"RMSE {channel}"
    mine = _rmse_series(row, channel, region)
    theirs = _rmse_series(ref, channel, region)
    found = paired_finite(
        row.name, ref.name, column, mine, theirs, seed=seed, n_resamples=n_resamples
    )
    keep = finite_in_both(mine, theirs)
    mine, theirs = mine[keep], theirs[keep]
    base = float(np.mean(theirs))
    return {
        "method": row.name,
        "channel": channel,
        "region": region,
        "relative_pct": 100.0 * (float(np.mean(mine)) - base) / base,
        "difference": found["difference"],
        "ci": [found["ci_low"], found["ci_high"]],
        "significant": not found["ci_low"] <= 0 <= found["ci_high"],
    }


def _rmse_series(row: Row, channel: str, region: str) -> np.ndarray:
    recorded = row.result.get("per_cycle_channels", {}).get(row.name, {})
    try:
        return np.asarray(recorded[region]["rmse"][channel], dtype=np.float64)
    except KeyError as err:
        raise DambenchInputError(
            f"{row.result.get('model')} holds no per-cycle RMSE of {row.name!r} for {channel} in "
            f"region {region!r}; evaluate it again with this dambench."
        ) from err


def format_scorecard(cells: Sequence[dict], reference: str) -> str:
    """The scorecard's numbers as a Markdown table: one row per (method, channel), one column
    per region, ``+1.2 %*`` (``*``: the paired interval excludes 0)."""
    regions = list(dict.fromkeys(c["region"] for c in cells))
    keys = list(dict.fromkeys((c["method"], c["channel"]) for c in cells))
    lookup = {(c["method"], c["channel"], c["region"]): c for c in cells}
    lines = [
        f"RMSE relative to {reference}, 100 (RMSE - RMSE_ref) / RMSE_ref %; negative is better; "
        "* the paired 95 % interval of the per-cycle differences excludes 0.\n",
        "| Method | Channel | " + " | ".join(regions) + " |",
        "|" + "---|" * (len(regions) + 2),
    ]
    for method, channel in keys:
        texts = []
        for region in regions:
            cell = lookup[(method, channel, region)]
            texts.append(f"{cell['relative_pct']:+.2f} %" + ("*" if cell["significant"] else ""))
        lines.append(f"| {method} | {channel} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def write_leaderboard(
    board: Leaderboard, out: str | os.PathLike, *, overwrite: bool = False
) -> list[Path]:
    """``leaderboard.md``, ``leaderboard.json``, ``scorecard.md`` and ``scorecard.png`` in
    ``out``, replaced as a whole under a lock (:class:`~dambench.scoring.outputs.ResultFolder`)."""
    from dambench.scoring.outputs import LEADERBOARD_NAMES, ResultFolder, figure_bytes
    from dambench.scoring.scorecard import plot_scorecard

    text = json.dumps(board.to_dict(), indent=2, default=str) + "\n"
    with ResultFolder(out, overwrite=overwrite, names=LEADERBOARD_NAMES) as folder:
        folder.write("leaderboard.md", (board.markdown + "\n").encode())
        folder.write("leaderboard.json", text.encode())
        if board.observed:
            folder.write("observed.md", (board.observed + "\n").encode())
        if board.scorecard:
            card = format_scorecard(board.scorecard, board.reference)
            folder.write("scorecard.md", (card + "\n").encode())
            figure = plot_scorecard(board.scorecard, board.reference)
            folder.write("scorecard.png", figure_bytes(figure, "leaderboard"))
        return folder.commit()
