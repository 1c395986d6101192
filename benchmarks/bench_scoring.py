"""Memory and speed of ``dambench.evaluate_predictions`` on 69-channel analyses.

A synthetic DAMBench-layout store (69 channels, 1.5 degree grid, every cycle in the test split)
and a prediction store of the same cycles are scored in a fresh process for each cycle count;
peak RSS (``ru_maxrss`` of the child) must stay flat as the number of cycles grows, because
scoring reads a bounded block of cycles at a time. ``--path baselines`` measures
``baselines/evaluate.py`` instead (the Background model streamed through the loader into a
prediction store, then scored), which must stay flat too.

rss_ratio = peak RSS scoring the most cycles / peak RSS scoring one cycle.
seconds_per_cycle = wall time per cycle (both methods: the predictions and the background).
The last line printed is ``rss_ratio=X seconds_per_cycle=Y rss_mb_1=.. rss_mb_N=..``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.channels import channel_coords
from dambench.grid import CANONICAL_GRID

CHILD = """
import json, sys, time, resource
from dambench.scoring import evaluate_predictions
start = time.perf_counter()
evaluate_predictions(sys.argv[1], sys.argv[2], n_resamples=200, figure_channel=None)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

BASELINES_CHILD = """
import json, sys, time, resource
from argparse import Namespace
from baselines import evaluate
start = time.perf_counter()
evaluate.run(Namespace(model="background", checkpoint=None, dataset=sys.argv[2], split="test",
                       out=sys.argv[3], name="background", members=None, sample_seed=0,
                       batch_size=1, bootstrap=200, channel=None, region=["global"], by=None,
                       modalities=None))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _field(rng, n: int, offset: float) -> np.ndarray:
    shape = (n, len(schema.CHANNELS), *CANONICAL_GRID.shape)
    return (offset + rng.standard_normal(shape)).astype(np.float32)


def write_stores(folder: Path, n: int) -> tuple[Path, Path]:
    """A dataset store and a prediction store of ``n`` test cycles, written cycle by cycle."""
    from dambench.scoring import PredictionWriter

    rng = np.random.default_rng(n)
    times = pd.date_range("2024-01-01", periods=n, freq="D").values
    coords = {
        schema.TIME: times,
        "split": (schema.TIME, np.array(["test"] * n, dtype=object)),
        **{
            k: v.astype(object) if v.dtype.kind == "U" else v
            for k, v in channel_coords(schema.CHANNELS).items()
        },
        **CANONICAL_GRID.coords(),
    }
    stats = {
        "channels": list(schema.CHANNELS),
        "mean": [0.0] * 69,
        "std": [1.0] * 69,
        "split": "train",
    }
    dataset = folder / f"data{n}.zarr"
    for i in range(n):
        block = {
            name: (schema.CANONICAL_DIMS, _field(rng, 1, k))
            for k, name in enumerate(("target", "background", "observation"))
        }
        block["mask"] = (schema.CANONICAL_DIMS, rng.random(block["target"][1].shape) < 0.05)
        one = xr.Dataset(
            block,
            coords={
                **coords,
                schema.TIME: times[i : i + 1],
                "split": (schema.TIME, np.array(["test"], dtype=object)),
            },
        )
        one.attrs = {"normalization": json.dumps(stats)}
        if i == 0:
            one.to_zarr(dataset, mode="w", consolidated=False)
        else:
            one.to_zarr(dataset, append_dim=schema.TIME, consolidated=False)
    predictions = folder / f"pred{n}.zarr"
    writer = PredictionWriter(
        predictions,
        times=times,
        channels=list(schema.CHANNELS),
        latitude=CANONICAL_GRID.latitude,
        longitude=CANONICAL_GRID.longitude,
    )
    for time_ in times:
        writer.write(time_, _field(rng, 1, 0.5)[0])
    return dataset, predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--path",
        choices=["scoring", "baselines"],
        default="scoring",
        help="dambench.evaluate_predictions, or baselines/evaluate.py with the Background model",
    )
    args = parser.parse_args()
    child = CHILD if args.path == "scoring" else BASELINES_CHILD
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.cycles:
            dataset, predictions = write_stores(Path(tmp), n)
            done = subprocess.run(
                [sys.executable, "-c", child, str(predictions), str(dataset), f"{tmp}/out{n}"],
                capture_output=True,
                text=True,
                check=True,
            )
            results[n] = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{n:3d} cycles: peak RSS {results[n]['rss_mb']:.0f} MB, "
                f"{results[n]['seconds']:.1f} s"
            )
    first, last = min(results), max(results)
    ratio = results[last]["rss_mb"] / results[first]["rss_mb"]
    per_cycle = results[last]["seconds"] / last
    print(
        f"rss_ratio={ratio:.3f} seconds_per_cycle={per_cycle:.2f} "
        f"rss_mb_{first}={results[first]['rss_mb']:.0f} rss_mb_{last}={results[last]['rss_mb']:.0f}"
    )


if __name__ == "__main__":
    main()
