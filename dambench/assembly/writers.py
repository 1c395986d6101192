"""Writers of the two published representations: a sharded Zarr v3 store and Parquet shards.

Both are deterministic functions of the data (no wall-clock time anywhere), so a resumed build ends
byte-identical to an uninterrupted one. Every file is written to a temporary name and renamed
(zarr's local store does the same with ``*.partial`` names), so a file is whole or absent; a
write that fails (a full disk) removes its temporary file.

Both formats carry their own checksums, so a read of corrupted bytes fails without a full hash:
every Zarr chunk ends with a crc32c (:data:`ZARR_COMPRESSORS`; the shard index has one by default)
and every Parquet data page has a page CRC (``write_page_checksum``; readers verify it with
``page_checksum_verification``, see :func:`dambench.load.load_rows`). Attributes are strings
(JSON for structured values), so a store exports to netCDF as it is.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr
import zarr

from dambench import schema
from dambench._version import __version__
from dambench.channels import LEVEL_ATTRS, channel_coords
from dambench.grid import CANONICAL_GRID

STATE_FIELDS = ("target", "background", "observation")
FIELD_LONG_NAMES = {
    "target": "ERA5 reanalysis state x*(t)",
    "background": "background state x_b(t)",
    "observation": "observations y(t) = M(t) x*(t) + noise, NaN where unobserved",
}
ZARR_COMPRESSORS = (
    zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=4),
    zarr.codecs.Crc32cCodec(),
)
"""The bytes-to-bytes codecs of every chunk, chosen by ``benchmarks/bench_io.py --codecs``:
Blosc-zstd with byte shuffle, then a crc32c checksum that fails the read of a corrupted chunk."""
TIME_ATTRS = {"axis": "T", "standard_name": "time", "long_name": "cycle (analysis) time, UTC"}
CHANNEL_LEVEL_ATTRS = {
    **{k: v for k, v in LEVEL_ATTRS.items() if k != "axis"},
    "long_name": "pressure level (NaN at the surface)",
}


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """Yield the temporary name of ``path``; after the block, rename it to ``path`` (atomic).
    When the block fails (a full disk), the temporary file is removed (freeing its space) and
    ``path`` is left as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    with _replacing(path) as tmp:
        tmp.write_bytes(data)


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
        schema.TIME: xr.DataArray(cycles.values, dims=schema.TIME, attrs=TIME_ATTRS),
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
    coords[schema.LEVEL] = coords[schema.LEVEL].assign_attrs(CHANNEL_LEVEL_ATTRS)
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
            attrs={
                "units": schema.MODALITIES[name].units,
                "long_name": schema.MODALITIES[name].long_name,
            },
        )
        encoding[name] = _encoding((1, h, w), (cycles_per_shard, h, w))
    ds = xr.Dataset(variables, coords=coords, attrs=attrs)
    ds[schema.TIME].encoding = {"units": "hours since 1970-01-01", "dtype": "int64"}
    ds.to_zarr(path, mode="w-", compute=False, encoding=encoding, consolidated=False, zarr_format=3)


def _lazy_nan(shape):
    import dask.array as da

    return da.full(shape, np.nan, dtype=np.float32, chunks=shape)


def _encoding(chunks, shards) -> dict:
    return {"chunks": chunks, "shards": shards, "compressors": ZARR_COMPRESSORS}


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


def update_store_attrs(path: Path, attrs: dict[str, str]) -> None:
    """Merge ``attrs`` (strings: JSON for structured values) into the store's root attributes."""
    bad = [k for k, v in attrs.items() if not isinstance(v, str)]
    if bad:
        raise TypeError(f"Store attributes {bad} must be strings (JSON for structured values).")
    group = zarr.open_group(path, mode="r+", zarr_format=3)
    group.attrs.update(attrs)


def consolidate_store(path: Path) -> None:
    """Write the consolidated metadata (every node's ``zarr.json`` gathered into the root one), so
    that opening the store over HTTP is one request.

    zarr-python 3 warns that consolidated metadata is not (yet) part of the Zarr v3 specification;
    it is the zarr-python convention that xarray reads, so the warning is silenced here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(str(path), zarr_format=3)


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
    """One Parquet file, one row group per cycle, zstd, no dictionary encoding, page checksums;
    atomic."""
    rows = ({name: values[i : i + 1] for name, values in arrays.items()} for i in range(len(times)))
    write_parquet_rows(path, times, rows, features)


def write_parquet_rows(path: Path, times: np.ndarray, rows: Iterable[dict], features) -> None:
    """:func:`write_parquet` from ``rows``: one ``{field: (1, ...) array}`` per cycle of
    ``times``, consumed one at a time (memory: one cycle, whatever the file's length)."""
    schema_ = features.arrow_schema
    with (
        _replacing(path) as tmp,
        pq.ParquetWriter(
            tmp,
            schema_,
            compression="zstd",
            use_dictionary=False,
            write_statistics=False,
            write_page_checksum=True,
        ) as writer,
    ):
        for time, arrays in zip(times, rows, strict=True):
            columns = {"time": pa.array(np.array([time], dtype="datetime64[ns]"))}
            for name, values in arrays.items():
                columns[name] = _nested(values, schema_.field(name).type)
            writer.write_table(pa.table(columns, schema=schema_))


def preview_table(
    times: np.ndarray, channels: list[str], arrays: dict[str, np.ndarray]
) -> pa.Table:
    """The rows of the card's small ``preview`` config: one per (cycle, channel), a few scalars.

    Parameters
    ----------
    times
        ``(n,)`` datetime64 cycle times.
    channels
        The ``C`` channel names.
    arrays
        ``target``, ``background``, ``observation``: ``(n, C, 121, 240)`` in physical units.

    Returns
    -------
    Table with ``time``, ``channel``, ``units``, ``target_mean``, ``target_std`` (weighted by
    cos(latitude) over the grid), ``background_rmse`` (the same weights, against the target),
    ``observed_fraction`` and ``observation_rmse`` (over the observed points).
    """
    n = len(times)
    lat = np.deg2rad(CANONICAL_GRID.latitude)
    weights = np.clip(np.cos(lat), 0, None)[:, None] * np.ones(CANONICAL_GRID.shape[1])
    weights = weights / weights.sum()
    # one cycle at a time: the float64 temporaries are a cycle's, whatever the block's length
    scalars = [_preview_scalars({k: a[i] for k, a in arrays.items()}, weights) for i in range(n)]
    c = len(channels)
    columns = {
        "time": pa.array(np.repeat(np.asarray(times, "datetime64[ns]"), c)),
        "channel": pa.array(np.tile(np.asarray(channels, dtype=object), n), pa.string()),
        "units": pa.array([schema.channel_units(ch) for ch in channels] * n, pa.string()),
        **{
            name: np.concatenate([cycle[name] for cycle in scalars]) if n else np.zeros(0)
            for name in PREVIEW_SCALARS
        },
    }
    return pa.table(columns)


PREVIEW_SCALARS = (
    "target_mean",
    "target_std",
    "background_rmse",
    "observed_fraction",
    "observation_rmse",
)


def _preview_scalars(cycle: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """:data:`PREVIEW_SCALARS` of one cycle's ``(C, 121, 240)`` fields, each ``(C,)``."""
    target = cycle["target"].astype(np.float64)
    mean = np.einsum("cij,ij->c", target, weights)
    var = np.einsum("cij,ij->c", (target - mean[:, None, None]) ** 2, weights)
    error = cycle["background"].astype(np.float64) - target
    observed = np.isfinite(cycle["observation"])
    count = observed.sum(axis=(1, 2))
    obs_error = np.where(observed, cycle["observation"] - target, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        obs_rmse = np.sqrt((obs_error**2).sum(axis=(1, 2)) / count)
    return {
        "target_mean": mean,
        "target_std": np.sqrt(var),
        "background_rmse": np.sqrt(np.einsum("cij,ij->c", error**2, weights)),
        "observed_fraction": count / np.prod(CANONICAL_GRID.shape),
        "observation_rmse": obs_rmse,
    }


def write_preview(path: Path, table: pa.Table) -> None:
    """Write a preview table (zstd, page checksums) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _replacing(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_page_checksum=True)


def store_history() -> str:
    """The ``history`` attribute: what wrote the data (deterministic, no time stamp)."""
    return f"written by dambench {__version__} (dambench build)"
