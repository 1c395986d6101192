"""Read throughput of a built dataset: dambench/datasets loaders vs raw reads of the same bytes.

zarr_ratio = (cycles/s reading target, background and observation one cycle at a time through
``dambench.open_dataset``) / (cycles/s reading the same chunks with ``zarr`` directly).
parquet_ratio = (rows/s through ``datasets`` streaming with ``.with_format("numpy")``) / (rows/s
reading the same row groups, every column, with ``pyarrow`` and converting to numpy arrays).
Uses the era5-sample build (built into a temporary folder unless --folder is given); datasets and
stores are opened once, outside the timed passes; best of --repeats passes over all cycles.
``--parquet-channels 69`` measures the Parquet path on rows as wide as era5-fengwu's instead: 12
rows of 69-channel smooth synthetic fields written by dambench's own Parquet writer (era5-sample's
rows have 4 channels, so ``datasets``' fixed per-row cost weighs more there).
Last line: ``zarr_ratio=X parquet_ratio=Y``.
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

from dambench.build import build  # noqa: E402
from dambench.load import open_dataset  # noqa: E402

FIELDS = ("target", "background", "observation")


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
    from dambench.build.writers import hf_features, write_parquet

    rng = np.random.default_rng(0)
    lat = np.linspace(0, np.pi, 121)[:, None]
    lon = np.linspace(0, 2 * np.pi, 240, endpoint=False)[None]
    base = (np.sin(2 * lat) * np.cos(3 * lon)).astype(np.float32)  # (121, 240)

    def fields() -> np.ndarray:  # (rows, channels, 121, 240)
        scale = rng.normal(1, 0.1, (rows, channels, 1, 1))
        return (base * scale + rng.normal(0, 0.01, (rows, channels, 121, 240))).astype(np.float32)

    observation = fields()
    observation[rng.random(observation.shape) > 0.05] = np.nan
    arrays = {"target": fields(), "background": fields(), "observation": observation,
              "precip": np.full((rows, 121, 240), np.nan, np.float32)}
    times = np.arange(rows).astype("datetime64[D]").astype("datetime64[ns]")
    path = folder / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    write_parquet(path, times, arrays, hf_features(channels, ["precip"]))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folder", help="a built dataset folder (default: build era5-sample)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parquet-channels", type=int,
                        help="measure Parquet on 12 synthetic rows of this many channels")
    args = parser.parse_args()
    folder = Path(args.folder) if args.folder else build(
        "era5-sample", Path(tempfile.mkdtemp()) / "era5-sample", verbose=False)
    store = next(folder.glob("*.zarr"))
    n = open_dataset(folder).sizes["time"]

    ds = open_dataset(folder)

    def ours_zarr():
        for i in range(n):
            cycle = ds[list(FIELDS)].isel(time=i)
            [cycle[name].values for name in FIELDS]

    def raw_zarr():
        arrays = [zarr.open_array(store / name, mode="r") for name in FIELDS]
        for i in range(n):
            [array[i] for array in arrays]

    from datasets import load_dataset

    if args.parquet_channels:
        parquet = [synthetic_parquet(Path(tempfile.mkdtemp()), 12, args.parquet_channels)]
        files = {"train": [str(p) for p in parquet]}
        stream = load_dataset("parquet", data_files=files, split="train", streaming=True)
    else:
        parquet = sorted((folder / "data").glob("train-*.parquet"))
        stream = load_dataset(str(folder), split="train", streaming=True)
    stream = stream.with_format("numpy")
    n_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parquet)

    def ours_parquet():
        for row in stream:
            [row[name] for name in FIELDS]

    def raw_parquet():
        for path in parquet:
            handle = pq.ParquetFile(path)
            for g in range(handle.num_row_groups):
                table = handle.read_row_group(g)  # every column, as datasets decodes every column
                [to_numpy(table[name]) for name in table.column_names]

    t_ours_z, t_raw_z = best_of(ours_zarr, args.repeats), best_of(raw_zarr, args.repeats)
    t_ours_p, t_raw_p = best_of(ours_parquet, args.repeats), best_of(raw_parquet, args.repeats)
    print(f"{folder}: {n} cycles in zarr, {n_rows} train rows in {len(parquet)} parquet files")
    print(f"zarr:    open_dataset {n / t_ours_z:.1f} cycles/s, raw zarr {n / t_raw_z:.1f} cycles/s")
    print(f"parquet: datasets streaming {n_rows / t_ours_p:.1f} rows/s, "
          f"raw pyarrow {n_rows / t_raw_p:.1f} rows/s")
    print(f"zarr_ratio={t_raw_z / t_ours_z:.2f} parquet_ratio={t_raw_p / t_ours_p:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
