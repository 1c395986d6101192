"""Aligning every source on the daily 00 UTC assimilation cycles, with a report of missing dates.

Rules (one per kind of source):

``instant``
    the value at the cycle time exactly (ERA5 analyses, a background's valid time).
``daily``
    a product labelled by calendar day (CPC daily gauge accumulation, NOAA daily mean OLR): the
    cycle
    at day D 00 UTC takes the day labelled ``D - lag_days`` (default 1: the last complete day before
    the cycle, so no observation from after the analysis time is used).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchInputError

Kind = Literal["instant", "daily"]


def daily_cycles(
    start: str, end: str, hours: tuple[int, ...] = schema.CYCLE_HOURS_UTC
) -> pd.DatetimeIndex:
    """Cycle times from ``start`` to ``end`` (inclusive days) at ``hours`` UTC."""
    days = pd.date_range(pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize(), freq="D")
    return pd.DatetimeIndex(sorted(d + pd.Timedelta(hours=h) for d in days for h in hours))


def split_cycles(split: str) -> pd.DatetimeIndex:
    """The cycles of a benchmark split (``train``, ``validation``, ``test``)."""
    if split not in schema.SPLITS:
        raise DambenchInputError(f"Unknown {split=}; choose from {list(schema.SPLITS)}.")
    return daily_cycles(*schema.SPLITS[split])


@dataclass
class AlignmentReport:
    """Which cycles each source lacks. ``missing[source]`` lists cycle times (UTC)."""

    cycles: pd.DatetimeIndex
    missing: dict[str, list[pd.Timestamp]] = field(default_factory=dict)

    @property
    def complete(self) -> pd.DatetimeIndex:
        """Cycles that every source covers."""
        lacking = set().union(*self.missing.values()) if self.missing else set()
        return pd.DatetimeIndex([t for t in self.cycles if t not in lacking])

    def __str__(self) -> str:
        lines = [f"{len(self.cycles)} cycles, {len(self.complete)} complete"]
        for name, times in self.missing.items():
            shown = ", ".join(t.strftime("%Y-%m-%d %H:%M") for t in times[:8])
            more = f" (+{len(times) - 8} more)" if len(times) > 8 else ""
            lines.append(f"{name}: {len(times)} missing" + (f": {shown}{more}" if times else ""))
        return "\n".join(lines)


def source_times_for(cycles: pd.DatetimeIndex, kind: Kind, lag_days: int = 1) -> pd.DatetimeIndex:
    """The source time stamp each cycle needs under the ``kind`` rule."""
    if kind == "instant":
        return cycles
    if kind == "daily":
        return cycles.normalize() - pd.Timedelta(days=lag_days)
    raise DambenchInputError(f"Unknown source {kind=}; use 'instant' or 'daily'.")


def align(
    cycles: pd.DatetimeIndex,
    sources: Mapping[str, tuple[xr.DataArray | xr.Dataset, Kind]],
    *,
    lag_days: int = 1,
) -> tuple[dict[str, xr.DataArray | xr.Dataset], AlignmentReport]:
    """Put every source on ``cycles``.

    Parameters
    ----------
    cycles
        Cycle times (e.g. :func:`split_cycles`).
    sources
        ``{name: (object with a time dim, kind)}``; daily products are matched by calendar day.

    Returns
    -------
    ``({name: object indexed by the cycle times, NaN where missing}, report)``.
    """
    cycles = pd.DatetimeIndex(cycles)
    aligned = {}
    report = AlignmentReport(cycles=cycles)
    for name, (obj, kind) in sources.items():
        if schema.TIME not in obj.dims:
            raise DambenchInputError(f"Source {name!r} has no time dim (dims {tuple(obj.dims)}).")
        have = pd.DatetimeIndex(obj[schema.TIME].values)
        if kind == "daily":
            have = have.normalize()
            if have.has_duplicates:
                raise DambenchInputError(f"Source {name!r} has several values on one day.")
            obj = obj.assign_coords({schema.TIME: have.values})
        needed = source_times_for(cycles, kind, lag_days)
        present = needed.isin(have)
        report.missing[name] = [c for c, ok in zip(cycles, present, strict=True) if not ok]
        picked = obj.reindex({schema.TIME: needed.values})
        picked = picked.assign_coords({schema.TIME: cycles.values})
        picked.attrs = {
            **obj.attrs,
            "alignment": kind,
            **({"lag_days": lag_days} if kind == "daily" else {}),
        }
        aligned[name] = picked
    return aligned, report
