"""A stand-in of ARCO-ERA5 (``full_37-1h-0p25deg-chunk-1.zarr-v3``) holding only the times a build
needs: never data.

Layout as the real store (Google's ARCO-ERA5, Zarr v3): variables under their ARCO names
(:data:`dambench.sources.lexicon.ARCO`), dims ``(time, level, latitude, longitude)`` for upper-air
and ``(time, latitude, longitude)`` for surface variables, latitude 90 -> -90 and longitude
0 -> 359.75 at 0.25 degrees (721 x 1440), level in hPa ascending, time in hours since 1900-01-01.
Differences from the real store, by design: 13 of its 37 levels (the schema's), 9 of its
variables, only the requested times (the real one is hourly from 1940), and the chunking we
assume for it, one time per chunk with the whole globe and every level in it ("chunk-1" in its
name; not checked against the real store's metadata, which could not be reached here),
Blosc-zstd compressed. ``grid_deg`` other than 0.25 makes the same layout on a coarser grid
(for runs that may feed the forecaster a coarser analysis).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr.codecs

from dambench import schema
from dambench.grid import Grid
from dambench.sources.lexicon import ARCO
from dambench.standins.fields import channel_field, standin_attrs

ARCO_STORE_NAME = "full_37-1h-0p25deg-chunk-1.zarr-v3"
EPOCH = pd.Timestamp("1900-01-01")
UNITS = {  # as ARCO-ERA5 spells them
    "u10": "m s**-1",
    "v10": "m s**-1",
    "t2m": "K",
    "msl": "Pa",
    "z": "m**2 s**-2",
    "q": "kg kg**-1",
    "u": "m s**-1",
    "v": "m s**-1",
    "t": "K",
}
COMPRESSOR = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def fengwu_times(cycles: pd.DatetimeIndex, lead_hours: int = 24, step_hours: int = 6):
    """Every ERA5 time a build of daily ``cycles`` reads: each cycle (its target) and the two
    initial states of its forecast (``t - lead - step`` and ``t - lead``), sorted, unique."""
    cycles = pd.DatetimeIndex(cycles)
    lead, step = pd.Timedelta(hours=lead_hours), pd.Timedelta(hours=step_hours)
    return cycles.union(cycles - lead).union(cycles - lead - step)


def _template(times: pd.DatetimeIndex, grid: Grid) -> xr.Dataset:
    shape2 = (len(times), *grid.shape)
    shape3 = (len(times), len(schema.LEVELS_HPA), *grid.shape)
    variables = {}
    for var, name in ARCO.items():
        upper = var in schema.ATMOSPHERIC_VARIABLES
        shape = shape3 if upper else shape2
        dims = (
            ("time", "level", "latitude", "longitude")
            if upper
            else ("time", "latitude", "longitude")
        )
        lazy = da.zeros(shape, dtype=np.float32, chunks=(1, *shape[1:]))
        variables[name] = xr.Variable(dims, lazy, attrs={"units": UNITS[var], "long_name": name})
    coords = {
        "time": times.values,
        "level": ("level", np.asarray(schema.LEVELS_HPA, dtype=np.int64), {"units": "millibars"}),
        "latitude": ("latitude", grid.latitude, {"units": "degrees_north"}),
        "longitude": ("longitude", grid.longitude, {"units": "degrees_east"}),
    }
    ds = xr.Dataset(variables, coords=coords)
    ds.attrs = standin_attrs(
        "ARCO-ERA5 (gs://gcp-public-data-arco-era5/ar/" + ARCO_STORE_NAME + ")"
    )
    return ds


def _time_slice(template: xr.Dataset, i: int, grid: Grid, seed: int) -> xr.Dataset:
    hours = (pd.Timestamp(template["time"].values[i]) - EPOCH) / pd.Timedelta(hours=1)
    out = {}
    for var, name in ARCO.items():
        if var in schema.ATMOSPHERIC_VARIABLES:
            stack = [
                channel_field(f"{var}{lv}", grid.latitude, grid.longitude, hours, seed)
                for lv in schema.LEVELS_HPA
            ]
            out[name] = (template[name].dims, np.stack(stack)[None])
        else:
            out[name] = (
                template[name].dims,
                channel_field(var, grid.latitude, grid.longitude, hours, seed)[None],
            )
    return xr.Dataset(out)


def write_arco_standin(
    path: str | Path,
    times: Iterable,
    *,
    grid_deg: float = 0.25,
    seed: int = 0,
) -> Path:
    """Write the ARCO-ERA5 stand-in at ``path`` for ``times`` (an interrupted write is redone).

    Parameters
    ----------
    path
        The store folder (conventionally named :data:`ARCO_STORE_NAME`).
    times
        The times to hold (e.g. :func:`fengwu_times` of the cycles to build).
    grid_deg
        Grid spacing (0.25 as the real store; coarser only for runs that allow it).
    seed
        Seed of the waves (the same seed and time give the same field).

    Returns
    -------
    ``path``; a ``.complete`` marker inside records a finished write (a store with it is kept
    as is when the same times are asked again).
    """
    path = Path(path)
    wanted = pd.DatetimeIndex(sorted(set(pd.DatetimeIndex(list(times)))))
    marker = path / ".complete"
    if marker.exists() and marker.read_text() == _signature(wanted, grid_deg, seed):
        return path
    grid = Grid(grid_deg)
    template = _template(wanted, grid)
    encoding = {name: {"compressors": (COMPRESSOR,)} for name in ARCO.values()}
    encoding["time"] = {"units": "hours since 1900-01-01", "dtype": "int64"}
    with warnings.catch_warnings():  # consolidated metadata outside the v3 spec, as ARCO has it
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        template.to_zarr(
            path, mode="w", compute=False, zarr_format=3, consolidated=True, encoding=encoding
        )
    names = list(ARCO.values())
    for i in range(len(wanted)):
        block = _time_slice(template, i, grid, seed)[names]
        block.to_zarr(path, region={"time": slice(i, i + 1)}, zarr_format=3)
    marker.write_text(_signature(wanted, grid_deg, seed))
    return path


def _signature(times: Sequence, grid_deg: float, seed: int) -> str:
    digest = hashlib.sha256(",".join(str(t) for t in times).encode()).hexdigest()[:16]
    return f"{len(times)} times (sha256 {digest}), {grid_deg} deg, seed {seed}"
