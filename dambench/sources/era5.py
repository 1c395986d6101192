"""ERA5 readers: WeatherBench2 and ARCO-ERA5 zarr stores, CDS netCDF and GRIB files.

Every reader returns the same canonical stacked DataArray ``(time, channel, latitude, longitude)``
in ERA5 native units on the requested grid (conservatively regridded when the source grid differs),
from a local path or any fsspec URL (``gs://weatherbench2/...``, ``hf://...``, ``https://...``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.channels import check_channel_names, to_channels
from dambench.exceptions import DambenchInputError, DambenchSchemaError
from dambench.grid import CANONICAL_GRID, Grid, to_canonical
from dambench.regrid import regrid
from dambench.sources.base import PathLike, check_monotonic, open_dataset_any, select_times
from dambench.sources.lexicon import find_variable
from dambench.validate import canonical_units

WB2_ERA5_1P5_URL = (
    "gs://weatherbench2/datasets/era5/"
    "1959-2023_01_10-6h-240x121_equiangular_with_poles_conservative.zarr"
)
"""WeatherBench2's ERA5 on the 1.5 degree grid with poles (6-hourly, 13 levels)."""

ARCO_ERA5_URL = "gs://gcp-public-data-arco-era5/ar/full_37-1h-0p25deg-chunk-1.zarr-v3"
"""ARCO-ERA5 at 0.25 degrees (721 x 1440, hourly, 37 levels)."""


def open_era5(
    path: PathLike | xr.Dataset,
    *,
    channels: Sequence[str] | None = None,
    times: Sequence | pd.DatetimeIndex | None = None,
    grid: Grid | None = CANONICAL_GRID,
    member: int = 0,
) -> xr.DataArray:
    """Read ERA5 as a canonical stacked field.

    Parameters
    ----------
    path
        Zarr store, netCDF or GRIB file (local path or fsspec URL), or an opened Dataset.
    channels
        Schema channels to read (default: every schema channel the source holds).
    times
        Times to select exactly (default: all). Missing times raise, naming them.
    grid
        Target grid; ``None`` keeps the source grid (still canonical orientation).
    member
        Ensemble member kept when the source has a ``number`` dim (ERA5 EDA); 0 is the control.

    Returns
    -------
    DataArray ``(time, channel, latitude, longitude)`` with channel coords and ``units``; lazy.

    Raises
    ------
    DambenchSchemaError
        Missing variables or levels (named), wrong units, non-monotonic coordinates.
    """
    ds = path if isinstance(path, xr.Dataset) else open_dataset_any(path)
    source = "dataset" if isinstance(path, xr.Dataset) else str(path)
    per_variable = _schema_variables(_canonical_layout(ds, member), channels, source)
    stacked = to_channels(per_variable, channels)
    if times is not None:
        stacked = select_times(stacked, times, source)
    if grid is not None:
        stacked = regrid(stacked, grid)
    stacked.attrs = {"source": source}
    return stacked


def _canonical_layout(ds: xr.Dataset, member: int) -> xr.Dataset:
    if "number" in ds.dims:
        if member not in ds["number"].values:
            raise DambenchInputError(f"Ensemble member {member} not in {ds['number'].values}.")
        ds = ds.sel(number=member)
    drop = [
        c
        for c in ("number", "step", "surface", "valid_time")
        if c in ds.coords and c not in ds.dims
    ]
    ds = ds.drop_vars(drop)
    if "time" in ds.coords and "time" not in ds.dims:
        ds = ds.expand_dims("time")
    for dim in ("latitude", "longitude", "lat", "lon"):
        if dim in ds.coords:
            check_monotonic(ds[dim], dim, "ERA5 source")
    return to_canonical(ds)


def _schema_variables(ds: xr.Dataset, channels: Sequence[str] | None, source: str) -> xr.Dataset:
    wanted = check_channel_names(channels) if channels is not None else None
    variables = (
        list(dict.fromkeys(schema.CHANNEL_VARIABLE[c] for c in wanted))
        if wanted is not None
        else list(schema.VARIABLES)
    )
    found = {var: find_variable(ds.data_vars, var) for var in variables}
    missing = [var for var, name in found.items() if name is None]
    if wanted is not None and missing:
        raise DambenchSchemaError(
            f"{source}: missing variables {missing} (needed for channels "
            f"{[c for c in wanted if schema.CHANNEL_VARIABLE[c] in missing]}); "
            f"the source holds {list(ds.data_vars)}."
        )
    out = {}
    for var, name in found.items():
        if name is None:
            continue
        field = ds[name]
        _check_units(field, var, source)
        is_upper = var in schema.ATMOSPHERIC_VARIABLES
        if is_upper and schema.LEVEL not in field.dims:
            raise DambenchSchemaError(f"{source}: upper-air variable {name!r} has no level dim.")
        if is_upper:
            field = field.assign_coords({schema.LEVEL: field[schema.LEVEL].values.astype(np.int64)})
            if wanted is not None:
                _check_levels(field, var, wanted, source)
        out[var] = field.rename(var)
    if not out:
        raise DambenchSchemaError(
            f"{source}: no ERA5 schema variables found among {list(ds.data_vars)}."
        )
    return xr.Dataset(out)


def _check_units(field: xr.DataArray, var: str, source: str) -> None:
    units = field.attrs.get("units")
    expected = schema.VARIABLES[var].units
    if units is None:
        return
    if canonical_units(str(units)) != canonical_units(expected):
        raise DambenchSchemaError(
            f"{source}: variable {field.name!r} has units {units!r}; expected {expected!r} "
            "(ERA5 native units)."
        )


def _check_levels(field: xr.DataArray, var: str, wanted: Sequence[str], source: str) -> None:
    have = set(field[schema.LEVEL].values.tolist())
    need = [schema.CHANNEL_LEVEL[c] for c in wanted if schema.CHANNEL_VARIABLE[c] == var]
    missing = [lv for lv in need if lv not in have]
    if missing:
        raise DambenchSchemaError(
            f"{source}: variable {var!r} lacks levels {missing} hPa; it has {sorted(have)}."
        )
