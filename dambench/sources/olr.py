"""NOAA Interpolated Outgoing Longwave Radiation (daily), as distributed by NOAA PSL.

:func:`read_olr` reads PSL's ``olr.day.mean.nc`` (variable ``olr`` in W/m^2 on a 2.5 degree grid,
latitude north to south, time in hours since 1800-01-01) or any subset of it, validates it and
returns a canonical DataArray ``(time, latitude, longitude)`` (latitude north to south, longitude
ascending in [0, 360), units ``"W m-2"``). :func:`olr_on_grid` regrids it conservatively to the
canonical 1.5 degree grid, NaN outside the source's coverage.

Licence: NOAA PSL data carry no restrictions. Requested citation: Liebmann, B. and C. A. Smith
(1996), Description of a complete (interpolated) outgoing longwave radiation dataset, Bull. Amer.
Meteor. Soc. 77, 1275-1277; "Interpolated OLR data provided by the NOAA PSL, Boulder, Colorado,
USA, from their website".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchInputError
from dambench.grid import CANONICAL_GRID, Grid, to_canonical
from dambench.regrid import regrid
from dambench.sources.base import PathLike, open_dataset_any, select_times, time_lat_lon
from dambench.units import same_units

OLR = "olr"
OLR_UNITS = schema.MODALITIES[OLR].units
"""Units of every OLR field this module returns (the schema's)."""

OLR_ATTRS = {
    "units": OLR_UNITS,
    "standard_name": "toa_outgoing_longwave_flux",
    "long_name": "Daily mean outgoing longwave radiation (interpolated)",
    "dataset": "NOAA Interpolated OLR",
    "source": "NOAA Interpolated OLR, NOAA/OAR/ESRL PSL (daily, 2.5 degree)",
    "license": "No restrictions (NOAA PSL public data).",
    "references": "Liebmann and Smith (1996), Bull. Amer. Meteor. Soc. 77, 1275-1277",
    "acknowledgement": (
        "Interpolated OLR data provided by the NOAA PSL, Boulder, Colorado, USA, from their website"
    ),
}


def check_olr_units(units, source: str = "OLR") -> None:
    """Raise unless ``units`` spells W m-2 (``"W/m^2"``, ``"W m-2"``, ``"W m**-2"``, ...; see
    :func:`dambench.units.canonical_units`)."""
    if not same_units(units, OLR_UNITS):
        raise DambenchInputError(
            f"{source}: OLR units must be W m-2 (e.g. 'W/m^2', 'W m-2', 'W m**-2'), "
            f"found {units!r}."
        )


def read_olr(
    path: PathLike,
    *,
    times: Sequence | pd.DatetimeIndex | None = None,
    source: str | None = None,
) -> xr.DataArray:
    """Read NOAA PSL's interpolated daily OLR (``olr.day.mean.nc`` or a subset of it).

    Parameters
    ----------
    path
        Local path or fsspec URL of the netCDF file (variable ``olr``, dims time, lat, lon).
    times
        Times to select exactly before loading (default: all); missing times raise, naming them.
        Only these times are read from the file, which is closed afterwards.
    source
        The name of the file in messages and in ``source_file`` (default: ``path``; e.g. the URL
        of which ``path`` is a cached copy).

    Returns
    -------
    DataArray ``olr`` ``(time, latitude, longitude)``, float32, W m-2, loaded into memory;
    latitude north to south, longitude ascending in [0, 360), time decoded to datetime64.

    Raises
    ------
    DambenchInputError
        No ``olr`` variable (the variables found are named), units other than W m-2, a coordinate
        that is not strictly monotonic, time not decodable, or values outside the variable's
        ``valid_range`` (the count is named; without ``valid_range``, negative values).
    """
    source = source or str(path)
    with open_dataset_any(path) as ds:  # closed once the times asked are read
        if OLR not in ds.data_vars:
            raise DambenchInputError(
                f"{source}: not an OLR file: no 'olr' variable; found variables "
                f"{sorted(map(str, ds.data_vars))}."
            )
        da = ds[OLR]
        check_olr_units(da.attrs.get("units"), source)
        da = time_lat_lon(da, source)
        if times is not None:
            da = select_times(da, times, source)
        valid_range = _valid_range(da)
        da = da.astype(np.float32).load()
    _check_values(da.values, valid_range, source)
    da = da.assign_coords(
        {
            dim: xr.DataArray(da[dim].values.astype(np.float64), dims=dim)
            for dim in (schema.LATITUDE, schema.LONGITUDE)
        }
    )
    da[schema.TIME].attrs.pop("actual_range", None)  # stale once subset
    out = to_canonical(da)
    out.name = OLR
    out.attrs = {**OLR_ATTRS, "source_file": source}
    if valid_range is not None:
        out.attrs["valid_range"] = np.asarray(valid_range, dtype=np.float32)
    return out


def _valid_range(da: xr.DataArray) -> tuple[float, float] | None:
    """``valid_range`` in physical units (unpacked when the file stores packed integers)."""
    raw = da.attrs.get("valid_range", da.encoding.get("valid_range"))
    if raw is None:
        return None
    bounds = np.asarray(raw, dtype=np.float64).ravel()
    if bounds.size != 2:
        return None
    packed_dtype = da.encoding.get("dtype")
    is_packed = "scale_factor" in da.encoding or "add_offset" in da.encoding
    if (
        is_packed
        and np.issubdtype(np.asarray(raw).dtype, np.integer)
        and packed_dtype is not None
        and np.issubdtype(np.dtype(packed_dtype), np.integer)
    ):
        bounds = bounds * da.encoding.get("scale_factor", 1.0) + da.encoding.get("add_offset", 0.0)
    return float(bounds.min()), float(bounds.max())


def _check_values(values: np.ndarray, valid_range: tuple[float, float] | None, source: str) -> None:
    """Raise on infinities and on values outside ``valid_range`` (or negative without one)."""
    if np.isinf(values).any():
        raise DambenchInputError(f"{source}: {int(np.isinf(values).sum())} infinite OLR values.")
    low, high = valid_range if valid_range is not None else (0.0, np.inf)
    with np.errstate(invalid="ignore"):
        outside = (values < low) | (values > high)
    count = int(outside.sum())
    if count:
        where = f"valid_range [{low:g}, {high:g}]" if valid_range is not None else "[0, inf)"
        raise DambenchInputError(
            f"{source}: {count} OLR values outside {where} W m-2 (min {np.nanmin(values):.6g}, "
            f"max {np.nanmax(values):.6g})."
        )


def olr_on_grid(
    da: xr.DataArray,
    min_coverage: float = 0.5,
    grid: Grid = CANONICAL_GRID,
) -> xr.DataArray:
    """OLR on the canonical 1.5 degree grid by first-order conservative regridding.

    Parameters
    ----------
    da
        OLR ``(time, latitude, longitude)`` in W m-2, e.g. from :func:`read_olr`.
    min_coverage
        Fraction of a target cell's area the source must cover (with non-NaN values) for the cell
        to be defined; cells outside the source's coverage are NaN.
    grid
        Target grid (the canonical 121 x 240 grid by default).

    Returns
    -------
    DataArray ``olr`` ``(time, latitude: 121, longitude: 240)`` in W m-2, float32; the
    area-weighted mean over covered cells is preserved.

    Raises
    ------
    DambenchInputError
        ``da`` is not a DataArray or its units are not W m-2.
    """
    if not isinstance(da, xr.DataArray):
        raise DambenchInputError(f"olr_on_grid expects a DataArray, got {type(da).__name__}.")
    check_olr_units(da.attrs.get("units"), "olr_on_grid input")
    if not 0 <= min_coverage <= 1:
        raise DambenchInputError(f"min_coverage must be in [0, 1], found {min_coverage}.")
    out = regrid(da, grid, method="conservative", min_coverage=min_coverage)
    out.name = OLR
    out.attrs = {
        **da.attrs,
        "units": OLR_UNITS,
        "regridding": f"conservative to {grid.shape}, min_coverage={min_coverage:g}",
    }
    return out
