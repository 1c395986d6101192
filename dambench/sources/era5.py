"""ERA5 readers: WeatherBench2 and ARCO-ERA5 zarr stores, CDS netCDF and GRIB files.

Every reader returns the same canonical stacked DataArray ``(time, channel, latitude, longitude)``
in ERA5 native units on the requested grid (conservatively regridded when the source grid differs),
from a local path or any fsspec URL (``gs://weatherbench2/...``, ``hf://...``, ``https://...``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.channels import to_channels
from dambench.exceptions import DambenchInputError
from dambench.grid import CANONICAL_GRID, Grid, rename_aliases, to_canonical
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


@dataclass(frozen=True)
class StoreInfo:
    """What a public ERA5 store declares: its grid spacing and the span of valid times.

    ``last`` is ``None`` for a store that is extended as ERA5 is (ARCO-ERA5: monthly, about three
    months behind real time; its time axis runs past the last valid time, with missing values
    there, and the store's ``valid_time_stop`` attribute says where the data end).
    """

    grid_deg: float
    first: str
    last: str | None
    description: str


ERA5_STORES = {
    WB2_ERA5_1P5_URL: StoreInfo(
        1.5,
        "1959-01-01T00",
        "2023-01-10T18",
        "WeatherBench2 ERA5, 6-hourly, 240 x 121 with poles, conservatively regridded",
    ),
    ARCO_ERA5_URL: StoreInfo(
        0.25,
        "1959-01-01T00",
        None,
        "ARCO-ERA5 (Google Research), hourly, 0.25 degrees (721 x 1440), 37 levels",
    ),
}
"""The public stores the shipped configs name, with their declared grid and valid times."""

VALID_TIME_STOP_ATTR = "valid_time_stop"
"""The store attribute where ARCO-ERA5 records its last valid time."""


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


class Era5Reader:
    """ERA5 read per block of times: the store is opened lazily, and a call reads the times asked.

    Satisfies the :class:`~dambench.sources.base.Source` contract on the store's own grid (a
    0.25 degree ARCO-ERA5 field stays 0.25 degrees; regrid it where needed). Construction opens
    the store's metadata only (no field is read) and checks the channels' variables, levels and
    units; the object holds no data and pickles as its path and channels (a worker process
    reopens the store on first use).

    Parameters
    ----------
    path
        Zarr store, netCDF or GRIB file (local path or fsspec URL).
    channels
        Schema channels to read.

    Attributes
    ----------
    times
        The store's time coordinate (``pd.DatetimeIndex``).
    grid_deg
        The store's latitude spacing in degrees.
    valid_time_stop
        The last valid time the store declares (attribute ``valid_time_stop``), or ``None``.

    Raises
    ------
    DambenchSchemaError
        Missing variables or levels (named), wrong units.
    """

    def __init__(self, path: PathLike, channels: Sequence[str]):
        self.path = str(path)
        self.channels = tuple(channels)
        self._ds: xr.Dataset | None = None
        empty = self(times=None)  # no time: checks the layout, reads no field
        latitude = np.asarray(empty["latitude"].values, dtype=np.float64)
        self.grid_deg = float(np.abs(np.diff(latitude)).min()) if latitude.size > 1 else np.nan
        self.times = pd.DatetimeIndex(self.dataset["time"].values)
        stop = self.dataset.attrs.get(VALID_TIME_STOP_ATTR)
        self.valid_time_stop = pd.Timestamp(stop) if stop else None

    @property
    def dataset(self) -> xr.Dataset:
        """The store, opened lazily (without dask) on first use."""
        if self._ds is None:
            ds = rename_aliases(open_dataset_any(self.path, chunks=None))
            if "time" not in ds.dims and "time" in ds.coords:
                ds = ds.expand_dims("time")  # a single-time file
            self._ds = ds
        return self._ds

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_ds": None}

    def __call__(self, times, channels: Sequence[str] | None = None) -> xr.DataArray:
        """The fields at exactly ``times`` ``(time, channel, latitude, longitude)``, loaded.

        ``times=None`` gives zero times (a layout check that reads no field). Missing times
        raise, naming them and the span the store covers.
        """
        ds = self.dataset
        ds = ds.isel(time=slice(0, 0)) if times is None else select_times(ds, times, self.path)
        field = read_channels(ds, channels or self.channels, self.path)
        field.attrs = {"source": self.path}
        return field


def read_channels(ds: xr.Dataset, channels: Sequence[str], source: str) -> xr.DataArray:
    """The stacked ``channels`` of ``ds`` (already cut to the times wanted), loaded.

    Each variable is read with one indexing operation at the levels the channels need, so a
    chunk that holds all the levels of a time (ARCO-ERA5's ``(1, 37, 721, 1440)``) is fetched and
    decompressed once, not once per channel; the other levels are never read.
    """
    per_variable = schema_variables(_canonical_layout(ds, 0), source, channels)
    per_variable = _needed_levels(per_variable, channels).load()
    return to_channels(per_variable, channels)


def _needed_levels(ds: xr.Dataset, channels: Sequence[str]) -> xr.Dataset:
    """``ds`` with each upper-air variable cut to the levels ``channels`` name (lazily)."""
    out = {}
    for name, field in ds.data_vars.items():
        levels = [schema.CHANNEL_LEVEL[c] for c in channels if schema.CHANNEL_VARIABLE[c] == name]
        if schema.LEVEL in field.dims:
            field = field.sel({schema.LEVEL: sorted(set(levels))})
        out[name] = field
    return xr.Dataset(out)
