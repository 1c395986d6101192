"""ERA5 readers: WeatherBench2 and ARCO-ERA5 zarr stores, CDS netCDF and GRIB files.

Every reader returns the same canonical stacked DataArray ``(time, channel, latitude, longitude)``
in ERA5 native units on the requested grid (conservatively regridded when the source grid differs),
from a local path or any fsspec URL (``gs://weatherbench2/...``, ``hf://...``, ``https://...``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import xarray as xr

from dambench.channels import to_channels
from dambench.exceptions import DambenchInputError
from dambench.grid import CANONICAL_GRID, Grid, to_canonical
from dambench.regrid import regrid
from dambench.sources.base import PathLike, check_monotonic, open_dataset_any, select_times
from dambench.sources.lexicon import schema_variables

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
    per_variable = schema_variables(_canonical_layout(ds, member), source, channels)
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
