"""Comparable or refused: every comparison of results is made on what they share.

Two results (``summary.json`` dicts of :func:`dambench.evaluate_predictions`) are compared only
when they were scored on the same dataset digest, split and cycles (refused otherwise, naming
the difference), and then on the channels and regions both scored: a column averaged over
channels (MSE, MAE, SpecDiv) is recomputed per cycle over the common channels from the
per-channel per-cycle values each result records (``per_cycle_channels``), with a note saying
what was left out. So a submission of the easy channels only is compared with a full one on
those channels alone, and identical fields compare equal whatever else was submitted beside
them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dambench.exceptions import DambenchInputError
from dambench.scoring.bootstrap import paired_difference
from dambench.scoring.engine import ALL_CHANNELS
from dambench.scoring.finite import finite_in_both, paired_finite
from dambench.scoring.report import TABLE3

PER_CHANNEL_METRICS = ("spec_div", "mse_norm", "mae_norm", "rmse")
"""Metrics whose per-cycle values are recorded per channel and region in ``summary.json``
(``per_cycle_channels[model][region][metric][channel]``), enough to rebuild every Table 3
column over any subset of the channels."""
_COLUMNS = {title: (channel, metric, scale) for title, channel, metric, scale in TABLE3}


@dataclass(frozen=True)
class Common:
    """What a set of results shares: ``channels`` and ``regions`` (in the first result's
    order), and ``notes`` saying what each result scored beyond them."""

    channels: tuple[str, ...]
    regions: tuple[str, ...]
    notes: tuple[str, ...]


def _model(result: dict) -> str:
    return str(result.get("model"))


def check_same_data(results: Sequence[dict]) -> None:
    """Refuse results of different dataset digests, splits or cycles, naming the difference
    (:func:`dambench.scoring.identity.check_same_data` against the first)."""
    from dambench.scoring.identity import check_same_data as check_pair

    for other in results[1:]:
        check_pair(results[0], other)


def _shared(results: Sequence[dict], key: str, default: list) -> tuple[tuple, list[str]]:
    lists = [list(r.get(key) or default) for r in results]
    common = tuple(x for x in lists[0] if all(x in other for other in lists))
    notes = []
    for result, own in zip(results, lists, strict=True):
        extra = [x for x in own if x not in common]
        if extra:
            notes.append(f"{_model(result)} also scored {key} {', '.join(map(str, extra))}")
    return common, notes


def common_ground(results: Sequence[dict]) -> Common:
    """The channels and regions every result scored (same data required: refused otherwise).

    Raises
    ------
    DambenchInputError
        Different dataset digests, splits or cycles; no channel in common; or a result without
        per-channel values (scored before they were recorded) whose channels must be restricted.
    """
    if not results:
        raise DambenchInputError("Nothing to compare: give at least one result.")
    check_same_data(results)
    channels, channel_notes = _shared(results, "channels", [])
    if not channels:
        listed = "; ".join(f"{_model(r)}: {', '.join(r.get('channels') or [])}" for r in results)
        raise DambenchInputError(f"The results share no channel ({listed}); nothing to compare.")
    regions, region_notes = _shared(results, "regions", ["global"])
    notes = channel_notes + region_notes
    if channel_notes:
        old = [_model(r) for r in results if "per_cycle_channels" not in r]
        if old:
            raise DambenchInputError(
                f"{', '.join(old)} recorded no per-channel values (scored by an older dambench), "
                f"so it cannot be compared on the common channels {', '.join(channels)}; score "
                "it again."
            )
        notes.insert(0, f"compared on the common channels {', '.join(channels)}")
    return Common(channels, regions, tuple(notes))


def column_series(
    result: dict,
    model: str,
    column: str,
    channels: Sequence[str],
    region: str = "global",
) -> np.ndarray:
    """Per-cycle values of Table 3 ``column`` of ``model`` in ``result``, over ``channels``.

    A column averaged over channels (``SpecDiv``, ``MSE(1e-2)``, ``MAE(1e-2)``) is the per-cycle
    mean over ``channels``; ``RMSE <c>`` needs ``c`` in ``channels``. Results without
    per-channel values serve only their own channels, globally.
    """
    if column not in _COLUMNS:
        raise DambenchInputError(f"Unknown column {column!r}; choose from {list(_COLUMNS)}.")
    channel, metric, scale = _COLUMNS[column]
    if channel != ALL_CHANNELS and channel not in channels:
        raise DambenchInputError(
            f"{column} is not among the compared channels {', '.join(channels)}."
        )
    recorded = result.get("per_cycle_channels")
    if recorded is None:
        if list(channels) != list(result["channels"]) or region != "global":
            raise DambenchInputError(
                f"{_model(result)} recorded no per-channel values; score it again to compare "
                "it on other channels or regions."
            )
        return np.asarray(result["per_cycle"][model][column], dtype=np.float64)
    try:
        per_channel = recorded[model][region][metric]
    except KeyError as err:
        raise DambenchInputError(
            f"{_model(result)} holds no per-cycle {metric} of {model!r} in region {region!r}."
        ) from err
    picked = channels if channel == ALL_CHANNELS else [channel]
    missing = [c for c in picked if c not in per_channel]
    if missing:
        raise DambenchInputError(
            f"{_model(result)} holds no per-cycle {metric} of {model!r} for {missing} in "
            f"region {region!r}."
        )
    stacked = np.stack([np.asarray(per_channel[c], dtype=np.float64) for c in picked])
    return scale * stacked.mean(axis=0)


def paired(name_a, name_b, column, values_a, values_b, seed: int = 0, **kwargs) -> dict:
    """The paired block-bootstrap interval of ``a - b`` with a verdict in words."""
    interval = paired_difference(values_a, values_b, seed=seed, **kwargs)
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


def compare(
    a: dict,
    b: dict,
    column: str = "MSE(1e-2)",
    *,
    seed: int = 0,
    region: str = "global",
    model_a: str | None = None,
    model_b: str | None = None,
) -> dict:
    """Paired block-bootstrap interval of ``a - b`` on ``column`` for two ``summary.json``
    results, on the channels and regions both scored.

    Results of other dataset digests, splits or cycles are refused. When their channels differ,
    the comparison is restricted to the common ones, with a warning; the returned dict records
    ``channels`` and ``notes``. ``model_a``/``model_b`` pick another row of a result (e.g.
    ``"Background"``); default: each result's own model.
    """
    common = common_ground([a, b])
    if region not in common.regions:
        raise DambenchInputError(
            f"Region {region!r} was not scored by both results (common: {list(common.regions)})."
        )
    name_a, name_b = model_a or _model(a), model_b or _model(b)
    values_a = column_series(a, name_a, column, common.channels, region)
    values_b = column_series(b, name_b, column, common.channels, region)
    for note in common.notes:
        warnings.warn(f"{name_a} vs {name_b}: {note}.", UserWarning, stacklevel=2)
    result = paired_finite(name_a, name_b, column, values_a, values_b, seed=seed)
    shared = {"region": region, "channels": list(common.channels), "notes": list(common.notes)}
    return {**result, **shared}


def relative_improvement(
    a: dict,
    b: dict,
    column: str = "MSE(1e-2)",
    *,
    seed: int = 0,
    model_a: str | None = None,
    model_b: str | None = None,
) -> dict:
    """``100 (1 - mean(a) / mean(b))`` % on ``column`` (Table 4's Imp of ``a`` over ``b``), with
    a paired block-bootstrap interval over the same cycles, on the channels both scored (a
    warning says what was left out; other data are refused as in :func:`compare`)."""
    from dambench.scoring.bootstrap import block_bootstrap

    common = common_ground([a, b])
    name_a, name_b = model_a or _model(a), model_b or _model(b)
    values_a = column_series(a, name_a, column, common.channels)
    values_b = column_series(b, name_b, column, common.channels)
    for note in common.notes:
        warnings.warn(f"{name_a} vs {name_b}: {note}.", UserWarning, stacklevel=2)
    keep = finite_in_both(values_a, values_b)
    if not keep.any():
        raise DambenchInputError(
            f"{name_a} and {name_b} have no cycle where both {column} values are defined; "
            "nothing to compare."
        )
    values_a, values_b = values_a[keep], values_b[keep]
    interval = block_bootstrap(
        np.stack([values_b, values_a], axis=1),
        statistic=lambda means: 100 * (1 - means[..., 1] / means[..., 0]),
        seed=seed,
    )
    return {
        "value": interval.value,
        "ci": [interval.low, interval.high],
        "n": interval.n,
        "block_length": interval.block_length,
        "channels": list(common.channels),
        "notes": list(common.notes),
        "left_out": int((~keep).sum()),
    }
