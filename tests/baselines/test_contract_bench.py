"""benchmarks/bench_models.py at --size tiny, as CI runs it: every registered tiny model, on the
real grid, importable without zarr, dask, xbatcher or datasets (the GPU image has none)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from baselines.registry import list_models, model_info

REPO = Path(__file__).resolve().parents[2]
_BLOCKED = ("zarr", "xbatcher", "dask", "datasets")
_RUN = (
    "import runpy, sys\n"
    f"for name in {_BLOCKED!r}:\n"
    "    sys.modules[name] = None  # importing it now raises ImportError\n"
    "sys.argv = ['bench_models.py', *sys.argv[1:]]\n"
    "runpy.run_path('benchmarks/bench_models.py', run_name='__main__')\n"
)


@pytest.fixture(scope="module")
def tiny_run() -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = ["--size", "tiny", "--repeats", "1", "--warmup", "0", "--members", "2"]
    done = subprocess.run(
        [sys.executable, "-c", _RUN, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    pairs = dict(item.split("=", 1) for item in last.split() if "=" in item)
    return done, pairs


def test_bench_runs_every_tiny_model_without_the_data_stack(tiny_run):
    done, pairs = tiny_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    names = list_models("*_tiny")
    assert pairs["size"] == "tiny" and pairs["failed"] == "0"
    assert int(pairs["models"]) == len(names)
    for name in names:
        assert f"| {name} |" in done.stdout  # one table row per model


def test_bench_reports_the_figures_each_output_kind_needs(tiny_run):
    _, pairs = tiny_run
    for name in list_models("*_tiny"):
        info = model_info(name)
        figure = {key.removeprefix(f"{name}_"): float(v) for key, v in pairs.items()
                  if key.startswith(f"{name}_")}  # fmt: skip
        assert figure["analysis_ms"] > 0 and figure["analysis_peak_mib"] > 0
        if info.trainable:
            assert figure["step_ms"] > 0 and figure["train_peak_mib"] > 0
            # batch 1: samples/s is the inverse of the step time (4 significant digits printed)
            assert figure["samples_per_s"] == pytest.approx(1e3 / figure["step_ms"], rel=1e-3)
        else:
            assert "step_ms" not in figure
        assert ("fit_s" in figure) == info.needs_fit
        if info.output == "ensemble":
            assert figure["members"] == 2
            assert figure["member_ms"] == pytest.approx(figure["analysis_ms"] / 2, rel=1e-3)
        else:
            assert "member_ms" not in figure
