"""Small synthetic objects on the canonical grid, for tests and examples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.channels import channel_coords
from dambench.grid import CANONICAL_GRID, Grid

# Typical magnitudes (mean, spread) per variable so synthetic fields look physical.
_SCALE = {
    "u10": (0.0, 5.0),
    "v10": (0.0, 4.0),
    "t2m": (280.0, 15.0),
    "msl": (101000.0, 1000.0),
    "z": (50000.0, 2000.0),
    "q": (3e-3, 2e-3),
    "u": (5.0, 10.0),
    "v": (0.0, 6.0),
    "t": (250.0, 15.0),
}


def smooth_field(
    n_time: int = 2,
    channels: Sequence[str] = schema.CHANNELS,
    *,
    grid: Grid = CANONICAL_GRID,
    seed: int = 0,
    start: str = "2024-01-01",
    dtype: str = "float32",
) -> xr.DataArray:
    """A stacked ``(time, channel, latitude, longitude)`` field of smooth random waves with
    physical magnitudes, daily at 00 UTC from ``start``."""
    rng = np.random.default_rng(seed)
    lat = np.deg2rad(grid.latitude)[:, None]
    lon = np.deg2rad(grid.longitude)[None, :]
    data = np.empty((n_time, len(channels), *grid.shape), dtype=dtype)
    for j, name in enumerate(channels):
        mean, spread = _SCALE[schema.CHANNEL_VARIABLE[name]]
        for i in range(n_time):
            wave = np.zeros(grid.shape)
            for m in range(1, 7):
                amp, phase, n = rng.normal() / m, rng.uniform(0, 2 * np.pi), rng.integers(1, 6)
                wave += amp * np.cos(m * lon + phase) * np.cos(lat) ** (m % 3) * np.sin(n * lat)
            wave += 0.05 * rng.standard_normal(grid.shape)
            data[i, j] = mean + spread * wave
    coords = {
        schema.TIME: pd.date_range(start, periods=n_time, freq="D").values,
        **channel_coords(channels),
        **grid.coords(),
    }
    return xr.DataArray(data, dims=schema.CANONICAL_DIMS, coords=coords, name="target")


def mock_triplet(
    n_time: int = 2, channels: Sequence[str] = schema.CHANNELS, *, seed: int = 0
) -> xr.Dataset:
    """A triplet Dataset: smooth ``target``, ``background`` = target + smooth error, and
    ``observation`` drawn with the default operator."""
    from dambench.observe import observe

    target = smooth_field(n_time, channels, seed=seed)
    error = smooth_field(n_time, channels, seed=seed + 1)
    scale = xr.DataArray(
        [_SCALE[schema.CHANNEL_VARIABLE[c]][1] * 0.1 for c in channels], dims=schema.CHANNEL
    )
    background = (
        target + scale * (error - error.mean(schema.SPATIAL_DIMS)) / error.std(schema.SPATIAL_DIMS)
    ).astype(target.dtype)
    return xr.Dataset(
        {"target": target, "background": background, "observation": observe(target, seed=seed)}
    )


def write_prediction_store(
    path, ds: xr.Dataset, field: str = "background", *, offset: float = 0.0, model: str = "copy"
):
    """Write ``ds[field] + offset`` (a loaded split of a built dataset) as a prediction store at
    ``path`` through :class:`dambench.scoring.PredictionWriter`, one cycle at a time; returns
    ``path``. For tests and benchmarks that score a known analysis."""
    from dambench.scoring import PredictionWriter

    writer = PredictionWriter.like(ds, path, attrs={"model": model})
    for time in ds.time.values:
        writer.write(time, ds[field].sel(time=time).values + offset)
    return path
