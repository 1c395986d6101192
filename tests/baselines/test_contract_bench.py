"""benchmarks/bench_models.py at --size tiny, as CI runs it: every registered tiny model, on the
real grid, importable without zarr, dask, xbatcher or datasets (the GPU image has none)."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from baselines.checkpoint import takes_modality_chans
from baselines.models.multi import adapter_of
from baselines.registry import create_model, list_models, model_info, variant_defaults
from dambench.exceptions import MissingDependencyError

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
    done, pairs = tiny_run
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
        # without the data stack a fit that needs it is skipped, with a note naming the error
        assert ("fit_s" in figure or "fit_skipped" in figure) == info.needs_fit
        if "fit_skipped" in figure:
            assert f"note: {name}: fit skipped (ModuleNotFoundError" in done.stdout
        assert figure["modalities"] >= 1
        if info.output == "ensemble":
            assert figure["members"] == 2
            assert figure["member_ms"] == pytest.approx(figure["analysis_ms"] / 2, rel=1e-3)
        else:
            assert "member_ms" not in figure


@pytest.fixture(scope="module")
def bench() -> dict:
    """The bench script's functions (not run)."""
    return runpy.run_path(str(REPO / "benchmarks" / "bench_models.py"))


def test_the_batch_carries_the_modalities_the_model_takes(bench):
    """slams_small takes M = 2 (it failed on the one-modality batch of the old bench); an
    adapter takes its modality names; any other model gets one."""
    expected = {f"slams_{size}": variant_defaults(f"slams_{size}")["modality_chans"]
                for size in ("tiny", "small", "full")}  # fmt: skip
    assert list(expected.values()) == [1, 2, 3]
    expected["multi_convcnp_tiny"] = len(variant_defaults("multi_convcnp_tiny")["modalities"])
    expected["convcnp_tiny"] = 1
    for name, m in expected.items():
        assert bench["modality_count"](create_model(name)) == m, name
    batch = bench["random_batch"](4, 2, torch.device("cpu"), modalities=2)
    assert batch.modalities.shape == (2, 2, 121, 240) and batch.modality_present.shape == (2, 2)


def test_a_composed_model_and_its_host_take_the_same_modalities(bench):
    """multi_slams_small: its host's default modality_chans (2) and its adapter's default names
    (one) disagree; the bench builds it as train.py does, the count from the names."""
    composed = [name for name in list_models(["multi_*_tiny", "multi_*_small"])
                if takes_modality_chans(name)]  # fmt: skip
    for name in composed:
        model = bench["build"](name, name.rsplit("_", 1)[-1])
        names = variant_defaults(name)["modalities"]
        assert model.modality_chans == len(adapter_of(model).modalities) == len(names), name


class _NeedsTheDataStack(torch.nn.Module):
    """A model whose fit imports a missing package, with one unfitted (NaN) statistic."""

    def __init__(self, error: type[Exception]):
        super().__init__()
        self.error = error
        self.register_buffer("fitted_std", torch.full((3,), float("nan")))
        self.register_buffer("counts", torch.zeros(2, dtype=torch.int64))
        self.register_buffer("known", torch.ones(3))

    def fit(self, dataset, stats, **_):
        raise self.error("No module named 'xbatcher'")


def test_a_fit_that_needs_the_data_stack_is_skipped_loudly_with_random_statistics(bench):
    model = _NeedsTheDataStack(MissingDependencyError)
    figures, note = bench["fit_or_fill"](model, 3)
    assert figures == {"fit_skipped": 1.0}
    assert "fit skipped (MissingDependencyError: No module named 'xbatcher')" in note
    assert "['fitted_std']" in note
    assert torch.all((model.fitted_std >= 0.5) & (model.fitted_std <= 1.0))
    assert torch.equal(model.known, torch.ones(3)) and torch.equal(model.counts, torch.zeros(2))
    with pytest.raises(ValueError):  # any other failure is the model's, reported as such
        bench["fit_or_fill"](_NeedsTheDataStack(ValueError), 3)
