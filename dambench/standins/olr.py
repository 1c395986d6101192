"""A stand-in of NOAA PSL's interpolated daily OLR file ``olr.day.mean.nc``: never data.

Layout as PSL distributes it (and as :func:`dambench.sources.olr.read_olr` reads it): netCDF4,
variable ``olr`` ``(time, lat, lon)`` float32 in W/m^2 with a ``valid_range``, 2.5 degrees
(73 x 144, lat 90 -> -90, lon 0 -> 357.5), daily from 1974-06-01 (the real record's first day)
to the last day asked for, time in hours since 1800-01-01: the whole record in one file, as the
real one. The chunking, 30 days per chunk with zlib, is our assumption. Values: about 170 W/m^2
at the poles, 280 W/m^2 in the subtropics, lower in a drifting band of tropical convection.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from dambench.standins.fields import WAVE_SPEED_RAD_PER_DAY, round_mantissa, standin_attrs

OLR_FILE = "olr.day.mean.nc"
FIRST_DAY = pd.Timestamp("1974-06-01")
LATITUDE = np.arange(90.0, -92.5, -2.5)
LONGITUDE = np.arange(0.0, 360.0, 2.5)
DAYS_PER_CHUNK = 30


def daily_olr(first_day: pd.Timestamp, n_days: int) -> np.ndarray:
    """The stand-in's OLR of ``n_days`` days from ``first_day``, ``(n, 73, 144)`` float32 W/m^2."""
    lat = np.deg2rad(LATITUDE)[None, :, None]
    lon = np.deg2rad(LONGITUDE)[None, None, :]
    days = ((pd.Timestamp(first_day) - FIRST_DAY).days + np.arange(n_days))[:, None, None]
    convection = np.exp(-((LATITUDE / 12.0) ** 2))[None, :, None] * (
        1.0 + np.cos(2 * lon - WAVE_SPEED_RAD_PER_DAY * days)
    )
    olr = 170.0 + 110.0 * np.cos(lat) ** 2 - 45.0 * convection
    return round_mantissa(olr.astype(np.float32), 10)


def _record(first_day: pd.Timestamp, last_day: pd.Timestamp) -> xr.Dataset:
    days = pd.date_range(first_day, last_day, freq="D")

    def block(_, block_info=None):
        start, stop = block_info[None]["array-location"][0]
        return daily_olr(days[start], stop - start)

    values = da.map_blocks(
        block,
        da.empty(
            (len(days), 73, 144), chunks=(min(DAYS_PER_CHUNK, len(days)), 73, 144), dtype=np.float32
        ),
        dtype=np.float32,
    )
    olr = xr.Variable(
        ("time", "lat", "lon"),
        values,
        attrs={
            "units": "W/m^2",
            "long_name": "Daily OLR",
            "valid_range": np.array([0.0, 500.0], dtype=np.float32),
        },
    )
    coords = {
        "time": ("time", days.values, {"long_name": "Time", "axis": "T"}),
        "lat": ("lat", LATITUDE.astype(np.float32), {"units": "degrees_north"}),
        "lon": ("lon", LONGITUDE.astype(np.float32), {"units": "degrees_east"}),
    }
    ds = xr.Dataset({"olr": olr}, coords=coords)
    ds.attrs = {
        "title": "Daily NOAA interpolated OLR (stand-in)",
        **standin_attrs("NOAA PSL's interpolated daily OLR file olr.day.mean.nc"),
    }
    return ds


def write_olr_standin(folder: str | Path, last_day, *, first_day=FIRST_DAY) -> Path:
    """Write ``olr.day.mean.nc`` from ``first_day`` (default 1974-06-01, the real record's start;
    later only for small tests) to ``last_day`` into ``folder``; an existing file covering that
    span is kept."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / OLR_FILE
    first_day, last_day = (pd.Timestamp(d).normalize() for d in (first_day, last_day))
    if path.exists():
        with xr.open_dataset(path, engine="h5netcdf") as old:
            held = pd.DatetimeIndex(old["time"].values)
            if held[0] <= first_day and held[-1] >= last_day:
                return path
    n_days = (last_day - first_day).days + 1
    encoding = {
        "olr": {"zlib": True, "complevel": 4, "chunksizes": (min(DAYS_PER_CHUNK, n_days), 73, 144)},
        "time": {"units": "hours since 1800-01-01 00:00:00", "dtype": "float64"},
    }
    partial = path.with_suffix(".nc.partial")
    _record(first_day, last_day).to_netcdf(partial, engine="h5netcdf", encoding=encoding)
    partial.replace(path)
    return path
