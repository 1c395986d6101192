"""Stacked channels <-> per-variable Datasets, and the channel coordinates every field carries.

A *stacked* field is a DataArray with a ``channel`` dim whose labels are schema channel names
(``z500``), carrying ``variable``, ``level`` and ``units`` as non-index coordinates on ``channel``.
A *per-variable* Dataset has one data variable per physical variable: surface variables over
``(time, latitude, longitude)`` and upper-air variables over ``(time, level, latitude, longitude)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchSchemaError
from dambench.units import canonical_units

CHANNELS_ATTR = "dambench_channels"
"""Dataset attribute listing the channels of a per-variable Dataset, so the round trip is exact."""

LEVEL_ATTRS = {
    "units": "hPa",
    "standard_name": "air_pressure",
    "long_name": "pressure level",
    "positive": "down",
    "axis": "Z",
}


def check_channel_names(channels: Sequence[str]) -> tuple[str, ...]:
    """Return ``channels`` as a tuple after checking they are known, unique and in schema order."""
    names = tuple(str(c) for c in channels)
    unknown = [c for c in names if c not in schema.CHANNEL_INDEX]
    if unknown:
        raise DambenchSchemaError(
            f"Unknown channel names {unknown}; expected names from dambench.schema.CHANNELS "
            f"such as 'z500', 't850', 'u10'."
        )
    if len(set(names)) != len(names):
        dupes = sorted({c for c in names if names.count(c) > 1})
        raise DambenchSchemaError(f"Duplicate channels {dupes}.")
    order = [schema.CHANNEL_INDEX[c] for c in names]
    if order != sorted(order):
        raise DambenchSchemaError(
            f"Channels are not in schema order: got {list(names)}, expected "
            f"{sorted(names, key=schema.CHANNEL_INDEX.__getitem__)}. "
            "Reorder with .sel(channel=[...])."
        )
    return names


def channel_coords(channels: Sequence[str] = schema.CHANNELS) -> dict[str, xr.DataArray]:
    """Coordinates along ``channel``: the names, ``variable``, ``level`` (hPa, NaN at the surface)
    and ``units``."""
    names = check_channel_names(channels)
    dim = schema.CHANNEL
    levels = [schema.CHANNEL_LEVEL[c] for c in names]
    return {
        dim: xr.DataArray(list(names), dims=dim, attrs={"long_name": "channel"}),
        "variable": xr.DataArray([schema.CHANNEL_VARIABLE[c] for c in names], dims=dim),
        "level": xr.DataArray(
            np.array([np.nan if lv is None else lv for lv in levels], dtype=np.float64),
            dims=dim,
            attrs={"units": "hPa", "long_name": "pressure level (NaN at the surface)"},
        ),
        "units": xr.DataArray([schema.channel_units(c) for c in names], dims=dim),
    }


def to_channels(ds: xr.Dataset, channels: Sequence[str] | None = None) -> xr.DataArray:
    """Stack a per-variable Dataset into one ``(..., channel, latitude, longitude)`` DataArray.

    Parameters
    ----------
    ds
        Per-variable Dataset (schema short names ``u10, v10, t2m, msl, z, q, u, v, t``; upper-air
        variables on a ``level`` dim in hPa). Variables that are not in the schema (e.g. ``tp``)
        are not channels and are left out.
    channels
        Channels to take, in schema order. Default: every schema channel present in ``ds`` (or
        the list recorded by :func:`from_channels`).

    Returns
    -------
    DataArray named ``"state"`` with channel coordinates (see :func:`channel_coords`); lazy if
    ``ds`` is.
    """
    available = available_channels(ds)
    if channels is None:
        recorded = ds.attrs.get(CHANNELS_ATTR)
        channels = [c for c in recorded if c in available] if recorded else available
        if not channels:
            raise DambenchSchemaError(
                f"No schema channels found among data variables {list(ds.data_vars)}; expected "
                f"some of {list(schema.VARIABLES)} (upper-air ones on a 'level' dim)."
            )
    names = check_channel_names(channels)
    missing = [c for c in names if c not in available]
    if missing:
        raise DambenchSchemaError(f"Missing channels {missing} in Dataset with {available=}.")
    pieces = []
    units = []
    for name in names:
        var = schema.CHANNEL_VARIABLE[name]
        level = schema.CHANNEL_LEVEL[name]
        field = ds[var] if level is None else ds[var].sel({schema.LEVEL: level}, drop=True)
        pieces.append(field.drop_vars([c for c in field.coords if c not in field.dims]))
        units.append(canonical_units(ds[var].attrs.get("units", schema.channel_units(name))))
    coords = channel_coords(names)
    coords["units"] = xr.DataArray(units, dims=schema.CHANNEL)
    stacked = xr.concat(pieces, dim=schema.CHANNEL, coords="minimal", compat="override")
    stacked = stacked.assign_coords(coords)
    stacked = stacked.transpose(
        schema.TIME, ..., schema.CHANNEL, *schema.SPATIAL_DIMS, missing_dims="ignore"
    )
    stacked.name = "state"
    stacked.attrs = {}
    return stacked


def available_channels(ds: xr.Dataset) -> list[str]:
    """Schema channels a per-variable Dataset holds (in schema order), read from its variable
    names and ``level`` coordinate only (no data is read)."""
    found = set()
    for name in schema.CHANNELS:
        var = schema.CHANNEL_VARIABLE[name]
        level = schema.CHANNEL_LEVEL[name]
        if var not in ds.data_vars:
            continue
        has_level = schema.LEVEL in ds[var].dims
        if level is None and not has_level:
            found.add(name)
        elif level is not None and has_level and level in ds[var][schema.LEVEL].values:
            found.add(name)
    return [c for c in schema.CHANNELS if c in found]


def from_channels(da: xr.DataArray) -> xr.Dataset:
    """Split a stacked ``channel`` DataArray into a per-variable Dataset (inverse of
    :func:`to_channels`).

    Upper-air variables get a ``level`` dim holding the union of their levels in ascending hPa;
    a (variable, level) pair absent from ``da`` is NaN there, and the Dataset attribute
    ``dambench_channels`` records which channels exist, so ``to_channels`` restores exactly ``da``.
    """
    if schema.CHANNEL not in da.dims:
        raise DambenchSchemaError(
            f"from_channels needs a {schema.CHANNEL!r} dim, found dims {tuple(da.dims)}."
        )
    names = check_channel_names(da[schema.CHANNEL].values.tolist())
    units = (
        dict(zip(names, da["units"].values.tolist(), strict=True))
        if "units" in da.coords
        else {c: schema.channel_units(c) for c in names}
    )
    channel_only = [c for c in da.coords if da[c].dims == (schema.CHANNEL,)]
    base = da.drop_vars(channel_only)
    levels = sorted({schema.CHANNEL_LEVEL[c] for c in names} - {None})
    data_vars = {}
    for var in schema.VARIABLES:
        var_channels = [c for c in names if schema.CHANNEL_VARIABLE[c] == var]
        if not var_channels:
            continue
        info = schema.VARIABLES[var]
        attrs = {
            "units": units[var_channels[0]],
            "standard_name": info.standard_name,
            "long_name": info.long_name,
        }
        if var in schema.SURFACE_VARIABLES:
            field = base.isel({schema.CHANNEL: names.index(var)}, drop=True)
        else:
            var_levels = [schema.CHANNEL_LEVEL[c] for c in var_channels]
            field = base.isel({schema.CHANNEL: [names.index(c) for c in var_channels]})
            field = field.rename({schema.CHANNEL: schema.LEVEL}).assign_coords(
                {schema.LEVEL: np.asarray(var_levels, dtype=np.int64)}
            )
            if var_levels != levels:
                field = field.reindex({schema.LEVEL: levels})
            field = field.transpose(
                schema.TIME, ..., schema.LEVEL, *schema.SPATIAL_DIMS, missing_dims="ignore"
            )
        data_vars[var] = field.rename(var).assign_attrs(attrs)
    out = xr.Dataset(data_vars, attrs={CHANNELS_ATTR: list(names)})
    if schema.LEVEL in out.coords:
        out[schema.LEVEL].attrs.update(LEVEL_ATTRS)
    return out
