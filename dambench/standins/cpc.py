"""Stand-ins of NOAA PSL's CPC global daily precipitation files ``precip.{year}.nc``: never data.

Layout as PSL distributes them (and as :func:`dambench.sources.cpc.read_cpc_psl` reads them):
netCDF4, variable ``precip`` ``(time, lat, lon)`` float32 in ``mm`` (daily totals), 0.5 degrees
(360 x 720, lat 89.75 -> -89.75, lon 0.25 -> 359.75), missing values (``_FillValue``) over the
oceans, time in hours since 1900-01-01, one file per year with every day of it. The chunking, one
day per chunk with zlib, is our assumption about the real files. Values: an ITCZ and mid-latitude
storm tracks modulated by drifting waves (many dry cells), on synthetic continents.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from dambench.standins.fields import WAVE_SPEED_RAD_PER_DAY, round_mantissa, standin_attrs

CPC_FILE = "precip.{year}.nc"
LATITUDE = np.arange(89.75, -90.0, -0.5)
LONGITUDE = np.arange(0.25, 360.0, 0.5)
FILL_VALUE = np.float32(-9.96921e36)
LAND_FRACTION = 0.3


def land_mask(latitude: np.ndarray = LATITUDE, longitude: np.ndarray = LONGITUDE) -> np.ndarray:
    """Synthetic continents: True on about :data:`LAND_FRACTION` of the cells, smooth blobs."""
    lat = np.deg2rad(latitude)[:, None]
    lon = np.deg2rad(longitude)[None, :]
    relief = (
        np.cos(2 * lon + 0.5) * np.cos(lat) ** 2
        + 0.7 * np.sin(3 * lon + 1.0) * np.sin(2 * lat + 0.3)
        + 0.5 * np.cos(lon - 2.0) * np.sin(lat)
    )
    return relief > np.quantile(relief, 1.0 - LAND_FRACTION)


def daily_precip(day: pd.Timestamp, land: np.ndarray) -> np.ndarray:
    """The stand-in's precipitation of ``day``, ``(360, 720)`` float32 mm, NaN over oceans."""
    lat = np.deg2rad(LATITUDE)[:, None]
    lon = np.deg2rad(LONGITUDE)[None, :]
    days = (pd.Timestamp(day) - pd.Timestamp("1900-01-01")).days
    tracks = 6.0 * np.exp(-((LATITUDE / 10.0) ** 2)) + 3.0 * np.exp(
        -(((np.abs(LATITUDE) - 45.0) / 12.0) ** 2)
    )
    wave = np.cos(4 * lon - WAVE_SPEED_RAD_PER_DAY * days) * np.cos(lat) + 0.6 * np.sin(
        7 * lon + 3 * lat - 2 * WAVE_SPEED_RAD_PER_DAY * days
    )
    rate = tracks[:, None] * np.maximum(0.0, 1.0 + 1.5 * wave)
    return np.where(land, round_mantissa(rate.astype(np.float32), 8), np.nan).astype(np.float32)


def _year_dataset(year: int, days: pd.DatetimeIndex | None = None) -> xr.Dataset:
    year_days = pd.date_range(f"{year}-01-01", f"{year}-12-31", freq="D")
    days = year_days if days is None else year_days[year_days.isin(days)]
    land = land_mask()

    def block(_, block_info=None):
        i = block_info[None]["array-location"][0][0]
        return daily_precip(days[i], land)[None]

    values = da.map_blocks(
        block,
        da.empty((len(days), 360, 720), chunks=(1, 360, 720), dtype=np.float32),
        dtype=np.float32,
    )
    precip = xr.Variable(
        ("time", "lat", "lon"),
        values,
        attrs={
            "units": "mm",
            "long_name": "Daily total of precipitation",
            "var_desc": "Precipitation",
        },
    )
    coords = {
        "time": ("time", days.values, {"long_name": "Time", "axis": "T"}),
        "lat": ("lat", LATITUDE.astype(np.float32), {"units": "degrees_north"}),
        "lon": ("lon", LONGITUDE.astype(np.float32), {"units": "degrees_east"}),
    }
    ds = xr.Dataset({"precip": precip}, coords=coords)
    ds.attrs = {
        "title": "CPC GLOBAL PRCP V1.0 (stand-in)",
        **standin_attrs(f"NOAA PSL's CPC global daily precipitation file precip.{year}.nc"),
    }
    return ds


def write_cpc_standin(folder: str | Path, years, *, days=None) -> list[Path]:
    """Write ``precip.{year}.nc`` for each of ``years`` into ``folder`` (existing files kept).

    ``days``: only these days of each year (a subset file, for small tests); default every day,
    as the real files. Returns the paths, in ``years`` order.
    """
    days = None if days is None else pd.DatetimeIndex(days).normalize()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for year in years:
        path = folder / CPC_FILE.format(year=year)
        if not path.exists():
            encoding = {
                "precip": {
                    "zlib": True,
                    "complevel": 4,
                    "chunksizes": (1, 360, 720),
                    "_FillValue": FILL_VALUE,
                },
                "time": {"units": "hours since 1900-01-01 00:00:00", "dtype": "float64"},
            }
            partial = path.with_suffix(".nc.partial")
            _year_dataset(int(year), days).to_netcdf(partial, engine="h5netcdf", encoding=encoding)
            partial.rename(path)
        paths.append(path)
    return paths
