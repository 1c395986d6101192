"""Throughput of ``dambench.batching.make_dataloader`` vs raw zarr reads of the same cycles.

What is timed
-------------
The era5-sample build (built into a temporary folder unless --folder is given), restricted to its
test and train cycles (18 of 21), whole-globe samples, stored observations (the cycles mix splits,
so ``train`` defaults to False).

- loader: one full pass ``for batch in loader`` over
  ``make_dataloader(ds, batch_size=1, num_workers=2, persistent_workers=True)``: every sample
  read by the workers (target, background, observation and the two precipitation modalities, all
  of a cycle's variables in one concurrent zarr read), normalised, masked, the modalities taken
  into model space (``log1p``, z-score), the window's coordinates attached, converted to tensors,
  collated and handed to the main process. The workers are started and warmed by one untimed
  pass first, so start-up is excluded; the dataset is opened (and the modality statistics
  resolved) outside the timing.
- raw: in this one process, for each of the same cycles ``zarr.open_array(store / name)[i]`` for
  target, background and observation (arrays opened once, outside the timing) and the loader's
  normalisation arithmetic in numpy: ``((x - mean) / std)`` in float64 cast to float32 for the
  three fields, plus the observation mask and zero fill.

Each is the best of --repeats passes (default 3; the readers' passes interleaved), in
samples/s. A second loader line reads only
the three state fields (``modalities=()``), the same bytes as the raw reader; the headline ratio
uses the default loader. Last line: ``loader_ratio=X`` (loader samples/s / raw samples/s).
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
import zarr  # noqa: E402
from _timing import best_of  # noqa: E402

from dambench.batching import make_dataloader  # noqa: E402
from dambench.assembly import build  # noqa: E402
from dambench.load import open_dataset, stats_from_attrs  # noqa: E402

FIELDS = ("target", "background", "observation")
SPLITS = ("test", "train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folder", help="a built dataset folder (default: build era5-sample)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    folder = (
        Path(args.folder)
        if args.folder
        else build("era5-sample", Path(tempfile.mkdtemp()) / "era5-sample", verbose=False)
    )
    store = next(folder.glob("*.zarr"))

    full = open_dataset(folder)
    cycles = np.flatnonzero(np.isin(full["split"].values, SPLITS))
    ds = full.isel(time=cycles)
    n = len(cycles)
    stats = stats_from_attrs(ds).sel(channel=ds["channel"].values)
    mean = stats["mean"].values.reshape(-1, 1, 1)
    std = stats["std"].values.reshape(-1, 1, 1)

    arrays = {name: zarr.open_array(store / name, mode="r") for name in FIELDS}

    def raw() -> None:
        for i in cycles:
            out = {}
            for name in FIELDS:
                values = arrays[name][i]
                normalised = np.subtract(values, mean, dtype=np.float64)
                normalised /= std
                out[name] = normalised.astype(np.float32)
            observed = np.isfinite(out["observation"])
            out["observation"][~observed] = 0.0
            out["mask"] = observed.astype(np.float32)

    def loader_pass(loader):
        def run() -> None:
            count = 0
            for batch in loader:
                count += batch["target"].shape[0]
            assert count == n, (count, n)

        return run

    labels = ("loader", "loader (state fields only)")
    loaders = {
        label: make_dataloader(
            ds,
            batch_size=1,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
            **kwargs,
        )
        for label, kwargs in zip(labels, ({}, {"modalities": ()}), strict=True)
    }
    passes = {label: loader_pass(loader) for label, loader in loaders.items()}
    passes["raw"] = raw
    for run in passes.values():  # starts and warms the workers (and the page cache); untimed
        run()
    # interleaved, so a burst of load from elsewhere on the machine hits every reader alike
    results = dict.fromkeys(passes, np.inf)
    for _ in range(args.repeats):
        for label, run in passes.items():
            results[label] = min(results[label], best_of(run, 1))
    t_raw = results.pop("raw")
    print(
        f"{folder}: {n} cycles ({'+'.join(SPLITS)}), {ds.sizes['channel']} channels, "
        f"121 x 240, batch_size=1, num_workers={args.workers}, best of {args.repeats}"
    )
    for label, seconds in results.items():
        print(f"{label}: {n / seconds:.1f} samples/s (ratio to raw {t_raw / seconds:.2f})")
    print(f"raw zarr + numpy normalisation: {n / t_raw:.1f} samples/s")
    print(f"load average while running: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"loader_ratio={t_raw / results['loader']:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
