"""Observation operators: ``y = M * x + eps``, NaN where unobserved.

Masks and noise are deterministic functions of ``(seed, time, channel)``: each draw uses numpy's
``SeedSequence([seed, stream, year, month, day, hour, minute, second, channel_key])`` with PCG64,
so the same call gives the same observations on any machine, for any chunking, and a channel's
draw does not depend on which other channels are present. Each draw covers the whole (latitude,
longitude) field of one (time, channel); a dask block cuts its own window out of it, so lazy and
eager results are identical bit for bit. numpy does not promise identical
random streams across all of its future versions (NEP 19), which is why the benchmark *stores*
its validation and test observations instead of regenerating them; training may redraw freely.

Patterns
--------
``random``
    every (channel, latitude, longitude) element observed independently with probability
    ``ratio`` (the paper's default, 0.05);
``columns``
    the same points for every channel (stations or soundings observing the whole column), a
    fresh draw each time;
``stations``
    a fixed network of locations (latitude, longitude in degrees) snapped to the nearest grid
    points, observing every channel at every time.

Noise is Gaussian with a diagonal R: a per-channel standard deviation in the channel's units
(:data:`dambench.schema.OBSERVATION_ERROR_STD` by default; ``noise=0`` reproduces the upstream
code's noise-free observations).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench._typing import ObservationPattern
from dambench.exceptions import DambenchInputError

_MASK_STREAM = 1
_NOISE_STREAM = 2
_COLUMN_STREAM = 3

NoiseLike = Literal["default"] | float | Mapping[str, float] | None


def _time_key(value: np.datetime64 | None) -> list[int]:
    if value is None:
        return []
    ts = pd.Timestamp(value)
    return [ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second]


def _channel_key(name: str | None) -> int:
    if name is None:
        return 0
    if name in schema.CHANNEL_INDEX:
        return schema.CHANNEL_INDEX[name]
    return 1000 + zlib.crc32(name.encode())


def _rng(seed: int, stream: int, time_key: list[int], channel_key: int | None = None):
    entropy = [seed, stream, *time_key] + ([] if channel_key is None else [channel_key])
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def nearest_cells(
    latitude: np.ndarray, longitude: np.ndarray, stations_lat: np.ndarray, stations_lon: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Grid row and column nearest to each station (longitude periodic), one pair per station."""
    stations_lat = np.asarray(stations_lat, dtype=np.float64)
    stations_lon = np.asarray(stations_lon, dtype=np.float64)
    if stations_lat.shape != stations_lon.shape or stations_lat.ndim != 1:
        raise DambenchInputError("stations need 1-D latitude and longitude arrays of equal length.")
    if np.any(np.abs(stations_lat) > 90) or not np.all(np.isfinite(stations_lon)):
        raise DambenchInputError("station latitudes must lie in [-90, 90], longitudes be finite.")
    rows = np.abs(stations_lat[:, None] - np.asarray(latitude)[None, :]).argmin(axis=1)
    dlon = np.abs(np.mod(stations_lon[:, None] - np.asarray(longitude)[None, :] + 180, 360) - 180)
    return rows, dlon.argmin(axis=1)


def station_indices(
    latitude: np.ndarray, longitude: np.ndarray, stations_lat: np.ndarray, stations_lon: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct grid cells (rows, columns) holding at least one station."""
    rows, cols = nearest_cells(latitude, longitude, stations_lat, stations_lon)
    unique = np.unique(np.stack([rows, cols]), axis=1)
    return unique[0], unique[1]


def _check_options(pattern: str, ratio: float, stations) -> None:
    if pattern not in schema.OBSERVATION_PATTERNS:
        raise DambenchInputError(
            f"Unknown observation {pattern=}; choose from {schema.OBSERVATION_PATTERNS}."
        )
    if pattern != "stations" and not 0 <= ratio <= 1:
        raise DambenchInputError(f"Observation {ratio=} must lie in [0, 1].")
    if pattern == "stations" and stations is None:
        raise DambenchInputError("pattern='stations' needs stations=(latitudes, longitudes).")


def _draw_times(field: xr.DataArray) -> np.ndarray:
    """The times that key the draws: the time dim, a scalar time coordinate, or ``[None]``."""
    if schema.TIME in field.dims:
        return np.asarray(field[schema.TIME].values)
    if schema.TIME in field.coords and field[schema.TIME].ndim == 0:
        return np.asarray([field[schema.TIME].values])
    return np.asarray([None], dtype=object)


def _draw_channels(field: xr.DataArray) -> list:
    """The channel names that key the draws: the channel dim, a scalar channel coordinate, or
    the field's name."""
    if schema.CHANNEL in field.dims:
        return [str(c) for c in field[schema.CHANNEL].values.tolist()]
    if schema.CHANNEL in field.coords and field[schema.CHANNEL].ndim == 0:
        return [str(field[schema.CHANNEL].values.item())]
    return [field.name]


def _mask_draw(pattern: str, ratio: float, seed: int, stations_rc, full_shape):
    """``draw(times, channels, window) -> bool (time, channel, *window)``; every draw is over
    the whole ``full_shape`` (latitude, longitude) field and then cut to ``window``."""
    stations_map = None
    if pattern == "stations":
        stations_map = np.zeros(full_shape, dtype=bool)
        stations_map[stations_rc[0], stations_rc[1]] = True

    def draw(times, channels, window) -> np.ndarray:
        rows, cols = window
        shape = (len(times), len(channels), rows.stop - rows.start, cols.stop - cols.start)
        out = np.zeros(shape, dtype=bool)
        if pattern == "stations":
            out[...] = stations_map[rows, cols]
            return out
        for i, time in enumerate(times):
            key = _time_key(time)
            if pattern == "columns":
                out[i] = (_rng(seed, _COLUMN_STREAM, key).random(full_shape) < ratio)[rows, cols]
                continue
            for j, channel in enumerate(channels):
                rng = _rng(seed, _MASK_STREAM, key, _channel_key(channel))
                out[i, j] = (rng.random(full_shape) < ratio)[rows, cols]
        return out

    return draw


def _noise_draw(seed: int, std_by_channel: Mapping, full_shape):
    """``draw(times, channels, window) -> float64 (time, channel, *window)`` of N(0, std**2)
    noise, drawn over the whole ``full_shape`` field and cut to ``window``."""

    def draw(times, channels, window) -> np.ndarray:
        rows, cols = window
        out = np.zeros((len(times), len(channels), rows.stop - rows.start, cols.stop - cols.start))
        for i, time in enumerate(times):
            key = _time_key(time)
            for j, channel in enumerate(channels):
                std = std_by_channel[channel]
                if std > 0:
                    rng = _rng(seed, _NOISE_STREAM, key, _channel_key(channel))
                    out[i, j] = std * rng.standard_normal(full_shape)[rows, cols]
        return out

    return draw


def _to_layout(values: np.ndarray, dims: tuple) -> np.ndarray:
    """(time, channel, latitude, longitude) draws -> ``dims`` (absent time/channel dropped)."""
    drawn = list(schema.CANONICAL_DIMS)
    for axis, dim in reversed(list(enumerate(schema.CANONICAL_DIMS[:2]))):
        if dim not in dims:
            values = values[(slice(None),) * axis + (0,)]
            drawn.remove(dim)
    return values.transpose([drawn.index(d) for d in dims])


def _drawn_like(field: xr.DataArray, draw, dtype, name: str, token) -> np.ndarray:
    """The draws laid out like ``field``: a numpy array, or a dask array with ``field``'s chunks
    whose blocks each draw their own times, channels and (latitude, longitude) window.

    The dask graph depends on no input data; its name is ``name`` plus a token of every setting
    (``token``), so two different draws never share a task name.
    """
    times, channels = _draw_times(field), _draw_channels(field)
    axes = {dim: i for i, dim in enumerate(field.dims)}

    def block(location) -> np.ndarray:
        def span(dim: str) -> slice:
            return slice(*location[axes[dim]]) if dim in axes else slice(0, 1)

        window = (span(schema.LATITUDE), span(schema.LONGITUDE))
        values = draw(times[span(schema.TIME)], channels[span(schema.CHANNEL)], window)
        return _to_layout(values, field.dims)

    if field.chunks is None:
        return block([(0, size) for size in field.shape])
    import dask.array as dsa
    from dask.base import tokenize

    def dask_block(block_info=None) -> np.ndarray:
        return block(block_info[None]["array-location"])

    key = tokenize(token, times, channels, field.dims, field.shape, field.chunks)
    meta = np.empty((0,) * field.ndim, dtype=dtype)
    return dsa.map_blocks(
        dask_block, chunks=field.chunks, dtype=dtype, meta=meta, name=f"{name}-{key}"
    )


def _check_field(field: xr.DataArray) -> None:
    if not isinstance(field, xr.DataArray):
        raise DambenchInputError(f"Observations are drawn from a DataArray, got {type(field)}.")
    extra = set(field.dims) - {schema.TIME, schema.CHANNEL, *schema.SPATIAL_DIMS}
    if extra or not set(schema.SPATIAL_DIMS) <= set(field.dims):
        raise DambenchInputError(
            f"Observation operators take dims within {schema.CANONICAL_DIMS} including latitude "
            f"and longitude; got {field.dims}."
        )


def observation_mask(
    field: xr.DataArray,
    *,
    pattern: ObservationPattern = schema.DEFAULT_OBSERVATION_PATTERN,
    ratio: float = schema.DEFAULT_OBSERVATION_RATIO,
    seed: int = schema.DEFAULT_OBSERVATION_SEED,
    stations: tuple[np.ndarray, np.ndarray] | None = None,
) -> xr.DataArray:
    """Boolean mask M (True = observed) with the dims and coords of ``field``; lazy on dask.

    Parameters
    ----------
    field
        The truth, dims within ``(time, channel, latitude, longitude)`` in any order; a scalar
        ``time`` or ``channel`` coordinate keys the draw like the matching dim would.
    pattern, ratio, seed, stations
        See the module docstring; ``stations`` is ``(latitudes, longitudes)`` in degrees.

    Returns
    -------
    DataArray named ``mask``. On dask input it is a dask array with the field's chunks that reads
    none of the field's data and equals the eager mask bit for bit, whatever the chunking.
    """
    _check_field(field)
    _check_options(pattern, ratio, stations)
    full_shape = (field.sizes[schema.LATITUDE], field.sizes[schema.LONGITUDE])
    stations_rc = None
    if pattern == "stations":
        stations_rc = station_indices(
            field[schema.LATITUDE].values, field[schema.LONGITUDE].values, *stations
        )
    draw = _mask_draw(pattern, ratio, seed, stations_rc, full_shape)
    token = ("mask", pattern, ratio, seed, stations_rc)
    data = _drawn_like(field, draw, bool, "dambench-observation-mask", token)
    mask = xr.DataArray(data, dims=field.dims, coords=field.coords, name="mask")
    mask.attrs = {"pattern": pattern, "seed": seed}
    if pattern == "stations":
        mask.attrs["n_stations"] = len(stations_rc[0])
    else:
        mask.attrs["ratio"] = ratio
    return mask


def noise_std(field: xr.DataArray, noise: NoiseLike = "default") -> dict:
    """Per-channel observation-error standard deviation for ``field``'s channels."""
    channels = _draw_channels(field)
    if noise is None:
        return dict.fromkeys(channels, 0.0)
    if isinstance(noise, str):
        if noise != "default":
            raise DambenchInputError(
                f"noise={noise!r}: use 'default', a number, a channel -> std mapping or None."
            )
        if field.attrs.get("normalized"):
            raise DambenchInputError(
                "Default observation errors are in physical units but the field is normalised; "
                "observe the physical field and normalise afterwards, or pass noise=<std>."
            )
        unknown = [c for c in channels if c not in schema.OBSERVATION_ERROR_STD]
        if unknown:
            raise DambenchInputError(f"No default observation error for channels {unknown}.")
        return {c: schema.OBSERVATION_ERROR_STD[c] for c in channels}
    if isinstance(noise, Mapping):
        missing = [c for c in channels if c not in noise]
        if missing:
            raise DambenchInputError(f"noise mapping lacks channels {missing}.")
        table = {c: float(noise[c]) for c in channels}
    else:
        table = dict.fromkeys(channels, float(noise))
    if any(not np.isfinite(s) or s < 0 for s in table.values()):
        raise DambenchInputError(f"Observation error std must be finite and >= 0, got {table}.")
    return table


def observe(
    field: xr.DataArray,
    *,
    pattern: ObservationPattern = schema.DEFAULT_OBSERVATION_PATTERN,
    ratio: float = schema.DEFAULT_OBSERVATION_RATIO,
    seed: int = schema.DEFAULT_OBSERVATION_SEED,
    noise: NoiseLike = "default",
    stations: tuple[np.ndarray, np.ndarray] | None = None,
) -> xr.DataArray:
    """Observations ``y = M * x + eps`` of ``field``, NaN where unobserved; lazy on dask.

    Parameters
    ----------
    field
        The truth in physical units, dims within ``(time, channel, latitude, longitude)``.
    pattern, ratio, seed, stations
        As :func:`observation_mask`.
    noise
        ``"default"`` (:data:`~dambench.schema.OBSERVATION_ERROR_STD`), one std for all
        channels, a mapping channel -> std, or ``0``/``None`` for none; in the field's units.

    Returns
    -------
    DataArray named ``observation``, same dims, coords and dtype as a floating ``field``
    (integer fields give float64); attrs record the settings. ``observation.notnull()`` is the
    mask. The noise is drawn in float64, added, and the sum cast to the field's dtype. On dask
    input the result is lazy, with the field's chunks, and equals the eager result bit for bit
    for any chunking (each block draws whole (latitude, longitude) fields, so chunking in
    latitude or longitude repeats that work once per tile).
    """
    mask = observation_mask(field, pattern=pattern, ratio=ratio, seed=seed, stations=stations)
    std = noise_std(field, noise)
    values = field.data
    if any(s > 0 for s in std.values()):
        full_shape = (field.sizes[schema.LATITUDE], field.sizes[schema.LONGITUDE])
        draw = _noise_draw(seed, std, full_shape)
        token = ("noise", seed, sorted(std.items()))
        eps = _drawn_like(field, draw, np.float64, "dambench-observation-noise", token)
        values = (values + eps).astype(field.dtype)
    out = field.copy(data=np.where(mask.data, values, np.nan))
    out.name = "observation"
    out.attrs = {**field.attrs, **mask.attrs, "noise": str(noise)}
    return out
