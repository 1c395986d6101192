"""Refuse fields that cannot be what they claim: non-finite values and values outside the
physical range of their channel (:data:`dambench.schema.PHYSICAL_RANGE`).

Both checks run on each block of cycles before it is scored, and their messages name the
method, the cycle, the channel, the value found and what was expected. An out-of-range field is
usually one in other units than its label says (t2m in degrees Celsius labelled K, msl in hPa
labelled Pa): the message says which unit mistake would explain the value.
"""

from __future__ import annotations

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


def check_range(field_: xr.DataArray, method: str) -> None:
    """Raise unless every finite value of each channel of ``field_`` lies in
    :data:`dambench.schema.PHYSICAL_RANGE`; the message names the first offending cycle and
    channel, the value found (the one farthest out) and the range expected."""
    values = np.asarray(field_.values)
    channel_axis = field_.dims.index(schema.CHANNEL)
    channels = [str(c) for c in field_[schema.CHANNEL].values]
    bounds = np.array([schema.PHYSICAL_RANGE[c] for c in channels], dtype=np.float64)
    shape = [1] * values.ndim
    shape[channel_axis] = len(channels)
    low, high = bounds[:, 0].reshape(shape), bounds[:, 1].reshape(shape)
    with np.errstate(invalid="ignore"):
        outside = np.isfinite(values) & ((values < low) | (values > high))
    if not outside.any():
        return
    t, *rest = np.unravel_index(int(np.flatnonzero(outside)[0]), values.shape)
    c = rest[channel_axis - 1]
    channel = channels[c]
    one = np.take(values[t], c, axis=channel_axis - 1)
    finite = one[np.isfinite(one)]
    worst = float(finite.min() if finite.min() < bounds[c, 0] else finite.max())
    units = schema.channel_units(channel)
    raise DambenchInputError(
        f"{method} holds {channel} = {worst:.6g} {units} at {_cycle_label(field_, t)}, outside "
        f"the plausible range [{bounds[c, 0]:.6g}, {bounds[c, 1]:.6g}] {units}"
        f"{unit_hint(channel, worst)}. Convert the predictions to the schema's units "
        "(dambench.schema.VARIABLES) before scoring."
    )
