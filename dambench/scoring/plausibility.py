"""Refuse fields that cannot be what they claim: non-finite values and values outside the
physical range of their channel (:data:`dambench.schema.PHYSICAL_RANGE`).

Both checks run on each block of cycles before it is scored, and their messages name the
method, the cycle, the channel, the value found and what was expected. A field whose median lies
outside its channel's range is one in other units than its label says (t2m in degrees Celsius
labelled K, msl in hPa labelled Pa): it is refused, and the message says which unit mistake
would explain the value. Single values outside the range in a plausible field are scored, with
a note.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchInputError

UNIT_MISTAKES = {
    "t2m": (("degrees Celsius", 1.0, 273.15),),
    "t": (("degrees Celsius", 1.0, 273.15),),
    "msl": (("hPa", 100.0, 0.0),),
    "q": (("g kg-1", 1e-3, 0.0),),
    "z": (("geopotential height in metres", schema.STANDARD_GRAVITY_M_S2, 0.0),),
}
"""Variable -> (what the values may be, factor, offset): ``factor * value + offset`` converts a
value in that unit to the schema's (degrees Celsius + 273.15 = K)."""


def _cycle_label(field_: xr.DataArray, index: int) -> str:
    return str(field_[schema.TIME].values[index])[:16]


def check_finite(field_: xr.DataArray, method: str) -> None:
    """Raise unless every value of ``field_`` ``(time, [member,] channel, latitude,
    longitude)`` is finite; the message names the first cycle holding NaN or Inf and the
    non-finite points of each channel there."""
    values = np.asarray(field_.values)
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    first = int(np.flatnonzero(bad.reshape(len(values), -1).any(axis=1))[0])
    channel_axis = field_.dims.index(schema.CHANNEL) - 1
    axes = tuple(a for a in range(bad.ndim - 1) if a != channel_axis)
    per_channel = bad[first].sum(axis=axes)
    infinite = int(np.isinf(values[first]).sum())
    listed = {
        str(c): int(n) for c, n in zip(field_[schema.CHANNEL].values, per_channel, strict=True) if n
    }
    raise DambenchInputError(
        f"{method} holds NaN or Inf at {_cycle_label(field_, first)} (non-finite points per "
        f"channel: {listed}; {infinite} of them Inf). A non-finite value would make that "
        "cycle's score NaN; fill or drop the points, or score the finite points only with "
        "skipna=True (--skipna), which is recorded in the outputs."
    )


def unit_hint(channel: str, value: float) -> str:
    """A phrase naming the unit mistake that would put ``value`` of ``channel`` in range, or
    ``""`` when none does."""
    low, high = schema.PHYSICAL_RANGE[channel]
    units = schema.channel_units(channel)
    for label, factor, offset in UNIT_MISTAKES.get(schema.CHANNEL_VARIABLE[channel], ()):
        if low <= factor * value + offset <= high:
            return f" ({channel} looks like {label} labelled {units})"
    return ""


def _by_channel(field_: xr.DataArray) -> tuple[np.ndarray, list[str]]:
    """The values as ``(time, channel, point)`` (members are points too) and the channels."""
    values = np.moveaxis(np.asarray(field_.values), field_.dims.index(schema.CHANNEL), 1)
    return values.reshape(*values.shape[:2], -1), [str(c) for c in field_[schema.CHANNEL].values]


def _bounds(channels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    bounds = np.array([schema.PHYSICAL_RANGE[c] for c in channels], dtype=np.float64)
    return bounds[None, :, 0], bounds[None, :, 1]


def check_range(field_: xr.DataArray, method: str) -> str | None:
    """Refuse a field in other units than the schema's; return a note on outlying values.

    A channel whose median over a cycle's points (and members) lies outside
    :data:`dambench.schema.PHYSICAL_RANGE` is refused: the message names the cycle, the channel,
    the median found, the range expected and the unit mistake that would explain it. Single
    values outside the range in a plausible field (a diverged ensemble member, a spike) are
    scored as they are; the returned note names the first of them (``None`` when there is none).
    """
    values, channels = _by_channel(field_)
    low, high = _bounds(channels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN cycle has no median
        median = np.nanmedian(np.where(np.isinf(values), np.nan, values), axis=-1)
    wrong = (median < low) | (median > high)
    if wrong.any():
        t, c = np.argwhere(wrong)[0]
        raise DambenchInputError(_unit_message(field_, method, t, channels[c], median[t, c]))
    with np.errstate(invalid="ignore"):
        outside = np.isfinite(values) & ((values < low[..., None]) | (values > high[..., None]))
    if not outside.any():
        return None
    t, c, _ = np.argwhere(outside)[0]
    return _outlier_note(field_, method, t, channels[c], values[t, c], int(outside.sum()))


def _unit_message(field_, method: str, t: int, channel: str, median: float) -> str:
    low, high = schema.PHYSICAL_RANGE[channel]
    units = schema.channel_units(channel)
    return (
        f"{method} holds {channel} with median {median:.6g} {units} at "
        f"{_cycle_label(field_, t)}, outside the plausible range [{low:.6g}, {high:.6g}] "
        f"{units}{unit_hint(channel, median)}. Convert the predictions to the schema's units "
        "(dambench.schema.VARIABLES) before scoring."
    )


def _outlier_note(field_, method: str, t: int, channel: str, one: np.ndarray, n: int) -> str:
    low, high = schema.PHYSICAL_RANGE[channel]
    units = schema.channel_units(channel)
    finite = one[np.isfinite(one)]
    worst = float(finite.min() if finite.min() < low else finite.max())
    return (
        f"{method} holds {n} value(s) outside the plausible range of their channel in cycles "
        f"from {_cycle_label(field_, t)}, first {channel} = {worst:.6g} {units} (range "
        f"[{low:.6g}, {high:.6g}] {units}); they are scored as they are."
    )
