"""Memory and speed of ``dambench.evaluate_predictions`` on 69-channel analyses.

A synthetic DAMBench-layout store (69 channels, 1.5 degree grid, every cycle in the test split;
values about the midpoints of :data:`dambench.schema.PHYSICAL_RANGE`, so that the scorer's
plausibility check accepts them) and a prediction store of the same cycles are scored in a fresh process for each cycle count;
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
                       modalities=None, overwrite=True))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


SPREAD_FRACTION = 0.02
"""Standard deviation of the synthetic target about its channel's range midpoint, as a fraction
of the range's width (:data:`dambench.schema.PHYSICAL_RANGE`): values stay plausible."""


def _bounds() -> tuple[np.ndarray, np.ndarray]:
    """Per-channel midpoint and spread (``SPREAD_FRACTION`` of the range), shaped to broadcast
    over ``(channel, latitude, longitude)``."""
    ranges = np.array([schema.PHYSICAL_RANGE[c] for c in schema.CHANNELS], dtype=np.float64)
    middle = ranges.mean(axis=1)[:, None, None]
    spread = SPREAD_FRACTION * (ranges[:, 1] - ranges[:, 0])[:, None, None]
    return middle, spread


def _cycle(rng) -> dict[str, np.ndarray]:
    """One synthetic cycle ``(channel, latitude, longitude)`` in plausible physical units: a
    target about the range midpoints, a background and an analysis near it (the analysis
    closer), and observations of the target at 5 % of the points (NaN elsewhere)."""
    middle, spread = _bounds()
    shape = (len(schema.CHANNELS), *CANONICAL_GRID.shape)
    target = middle + spread * rng.standard_normal(shape)
    mask = rng.random(shape) < 0.05
    observed = target + 0.1 * spread * rng.standard_normal(shape)
    fields = {
        "target": target,
        "background": target + 0.5 * spread * rng.standard_normal(shape),
        "analysis": target + 0.25 * spread * rng.standard_normal(shape),
        "observation": np.where(mask, observed, np.nan),
    }
    return {"mask": mask, **{k: v.astype(np.float32) for k, v in fields.items()}}


def _coords(times: np.ndarray) -> dict:
    return {
        schema.TIME: times,
        "split": (schema.TIME, np.array(["test"] * len(times), dtype=object)),
        **{
            k: v.astype(object) if v.dtype.kind == "U" else v
            for k, v in channel_coords(schema.CHANNELS).items()
        },
        **CANONICAL_GRID.coords(),
    }


def _statistics() -> str:
    middle, spread = _bounds()
    stats = {
        "channels": list(schema.CHANNELS),
        "mean": middle.ravel().tolist(),
        "std": spread.ravel().tolist(),
        "split": "train",
    }
    return json.dumps(stats)


def write_stores(folder: Path, n: int) -> tuple[Path, Path]:
    """A dataset store and a prediction store of ``n`` test cycles, written cycle by cycle,
    with plausible synthetic values (a synthetic stand-in: no skill is measured here)."""
    from dambench.scoring import PredictionWriter

    rng = np.random.default_rng(n)
    times = pd.date_range("2024-01-01", periods=n, freq="D").values
    dataset, predictions = folder / f"data{n}.zarr", folder / f"pred{n}.zarr"
    writer = PredictionWriter(
        predictions,
        times=times,
        channels=list(schema.CHANNELS),
        latitude=CANONICAL_GRID.latitude,
        longitude=CANONICAL_GRID.longitude,
    )
    for i, time_ in enumerate(times):
        fields = _cycle(rng)
        writer.write(time_, fields.pop("analysis"))
        block = {name: (schema.CANONICAL_DIMS, v[None]) for name, v in fields.items()}
        one = xr.Dataset(block, coords=_coords(times[i : i + 1]))
        one.attrs = {"normalization": _statistics()}
        if i == 0:
            one.to_zarr(dataset, mode="w", consolidated=False)
        else:
            one.to_zarr(dataset, append_dim=schema.TIME, consolidated=False)
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
