"""Writers of the two published representations: a sharded Zarr v3 store and Parquet shards.

Both are deterministic functions of the data (no wall-clock time anywhere), so a resumed build ends
byte-identical to an uninterrupted one. Parquet files are written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr
import zarr

from dambench import __version__, schema
from dambench.build.recipes import MODALITY_LONG_NAMES, MODALITY_UNITS
from dambench.channels import channel_coords
from dambench.grid import CANONICAL_GRID

STATE_FIELDS = ("target", "background", "observation")
FIELD_LONG_NAMES = {
    "target": "ERA5 reanalysis state x*(t)",
    "background": "background state x_b(t)",
    "observation": "observations y(t) = M(t) x*(t) + noise, NaN where unobserved",
}
_COMPRESSORS = [zarr.codecs.ZstdCodec(level=3)]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    """Deterministic JSON (sorted keys, 2-space indent) written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


# --- Zarr ----------------------------------------------------------------------------------------


def create_store(
    path: Path,
    cycles: pd.DatetimeIndex,
    splits: np.ndarray,
    channels: tuple[str, ...],
    modalities: list[str],
    cycles_per_shard: int,
    attrs: dict,
) -> None:
    """Create the empty store: every array, coordinate and attribute; no data chunks yet."""
    n, c = len(cycles), len(channels)
    h, w = CANONICAL_GRID.shape
    coords = {
        schema.TIME: xr.DataArray(cycles.values, dims=schema.TIME, attrs={"axis": "T"}),
        "split": xr.DataArray(np.asarray(splits, dtype=object), dims=schema.TIME),
        **{
            name: coord.astype(object) if coord.dtype.kind == "U" else coord
            for name, coord in channel_coords(channels).items()
        },
        "standard_name": xr.DataArray(
            np.array(
                [schema.VARIABLES[schema.CHANNEL_VARIABLE[c]].standard_name for c in channels],
                dtype=object,
            ),
            dims=schema.CHANNEL,
        ),
        **CANONICAL_GRID.coords(),
    }
    variables = {}
    encoding = {}
    for name in STATE_FIELDS:
        data = _lazy_nan((n, c, h, w))
        variables[name] = xr.Variable(
            schema.CANONICAL_DIMS, data, attrs={"long_name": FIELD_LONG_NAMES[name]}
        )
        encoding[name] = _encoding((1, c, h, w), (cycles_per_shard, c, h, w))
    for name in modalities:
        variables[name] = xr.Variable(
            (schema.TIME, *schema.SPATIAL_DIMS),
            _lazy_nan((n, h, w)),
            attrs={"units": MODALITY_UNITS[name], "long_name": MODALITY_LONG_NAMES[name]},
        )
        encoding[name] = _encoding((1, h, w), (cycles_per_shard, h, w))
    ds = xr.Dataset(variables, coords=coords, attrs=attrs)
    ds[schema.TIME].encoding = {"units": "hours since 1970-01-01", "dtype": "int64"}
    ds.to_zarr(path, mode="w-", compute=False, encoding=encoding, consolidated=False, zarr_format=3)


def _lazy_nan(shape):
    import dask.array as da

    return da.full(shape, np.nan, dtype=np.float32, chunks=shape)


def _encoding(chunks, shards) -> dict:
    return {"chunks": chunks, "shards": shards, "compressors": _COMPRESSORS}


def write_store_block(path: Path, start: int, arrays: dict[str, np.ndarray]) -> None:
    """Write the cycles ``start .. start + n`` of every field (a whole number of shards)."""
    variables = {}
    for name, values in arrays.items():
        dims = schema.CANONICAL_DIMS if values.ndim == 4 else (schema.TIME, *schema.SPATIAL_DIMS)
        variables[name] = xr.Variable(dims, values)
    n = next(iter(arrays.values())).shape[0]
    xr.Dataset(variables).to_zarr(
        path, region={schema.TIME: slice(start, start + n)}, consolidated=False
    )


def update_store_attrs(path: Path, attrs: dict) -> None:
    """Merge ``attrs`` into the store's root attributes."""
    group = zarr.open_group(path, mode="r+", zarr_format=3)
    group.attrs.update(attrs)


# --- Parquet -------------------------------------------------------------------------------------


def hf_features(n_channels: int, modalities: list[str]):
    """The Hugging Face ``datasets`` features of a row."""
    from datasets import Array2D, Array3D, Features, Value

    h, w = CANONICAL_GRID.shape
    features = {"time": Value("timestamp[ns]")}
    for name in STATE_FIELDS:
        features[name] = Array3D((n_channels, h, w), "float32")
    for name in modalities:
        features[name] = Array2D((h, w), "float32")
    return Features(features)


def _nested(values: np.ndarray, extension_type) -> pa.ExtensionArray:
    """A (rows, *shape) float32 array as a datasets ArrayXD column, without copying values."""
    rows, shape = values.shape[0], values.shape[1:]
    storage = pa.array(np.ascontiguousarray(values, dtype=np.float32).ravel())
    for depth in range(len(shape) - 1, -1, -1):
        n_lists = rows * int(np.prod(shape[:depth], dtype=np.int64))
        offsets = np.arange(0, n_lists * shape[depth] + 1, shape[depth], dtype=np.int32)
        storage = pa.ListArray.from_arrays(pa.array(offsets), storage)
    return pa.ExtensionArray.from_storage(extension_type, storage)


def write_parquet(path: Path, times: np.ndarray, arrays: dict[str, np.ndarray], features) -> None:
    """One Parquet file, one row group per cycle, zstd, no dictionary encoding; atomic."""
    schema_ = features.arrow_schema
    tmp = path.with_name(path.name + ".tmp")
    with pq.ParquetWriter(
        tmp, schema_, compression="zstd", use_dictionary=False, write_statistics=False
    ) as writer:
        for i, time in enumerate(times):
            columns = {"time": pa.array(np.array([time], dtype="datetime64[ns]"))}
            for name, values in arrays.items():
                columns[name] = _nested(values[i : i + 1], schema_.field(name).type)
            writer.write_table(pa.table(columns, schema=schema_))
    os.replace(tmp, path)


def store_history() -> str:
    """The ``history`` attribute: what wrote the data (deterministic, no time stamp)."""
    return f"written by dambench {__version__} (dambench build)"
