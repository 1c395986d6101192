"""Undefined per-cycle values under ``skipna``: which cycles are left out, and paired
comparisons on the cycles defined in both series.

With ``skipna`` every non-finite prediction value is left out of the scores; a cycle whose
points of a channel are all non-finite has no value for that channel (NaN per cycle), and a
channel mean over it is undefined too. :func:`dambench.scoring.report.aggregate` leaves such
cycles out of ``n``; :func:`left_out_notes` says which, naming method, cycle and channels, and
:func:`paired_finite` compares two series on the cycles finite in both.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from dambench.exceptions import DambenchInputError
from dambench.scoring.engine import ALL_CHANNELS, CycleScores

REFERENCE_METRIC = "rmse"
"""The metric whose undefined per-cycle value means "no finite point of the channel"."""


def _undefined(cycles: CycleScores) -> dict[tuple, dict[int, set]]:
    """``{(method, seed): {cycle index: {(channel, metric), ...}}}`` of the undefined values in
    the global region, per channel (channel means follow from them)."""
    found: dict[tuple, dict[int, set]] = defaultdict(lambda: defaultdict(set))
    for (method, seed, region, channel, metric), values in cycles.values.items():
        if region != "global" or channel == ALL_CHANNELS:
            continue
        for index in np.flatnonzero(~np.isfinite(np.asarray(values, dtype=np.float64))):
            found[(method, seed)][int(index)].add((channel, metric))
    return found


def _scored_channels(cycles: CycleScores, method: str) -> list[str]:
    keys = cycles.values
    return list(dict.fromkeys(c for (m, _, r, c, _) in keys if m == method and c != ALL_CHANNELS))


def _cycle_note(who: str, when: str, pairs: set, channels: list[str]) -> str:
    empty = [c for c in channels if (c, REFERENCE_METRIC) in pairs]
    if len(empty) == len(channels):
        return (
            f"{who}: cycle {when} is entirely non-finite; it is left out of n of every score "
            "(--skipna)."
        )
    parts = [f"no finite value of {', '.join(empty)}"] if empty else []
    metrics: dict[str, list[str]] = defaultdict(list)
    for channel, metric in sorted(pairs, key=lambda p: (channels.index(p[0]), p[1])):
        if channel not in empty:
            metrics[metric].append(channel)
    parts += [f"{m} undefined for {', '.join(cs)}" for m, cs in sorted(metrics.items())]
    return (
        f"{who}: cycle {when} is left out of n of the scores it leaves undefined ("
        + "; ".join(parts)
        + "; and of the channel means over them) (--skipna)."
    )


def left_out_notes(cycles: CycleScores) -> list[str]:
    """One note per method, seed and cycle whose per-cycle value is undefined (NaN) in some
    row, naming the cycle and the channels; empty when every value is defined.

    A cycle entirely non-finite is said to be left out of ``n`` of every score; otherwise the
    note names the channels without a finite value and the metrics undefined per channel (e.g.
    a spectrum of a field with missing points).
    """
    notes = []
    times = pd.DatetimeIndex(cycles.times)
    for (method, seed), per_cycle in _undefined(cycles).items():
        several = len({s for (m, s, *_) in cycles.values if m == method}) > 1
        who = f"{method} seed {seed}" if several else method
        channels = _scored_channels(cycles, method)
        for index in sorted(per_cycle):
            when = times[index].isoformat()[:16] if index < len(times) else f"#{index}"
            notes.append(_cycle_note(who, when, per_cycle[index], channels))
    return notes


def finite_in_both(a, b) -> np.ndarray:
    """The boolean mask of the cycles where both per-cycle series ``a`` and ``b`` are finite.

    Raises
    ------
    DambenchInputError
        The series are not of one length (not the same cycles).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise DambenchInputError(
            f"A paired comparison needs per-cycle values of the same cycles; got shapes "
            f"{a.shape} and {b.shape}."
        )
    return np.isfinite(a) & np.isfinite(b)


def paired_finite(name_a, name_b, column, values_a, values_b, **kwargs) -> dict:
    """:func:`dambench.scoring.comparison.paired` on the cycles finite in both series; the
    result's ``n`` counts them and ``left_out`` the cycles dropped.

    Raises
    ------
    DambenchInputError
        No cycle is finite in both series.
    """
    from dambench.scoring.comparison import paired  # comparison may import this module

    keep = finite_in_both(values_a, values_b)
    if not keep.any():
        raise DambenchInputError(
            f"{name_a} and {name_b} have no cycle where both {column} values are defined; "
            "nothing to compare (score finite predictions, or fewer channels)."
        )
    a = np.asarray(values_a, dtype=np.float64)[keep]
    b = np.asarray(values_b, dtype=np.float64)[keep]
    return {**paired(name_a, name_b, column, a, b, **kwargs), "left_out": int((~keep).sum())}


def finite_values(values) -> np.ndarray:
    """The finite per-cycle values of ``values`` (undefined cycles left out, as in ``n``)."""
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]
