"""The ``Background`` contract shared by every background producer.

A *background* (first guess, prior) is the state the assimilation starts from. Every producer in
this package answers one question: *what is the background valid at time t?*

Time convention
---------------
``at(times)`` takes **valid times** (UTC, timezone-naive). The returned field's ``time`` coordinate
holds exactly the requested valid times, in the requested order, so it lines up with the target
without any shift. A forecast background valid at ``t`` with a lead of ``L`` hours was started
from information at ``t - L``; that initial (source) time is recorded per time in the non-index
coordinate ``init_time`` (absent for climatology, which has no initial time). This makes the
upstream FengWu bug (a "+24 h" background that was valid 12 h late) impossible to repeat silently:
the valid time is asserted by construction, not inferred from a loop count.

Result layout
-------------
A DataArray named ``"background"`` with dims ``(time, channel, latitude, longitude)``, channel
coordinates from :func:`dambench.channels.channel_coords` (``variable``, ``level``, ``units``), on
the requested grid (the canonical 1.5 degree grid by default), in physical units, and ``attrs``
recording how it was made: ``method``, ``source`` and, wherever there is an ``init_time``,
``lead_hours`` (float hours; see :func:`lead_attrs`).
"""

from __future__ import annotations

import abc
import datetime as _dt
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, TypeAlias, runtime_checkable

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.channels import channel_coords, check_channel_names
from dambench.exceptions import DambenchInputError, DambenchSchemaError
from dambench.grid import Grid, to_canonical
from dambench.regrid import on_grid, regrid

TimesLike: TypeAlias = (
    str
    | _dt.datetime
    | np.datetime64
    | pd.Timestamp
    | Sequence[Any]
    | np.ndarray
    | pd.DatetimeIndex
    | xr.DataArray
)
"""Anything :func:`as_times` turns into valid times: one time or a sequence of them."""

TimedeltaLike: TypeAlias = str | _dt.timedelta | np.timedelta64 | pd.Timedelta
"""A duration: ``"24h"``, ``datetime.timedelta(hours=24)``, ``np.timedelta64(24, "h")``."""

BACKGROUND_NAME = "background"
INIT_TIME = "init_time"
"""Non-index coordinate along ``time``: when the information a background uses was valid."""


@runtime_checkable
class Background(Protocol):
    """Produces the background valid at given times.

    ``at(times)`` returns a DataArray ``(time, channel, latitude, longitude)`` whose ``time``
    coordinate equals the requested valid times, with channel coordinates and ``attrs``
    ``method``, ``source`` and (for forecasts and persistence) ``lead_hours``. It raises a
    :class:`~dambench.exceptions.DambenchInputError` naming any time it cannot serve.
    """

    def at(self, times: TimesLike) -> xr.DataArray: ...


class BackgroundBase(abc.ABC):
    """Base class for background producers: normalises times, finishes and labels the result.

    Subclasses implement :meth:`_at` (exactly one form of input: a ``pd.DatetimeIndex`` of valid
    times) and :meth:`_attrs`. Instances are also :class:`dambench.sources.base.Source` objects:
    ``background(times, channels)`` is ``background.at(times)`` restricted to ``channels``.
    """

    method: ClassVar[str] = "background"
    grid: Grid | None = None

    def at(self, times: TimesLike) -> xr.DataArray:
        """The background valid at ``times``.

        Parameters
        ----------
        times
            Valid times (UTC): one time or a sequence; strings are parsed by pandas.

        Returns
        -------
        DataArray ``(time, channel, latitude, longitude)`` named ``"background"`` whose ``time``
        coordinate is ``times``, in physical units; ``attrs`` record how it was made.
        """
        valid = as_times(times)
        field = self._at(valid)
        return finish_background(field, valid, grid=self.grid, attrs=self._attrs())

    def __call__(self, times: TimesLike, channels: Sequence[str] | None = None) -> xr.DataArray:
        """:meth:`at` restricted to ``channels`` (the :class:`~dambench.sources.base.Source`
        contract)."""
        out = self.at(times)
        if channels is None:
            return out
        names = check_channel_names(channels)
        missing = [c for c in names if c not in out[schema.CHANNEL].values]
        if missing:
            raise DambenchSchemaError(
                f"{type(self).__name__} lacks channels {missing}; it provides "
                f"{out[schema.CHANNEL].values.tolist()}."
            )
        return out.sel({schema.CHANNEL: list(names)})

    @abc.abstractmethod
    def _at(self, valid: pd.DatetimeIndex) -> xr.DataArray:
        """Stacked field for ``valid``, any grid, optionally with an ``init_time`` coord."""

    @abc.abstractmethod
    def _attrs(self) -> dict[str, Any]:
        """Attributes describing how the background is made (netCDF-serialisable values)."""


# --- input normalisation ----------------------------------------------------------------------


def as_times(times: TimesLike) -> pd.DatetimeIndex:
    """Turn one time or a sequence of times into a timezone-naive ``DatetimeIndex`` (UTC).

    Raises
    ------
    DambenchInputError
        Unparseable, empty, missing (NaT) or duplicated times.
    """
    if isinstance(times, xr.DataArray):
        times = times.values
    if isinstance(times, (str, _dt.datetime, np.datetime64, pd.Timestamp)):
        times = [times]
    try:
        if isinstance(times, np.ndarray) and times.dtype.kind == "M":
            index = pd.DatetimeIndex(np.atleast_1d(times))
        else:
            index = pd.DatetimeIndex([pd.Timestamp(t) for t in times])
    except (TypeError, ValueError) as err:
        raise DambenchInputError(f"Cannot read times {times!r} as datetimes ({err}).") from err
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    index = index.as_unit("ns")
    if len(index) == 0:
        raise DambenchInputError("No times requested; pass at least one valid time.")
    if index.hasnans:
        raise DambenchInputError(f"Times contain NaT: {list(index)}.")
    if index.has_duplicates:
        dupes = sorted({str(t) for t in index[index.duplicated()]})
        raise DambenchInputError(f"Duplicate times requested: {dupes}.")
    return index


def as_timedelta(value: TimedeltaLike, name: str) -> pd.Timedelta:
    """Parse a duration (``"24h"``, ``timedelta``, ``np.timedelta64``); numbers are refused
    because their unit would be a guess."""
    if isinstance(value, (bool, int, float, np.integer, np.floating)):
        raise DambenchInputError(
            f"{name}={value!r} is a bare number; give a duration such as '24h' or "
            "datetime.timedelta(hours=24)."
        )
    try:
        delta = pd.Timedelta(value)
    except (TypeError, ValueError) as err:
        raise DambenchInputError(f"Cannot read {name}={value!r} as a duration ({err}).") from err
    if pd.isna(delta):
        raise DambenchInputError(f"{name} is NaT.")
    return delta


def hours(delta: pd.Timedelta | np.timedelta64) -> float:
    """A duration in hours, as a float."""
    return float(pd.Timedelta(delta) / pd.Timedelta(hours=1))


def format_times(times: Sequence[Any] | pd.DatetimeIndex, limit: int = 6) -> str:
    """Short human-readable list of times for error messages (first ``limit`` shown)."""
    index = pd.DatetimeIndex(times)
    shown = ", ".join(t.strftime("%Y-%m-%d %H:%M") for t in index[:limit])
    more = f" (+{len(index) - limit} more)" if len(index) > limit else ""
    return f"[{shown}]{more}"


# --- finishing the result ---------------------------------------------------------------------


def finish_background(
    field: xr.DataArray,
    valid: pd.DatetimeIndex,
    *,
    grid: Grid | None,
    attrs: dict[str, Any],
) -> xr.DataArray:
    """Give a producer's raw field the background layout.

    Puts ``field`` in canonical form (orientation, dim order), labels ``time`` with the valid
    times ``valid`` (the field must hold one entry per valid time, in that order), orders channels
    as the schema does with full channel coordinates, regrids conservatively to ``grid`` unless it
    is ``None`` or already matches, and sets the name and ``attrs``.
    """
    field = to_canonical(field)
    if set(field.dims) != set(schema.CANONICAL_DIMS):
        raise DambenchSchemaError(
            f"A background needs dims {schema.CANONICAL_DIMS}, got {tuple(field.dims)}."
        )
    if field.sizes[schema.TIME] != len(valid):
        raise DambenchSchemaError(
            f"Background has {field.sizes[schema.TIME]} times for {len(valid)} valid times."
        )
    field = field.assign_coords({schema.TIME: valid.values})
    attrs = {**attrs, **lead_attrs(field)}
    field = _schema_channel_order(field)
    if grid is not None and not on_grid(field, grid):
        field = regrid(field, grid)
    field = field.transpose(*schema.CANONICAL_DIMS)
    field.name = BACKGROUND_NAME
    field.attrs = dict(attrs)
    return field


def lead_attrs(field: xr.DataArray) -> dict[str, float]:
    """``lead_hours`` from the ``init_time`` coordinate (valid minus init time, hours).

    One lead for all times gives ``{"lead_hours": L}``; differing leads (persistence on an
    irregular series) give the median plus ``lead_hours_min`` and ``lead_hours_max``. Without an
    ``init_time`` coordinate (climatology) the result is empty.
    """
    if INIT_TIME not in field.coords:
        return {}
    valid = pd.DatetimeIndex(field[schema.TIME].values)
    init = pd.DatetimeIndex(field[INIT_TIME].values)
    leads = np.asarray((valid - init) / pd.Timedelta(hours=1), dtype=np.float64)
    out = {"lead_hours": float(np.median(leads))}
    if leads.min() != leads.max():
        out.update(lead_hours_min=float(leads.min()), lead_hours_max=float(leads.max()))
    return out


def _schema_channel_order(field: xr.DataArray) -> xr.DataArray:
    names = [str(c) for c in field[schema.CHANNEL].values]
    ordered = sorted(names, key=lambda c: schema.CHANNEL_INDEX.get(c, -1))
    if ordered != names:
        field = field.sel({schema.CHANNEL: ordered})
    coords = channel_coords(ordered)
    if "units" in field.coords:
        coords["units"] = field["units"]
    return field.assign_coords(coords)
