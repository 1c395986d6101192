"""``dambench evaluate`` killed at random moments never leaves a folder mixing two runs.

A complete evaluation (``run0``) is written into a result folder on era5-sample, timing it
(``T`` seconds). Then, ``--tries`` times, ``dambench evaluate --overwrite`` of another run name
starts into the same folder and is killed by SIGKILL after a delay drawn uniformly from
``[0.2 T, 1.2 T]`` (seeded), so that kills land in every phase: before, during and after the
outputs are staged and swapped in, and some runs finish. After each try the folder must hold
exactly the expected outputs of one run: every Markdown table and figure carries the run id of
``summary.json``, and ``scores.parquet`` that run's model. The predictions are the dataset's
own background written as a prediction store (a stand-in: no skill is measured here).

The last line printed is ``tries=N finished=F killed=K mixed=M folder_held=[...]``.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXPECTED = {
    "scores.parquet", "summary.json", "table3.md", "channels.md", "regions.md", "observed.md",
    "maps.png", "spectra.png", "per_cycle_mse.png",
}  # fmt: skip
"""What one deterministic evaluation with figures writes."""


def write_predictions(folder: Path) -> Path:
    """era5-sample's test-split background as a prediction store in ``folder``."""
    from dambench.load import ensure_embedded, open_dataset
    from dambench.testing import write_prediction_store

    ds = open_dataset(ensure_embedded(), split="test").load()
    return write_prediction_store(folder / "pred.zarr", ds, "background", model="copy")


def start(predictions: Path, out: Path, name: str) -> subprocess.Popen:
    """``python -m dambench.cli evaluate`` of ``predictions`` into ``out`` as row ``name``."""
    argv = [
        sys.executable, "-m", "dambench.cli", "evaluate", "--predictions", str(predictions),
        "--dataset", "era5-sample", "--out", str(out), "--name", name, "--bootstrap", "20",
        "--quiet", "--overwrite",
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def folder_run(out: Path) -> str:
    """The model name of the one run ``out`` holds; raises AssertionError naming what is mixed
    or missing."""
    import pandas as pd
    from PIL import Image

    from dambench.scoring import outputs

    files = {p.name for p in out.iterdir() if p.name in outputs.OUTPUT_NAMES}
    assert files == EXPECTED, f"incomplete or extra outputs: {sorted(files ^ EXPECTED)}"
    summary = json.loads((out / "summary.json").read_text())
    run, model = summary["run"], summary["model"]
    for name in sorted(f for f in files if f.endswith(".md")):
        assert f"Evaluation run {run};" in (out / name).read_text(), f"{name} of another run"
    for name in sorted(f for f in files if f.endswith(".png")):
        with Image.open(out / name) as image:
            assert image.info.get("Description") == f"dambench run {run}", f"{name} mixed"
    models = set(pd.read_parquet(out / "scores.parquet")["model"])
    assert models == {model, "Background"}, f"scores.parquet holds {sorted(models)}"
    return model


def one_try(predictions: Path, out: Path, name: str, delay_s: float) -> tuple[bool, str]:
    """Start a run, kill it after ``delay_s`` unless it ended; (finished, what the folder
    holds or what is wrong with it)."""
    run = start(predictions, out, name)
    try:
        status = run.wait(timeout=delay_s)
    except subprocess.TimeoutExpired:
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
        status = None
    if status not in (None, 0):
        raise SystemExit(f"{name} failed by itself: {run.stderr.read().strip()}")
    try:
        return status == 0, folder_run(out)
    except AssertionError as err:
        return status == 0, f"MIXED: {err}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=10)
    parser.add_argument("--seed", type=int, default=18)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        predictions, out = write_predictions(Path(tmp)), Path(tmp) / "out"
        started = time.perf_counter()
        assert start(predictions, out, "run0").wait() == 0, "the first run failed"
        whole_s = time.perf_counter() - started
        print(f"run0 complete in {whole_s:.1f} s; holds {folder_run(out)}")
        held, finished = [], 0
        for k in range(1, args.tries + 1):
            delay = rng.uniform(0.2, 1.2) * whole_s
            done, found = one_try(predictions, out, f"run{k}", delay)
            finished += done
            held.append(found)
            print(f"try {k}: {'finished' if done else 'killed'} at {delay:.1f} s; holds {found}")
    mixed = sum(h.startswith("MIXED") for h in held)
    print(
        f"tries={args.tries} finished={finished} killed={args.tries - finished} mixed={mixed} "
        f"folder_held={held}"
    )


if __name__ == "__main__":
    main()
