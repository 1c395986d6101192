"""Checks that an object follows the schema, with errors that say what to do."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import xarray as xr

from dambench import schema
from dambench._typing import XrObject
from dambench.channels import check_channel_names
from dambench.exceptions import DambenchSchemaError
from dambench.grid import CANONICAL_GRID, Grid
from dambench.units import NORMALIZED_UNITS, canonical_units


def validate(
    obj: XrObject,
    *,
    channels: Sequence[str] | Literal["all"] | None = None,
    grid: Grid = CANONICAL_GRID,
    allow_nan: Sequence[str] = ("observation", *schema.MODALITIES),
    check_values: bool = False,
) -> XrObject:
    """Check ``obj`` against the schema and return it unchanged.

    Checks dims and their order, the grid size, spacing and orientation, channel names and order,
    that times are sorted and unique, and units. With ``check_values=True`` also computes whether
    fields hold NaN (allowed only in the variables named in ``allow_nan``: by default
    ``observation``, where NaN marks an unobserved point, and the modalities of
    :data:`dambench.schema.MODALITIES`, where NaN marks an absent value; so a dataset from
    :func:`dambench.open_dataset` passes).

    Parameters
    ----------
    obj
        A stacked DataArray ``(time, channel, latitude, longitude)`` (``time``/``channel``
        optional), a triplet Dataset of such arrays, or a per-variable Dataset.
    channels
        Channels that must be present (``"all"``: the 69). Default: any subset in schema order.
    grid
        The expected grid.
    allow_nan
        Variables of a Dataset that may hold NaN under ``check_values``.
    check_values
        Also read the values and refuse NaN outside ``allow_nan`` (reads the whole object).

    Raises
    ------
    DambenchSchemaError
        Naming the variable and what was expected, found and how to fix it.
    """
    required = schema.CHANNELS if channels == "all" else channels
    if isinstance(obj, xr.DataArray):
        _validate_field(obj, obj.name or "array", grid, required)
        if check_values:
            _check_no_nan(obj, str(obj.name or "array"))
    elif isinstance(obj, xr.Dataset):
        fields = [name for name, v in obj.data_vars.items() if schema.LATITUDE in v.dims]
        if not fields:
            raise DambenchSchemaError(
                f"Dataset has no data variable with a {schema.LATITUDE!r} dim "
                f"(data variables: {list(obj.data_vars)}); call .dambench.to_canonical() first "
                "if latitude is named differently."
            )
        for name in fields:
            _validate_field(obj[name], str(name), grid, required)
            if check_values and name not in allow_nan:
                _check_no_nan(obj[name], str(name))
    else:
        raise DambenchSchemaError(f"Expected an xarray Dataset or DataArray, got {type(obj)}.")
    return obj


def _validate_field(
    da: xr.DataArray, name: str, grid: Grid, required: Sequence[str] | None
) -> None:
    _check_dims(da, name)
    _check_grid(da, name, grid)
    if schema.TIME in da.dims:
        _check_times(da[schema.TIME], name)
    if schema.CHANNEL in da.dims:
        present = check_channel_names(da[schema.CHANNEL].values.tolist())
        if required is not None:
            missing = [c for c in required if c not in present]
            if missing:
                raise DambenchSchemaError(f"{name}: missing channels {missing}.")
        if "units" in da.coords:
            _check_units(name, dict(zip(present, da["units"].values.tolist(), strict=True)))
    elif name in schema.VARIABLES:
        if schema.LEVEL in da.dims:
            bad = sorted(set(da[schema.LEVEL].values.tolist()) - set(schema.LEVELS_HPA))
            if bad:
                raise DambenchSchemaError(
                    f"{name}: levels {bad} hPa are not schema levels {schema.LEVELS_HPA}."
                )
        if "units" in da.attrs:
            _check_units(name, {_first_channel(name): da.attrs["units"]})


def _first_channel(var: str) -> str:
    return next(c for c in schema.CHANNELS if schema.CHANNEL_VARIABLE[c] == var)


def _check_dims(da: xr.DataArray, name: str) -> None:
    dims = tuple(da.dims)
    for dim, aliases in (
        (schema.LATITUDE, schema.LATITUDE_ALIASES),
        (schema.LONGITUDE, schema.LONGITUDE_ALIASES),
    ):
        if dim not in dims:
            alias = next((a for a in aliases if a in dims), None)
            hint = f" (found {alias!r}: call .dambench.to_canonical())" if alias else ""
            raise DambenchSchemaError(f"{name}: missing dim {dim!r} in dims {dims}{hint}.")
    expected_tail = ((schema.CHANNEL,) if schema.CHANNEL in dims else ()) + schema.SPATIAL_DIMS
    if schema.LEVEL in dims and schema.CHANNEL not in dims:
        expected_tail = (schema.LEVEL,) + schema.SPATIAL_DIMS
    ok_tail = dims[-len(expected_tail) :] == expected_tail
    ok_head = schema.TIME not in dims or dims[0] == schema.TIME
    if not (ok_tail and ok_head):
        order = ((schema.TIME,) if schema.TIME in dims else ()) + ("...",) + expected_tail
        raise DambenchSchemaError(
            f"{name}: wrong dim order {dims}; expected {order}. "
            f"Use .transpose({', '.join(repr(d) for d in order if d != '...')}) "
            "or .dambench.to_canonical()."
        )


def _check_grid(da: xr.DataArray, name: str, grid: Grid) -> None:
    n_lat, n_lon = grid.shape
    found = (da.sizes[schema.LATITUDE], da.sizes[schema.LONGITUDE])
    if found != (n_lat, n_lon):
        raise DambenchSchemaError(
            f"{name}: wrong grid size (latitude, longitude)={found}; expected {(n_lat, n_lon)} "
            f"({grid.spacing_deg} degree grid with poles). Regrid with dambench.regrid."
        )
    for dim, expected in (
        (schema.LATITUDE, grid.latitude),
        (schema.LONGITUDE, grid.longitude),
    ):
        if dim not in da.coords:
            raise DambenchSchemaError(f"{name}: {dim} has no coordinate values.")
        values = np.asarray(da[dim].values, dtype=np.float64)
        if np.allclose(values, expected, atol=schema.GRID_ATOL_DEG, rtol=0):
            continue
        steps = np.unique(np.round(np.diff(values), 6))
        if dim == schema.LATITUDE and np.allclose(values[::-1], expected, atol=1e-3, rtol=0):
            problem = "latitude runs south to north; expected 90 -> -90"
        elif dim == schema.LONGITUDE and values.min() < 0:
            problem = "longitude runs from negative values; expected 0 -> 360"
        elif steps.size != 1 or not np.isclose(abs(steps[0]), grid.spacing_deg):
            problem = f"wrong spacing {steps.tolist()} degrees; expected {grid.spacing_deg}"
        else:
            problem = f"wrong values starting at {values[0]}; expected {expected[0]}"
        raise DambenchSchemaError(f"{name}: {problem}. Call .dambench.to_canonical() or regrid.")


def _check_times(time: xr.DataArray, name: str) -> None:
    values = time.values
    if values.size < 2:
        return
    diffs = np.diff(values)
    zero = np.zeros((), dtype=diffs.dtype)
    if np.any(diffs == zero):
        dupes = np.unique(values[1:][diffs == zero])
        raise DambenchSchemaError(f"{name}: duplicate times {dupes[:5].tolist()}.")
    if np.any(diffs < zero):
        first = int(np.argmax(diffs < zero))
        raise DambenchSchemaError(
            f"{name}: times are not sorted ({values[first]} is followed by "
            f"{values[first + 1]}); use .sortby('time')."
        )


def _check_units(name: str, units_by_channel: dict[str, str]) -> None:
    found = {c: canonical_units(str(u)) for c, u in units_by_channel.items()}
    if all(u == NORMALIZED_UNITS for u in found.values()):
        return
    wrong = {
        c: units_by_channel[c]
        for c, u in found.items()
        if u != canonical_units(schema.channel_units(c))
    }
    if wrong:
        expected = {c: schema.channel_units(c) for c in wrong}
        raise DambenchSchemaError(
            f"{name}: wrong units {wrong}; expected {expected} (ERA5 native units)."
        )


def _check_no_nan(da: xr.DataArray, name: str) -> None:
    if bool(da.isnull().any()):
        where = da.isnull().sum([d for d in da.dims if d != schema.CHANNEL])
        detail = ""
        if schema.CHANNEL in da.dims:
            bad = where[schema.CHANNEL].values[where.values > 0].tolist()
            detail = f" in channels {bad[:10]}"
        raise DambenchSchemaError(f"{name}: NaN values{detail}, where none are allowed.")
