"""Read throughput of a built dataset: dambench/datasets loaders vs raw reads of the same bytes.

zarr_ratio = (cycles/s reading target, background and observation one cycle at a time through
``dambench.open_dataset``) / (cycles/s reading the same chunks with ``zarr`` directly).
parquet_ratio = (rows/s through ``dambench.load.load_rows`` -- ``datasets`` streaming with the
Parquet page checksums verified -- with ``.with_format("numpy")``) / (rows/s reading the same row
groups, every column, with ``pyarrow`` without checksum verification, converted to numpy arrays).
Uses the era5-sample build (built into a temporary folder unless --folder is given); datasets and
stores are opened once, outside the timed passes; best of --repeats passes over all cycles.
``--parquet-channels 69`` measures the Parquet path on rows as wide as era5-fengwu's instead: 12
rows of 69-channel smooth synthetic fields written by dambench's own Parquet writer (era5-sample's
rows have 4 channels, so ``datasets``' fixed per-row cost weighs more there).
``--codecs`` measures the Zarr codec chain instead: the era5-sample arrays rewritten with the
build's chunk and shard layout under each candidate chain (plain zstd, zstd with its frame
checksum, Blosc-zstd with byte shuffle, with and without a crc32c codec); per chain the
compression ratio of ``target`` (real ERA5 values) and of all arrays, and the raw read speed
(cycles/s, target + background + observation) relative to the build's chain
(:data:`dambench.assembly.writers.ZARR_COMPRESSORS`).
``--verify`` times ``dambench.verify`` (sha256 of every file) on the folder.
Last line: ``zarr_ratio=X parquet_ratio=Y`` (``--codecs``: ``target_ratio_<chain>=...`` and
``read_ratio_<chain>=...``; ``--verify``: ``verify_s=... verify_mb_per_s=...``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dambench-bench-hf-"))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import zarr  # noqa: E402
from _timing import best_of  # noqa: E402

from dambench.assembly import build  # noqa: E402
from dambench.load import open_dataset  # noqa: E402

FIELDS = ("target", "background", "observation")
CODEC_CHAINS = {
    "zstd3": lambda: [zarr.codecs.ZstdCodec(level=3)],
    "zstd3_frame_checksum": lambda: [zarr.codecs.ZstdCodec(level=3, checksum=True)],
    "zstd3_crc32c": lambda: [zarr.codecs.ZstdCodec(level=3), zarr.codecs.Crc32cCodec()],
    "blosc_zstd5_shuffle": lambda: [
        zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=4)
    ],
    "blosc_zstd5_shuffle_crc32c": lambda: [
        zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=4),
        zarr.codecs.Crc32cCodec(),
    ],
    "blosc_zstd3_shuffle_crc32c": lambda: [
        zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=4),
        zarr.codecs.Crc32cCodec(),
    ],
    "blosc_lz4_shuffle_crc32c": lambda: [
        zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=4),
        zarr.codecs.Crc32cCodec(),
    ],
}


def to_numpy(column) -> np.ndarray:
    """One row's column as a numpy array: nested ArrayXD lists flattened and reshaped."""
    array = column.combine_chunks()
    if not hasattr(array, "storage"):
        return array.to_numpy()
    shape = array.type.shape
    values = array.storage
    for _ in shape:
        values = values.flatten()
    return np.asarray(values).reshape(-1, *shape)


def synthetic_parquet(folder: Path, rows: int, channels: int) -> Path:
    """A Parquet file of ``rows`` cycles with ``channels`` smooth fields, written like a build."""
    from dambench.assembly.writers import hf_features, write_parquet

    rng = np.random.default_rng(0)
    lat = np.linspace(0, np.pi, 121)[:, None]
    lon = np.linspace(0, 2 * np.pi, 240, endpoint=False)[None]
    base = (np.sin(2 * lat) * np.cos(3 * lon)).astype(np.float32)  # (121, 240)

    def fields() -> np.ndarray:  # (rows, channels, 121, 240)
        scale = rng.normal(1, 0.1, (rows, channels, 1, 1))
        return (base * scale + rng.normal(0, 0.01, (rows, channels, 121, 240))).astype(np.float32)

    observation = fields()
    observation[rng.random(observation.shape) > 0.05] = np.nan
    arrays = {
        "target": fields(),
        "background": fields(),
        "observation": observation,
        "precip": np.full((rows, 121, 240), np.nan, np.float32),
    }
    times = np.arange(rows).astype("datetime64[D]").astype("datetime64[ns]")
    path = folder / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    write_parquet(path, times, arrays, hf_features(channels, ["precip"]))
    return path


def rewrite(store: Path, out: Path, compressors: list) -> dict[str, int]:
    """The store's data variables rewritten under ``compressors`` (same chunks and shards);
    bytes written per variable."""
    source = zarr.open_group(store, mode="r")
    group = zarr.open_group(out, mode="w", zarr_format=3)
    sizes = {}
    for name, array in source.arrays():
        if array.ndim < 3:
            continue
        copy = group.create_array(
            name,
            shape=array.shape,
            dtype=array.dtype,
            chunks=array.chunks,
            shards=array.shards,
            compressors=compressors,
            fill_value=np.nan,
        )
        copy[:] = array[:]
        sizes[name] = sum(p.stat().st_size for p in (out / name).rglob("*") if p.is_file())
    return sizes


def bench_codecs(store: Path, repeats: int) -> str:
    """Size and read speed of each chain of :data:`CODEC_CHAINS` (read passes interleaved across
    chains, best of ``repeats``, so load changes on a shared machine hit every chain alike); the
    machine-readable line."""
    from dambench.assembly.writers import ZARR_COMPRESSORS

    raw = {name: a.nbytes for name, a in zarr.open_group(store, mode="r").arrays() if a.ndim >= 3}
    chains = {**CODEC_CHAINS, "build": lambda: list(ZARR_COMPRESSORS)}
    sizes, readers = {}, {}
    for name, make in chains.items():
        out = Path(tempfile.mkdtemp()) / f"{name}.zarr"
        sizes[name] = rewrite(store, out, make())
        arrays = [zarr.open_array(out / field, mode="r") for field in FIELDS]

        def read(arrays=arrays):
            for i in range(arrays[0].shape[0]):
                [array[i] for array in arrays]

        readers[name] = read
    best = dict.fromkeys(chains, np.inf)
    for _ in range(repeats):
        for name, read in readers.items():
            best[name] = min(best[name], best_of(read, 1))
    n = zarr.open_array(store / "target", mode="r").shape[0]
    print(f"{'chain':30s} target x  all x   cycles/s  read vs build")
    pairs = []
    for name in chains:
        target = raw["target"] / sizes[name]["target"]
        total = sum(raw.values()) / sum(sizes[name].values())
        speed, relative = n / best[name], best["build"] / best[name]
        print(f"{name:30s} {target:7.3f} {total:7.3f} {speed:9.1f} {relative:8.2f}")
        pairs.append(f"target_ratio_{name}={target:.3f} read_ratio_{name}={relative:.2f}")
    return " ".join(pairs)


def bench_verify(folder: Path, repeats: int) -> str:
    """Seconds of ``dambench.verify`` (every sha256) on the folder, best of ``repeats``."""
    from dambench.verify import verify

    report = verify(folder)
    seconds = best_of(lambda: verify(folder), repeats)
    print(f"verify: {report.n_files} files, {report.n_bytes / 1e6:.1f} MB in {seconds:.3f} s")
    return f"verify_s={seconds:.3f} verify_mb_per_s={report.n_bytes / 1e6 / seconds:.0f}"


def bench_zarr(folder: Path, store: Path, repeats: int) -> tuple[int, float, float]:
    """Cycles, and seconds through ``open_dataset`` and through raw zarr reads."""
    ds = open_dataset(folder)
    n = ds.sizes["time"]

    def ours_zarr():
        for i in range(n):
            cycle = ds[list(FIELDS)].isel(time=i)
            [cycle[name].values for name in FIELDS]

    def raw_zarr():
        arrays = [zarr.open_array(store / name, mode="r") for name in FIELDS]
        for i in range(n):
            [array[i] for array in arrays]

    return n, best_of(ours_zarr, repeats), best_of(raw_zarr, repeats)


def parquet_stream(folder: Path, channels: int | None):
    """The Parquet files read and their ``datasets`` stream, page checksums verified."""
    import pyarrow.dataset as pds
    from datasets import load_dataset

    from dambench.load import load_rows

    if not channels:
        parquet = sorted((folder / "data").glob("train-*.parquet"))
        return parquet, load_rows(folder, split="train", streaming=True)
    parquet = [synthetic_parquet(Path(tempfile.mkdtemp()), 12, channels)]
    checked = pds.ParquetFragmentScanOptions(page_checksum_verification=True)
    stream = load_dataset(
        "parquet",
        data_files={"train": [str(p) for p in parquet]},
        split="train",
        streaming=True,
        fragment_scan_options=checked,
    )
    return parquet, stream


def bench_parquet(
    folder: Path, channels: int | None, repeats: int
) -> tuple[int, int, float, float]:
    """Files, rows, and seconds through ``datasets`` streaming and through raw pyarrow reads."""
    parquet, stream = parquet_stream(folder, channels)
    stream = stream.with_format("numpy")

    def ours_parquet():
        for row in stream:
            [row[name] for name in FIELDS]

    def raw_parquet():
        for path in parquet:
            handle = pq.ParquetFile(path)
            for g in range(handle.num_row_groups):
                table = handle.read_row_group(g)  # every column, as datasets decodes every column
                [to_numpy(table[name]) for name in table.column_names]

    n_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parquet)
    return len(parquet), n_rows, best_of(ours_parquet, repeats), best_of(raw_parquet, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folder", help="a built dataset folder (default: build era5-sample)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--parquet-channels",
        type=int,
        help="measure Parquet on 12 synthetic rows of this many channels",
    )
    parser.add_argument("--codecs", action="store_true", help="compare Zarr codec chains")
    parser.add_argument("--verify", action="store_true", help="time dambench.verify")
    args = parser.parse_args()
    folder = (
        Path(args.folder)
        if args.folder
        else build("era5-sample", Path(tempfile.mkdtemp()) / "era5-sample", verbose=False)
    )
    store = next(folder.glob("*.zarr"))
    if args.codecs:
        line = bench_codecs(store, args.repeats)
    elif args.verify:
        line = bench_verify(folder, args.repeats)
    else:
        n, t_ours_z, t_raw_z = bench_zarr(folder, store, args.repeats)
        files, rows, t_ours_p, t_raw_p = bench_parquet(folder, args.parquet_channels, args.repeats)
        print(f"{folder}: {n} cycles in zarr, {rows} train rows in {files} parquet files")
        print(f"zarr:    open_dataset {n / t_ours_z:.1f} cycles/s, raw zarr {n / t_raw_z:.1f}")
        print(f"parquet: load_rows {rows / t_ours_p:.1f} rows/s, raw pyarrow {rows / t_raw_p:.1f}")
        line = f"zarr_ratio={t_raw_z / t_ours_z:.2f} parquet_ratio={t_raw_p / t_ours_p:.2f}"
    print(line)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
