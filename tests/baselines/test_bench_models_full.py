"""benchmarks/bench_models.py for the full-size runs of issue 16 item 7 (one process per model):
configs built as train.py builds them, the data's modalities, frozen hosts, shortened samplers
with their projection, skipped fits, and children that fail (over time, over memory)."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from baselines.models.multi import adapter_of
from baselines.registry import create_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> dict:
    """The bench script's functions (not run)."""
    return runpy.run_path(str(REPO / "benchmarks" / "bench_models.py"))


def _config(tmp_path: Path, model: str, kwargs: str, freeze: str) -> str:
    """A training config; a frozen host names a checkpoint (the bench does not load it)."""
    path = tmp_path / f"{model}.yaml"
    start = f", init_from: {tmp_path / 'best.pt'}" if freeze != "[]" else ""
    path.write_text(
        f"task: {{dataset: era5-sample}}\nmodel: {{name: {model}, kwargs: {kwargs}{start}}}\n"
        f"train: {{epochs: 1, freeze: {freeze}, out: {tmp_path / 'run'}}}\n"
    )
    return str(path)


def test_a_config_gives_its_kwargs_and_its_frozen_host(bench, tmp_path):
    """The old bench built create_model(name) with the registry's defaults, whatever the config
    said (e.g. sda_full.yaml's corrector and member_batch): the figures were another model's."""
    path = _config(tmp_path, "sda_tiny", "{steps: 3, member_batch: 1}", "[]")
    unit = bench["unit_from_config"](path)
    expected = ("sda_tiny", {"steps": 3, "member_batch": 1}, False)
    assert (unit.name, unit.kwargs, unit.freeze_host) == expected
    assert unit.select == ("--config", path)
    model = bench["build"](unit.name, "tiny", unit.kwargs)
    assert model.sampler.steps == 3 and model.member_batch == 1
    multi = bench["unit_from_config"](_config(tmp_path, "multi_convcnp_tiny", "{}", "[host]"))
    assert multi.freeze_host


def test_a_frozen_host_counts_only_the_adapter_as_trained(bench):
    from baselines.models.multi import freeze_host

    model = create_model("multi_convcnp_tiny")
    whole = bench["size_figures"](model)
    assert whole["trainable_m"] == whole["params_m"]
    assert whole["adamw_state_mib"] == pytest.approx(16 * whole["params_m"] * 1e6 / 2**20)
    freeze_host(model)
    frozen = bench["size_figures"](model)
    adapter = sum(p.numel() for p in adapter_of(model).parameters()) / 1e6
    assert frozen["trainable_m"] == pytest.approx(adapter)
    expected = (4 * frozen["params_m"] + 12 * adapter) * 1e6 / 2**20
    assert frozen["adamw_state_mib"] == pytest.approx(expected)


def test_with_data_the_model_takes_the_data_s_channels_and_modalities(bench):
    """With --data the old bench built a composed model with its adapter's default modality
    names while the loader gave the dataset's: the model must take the loader's, as train.py."""
    names = ["precip", "olr"]
    source = bench["DataSource"](None, None, SimpleNamespace(modality_names=names), ["a"] * 5)
    model = bench["build"]("multi_convcnp_tiny", "tiny", {}, source)
    assert list(adapter_of(model).modalities) == names and model.in_chans == 5
    slams = bench["build"]("slams_tiny", "tiny", {}, source)
    assert slams.modality_chans == 2 and slams.in_chans == 5


def test_a_shortened_sampler_is_set_everywhere_and_reported_with_its_projection(bench):
    model = create_model("multi_sda_cond_tiny")
    assert bench["set_sampler_steps"](model, 2) == 8
    samplers = [m.sampler.steps for m in model.modules() if hasattr(m, "sampler")]
    assert samplers and set(samplers) == {2}
    assert bench["set_sampler_steps"](create_model("convcnp_tiny"), 2) is None
    args = SimpleNamespace(members=2, sampler_steps=1, amp=False, repeats=1, warmup=0)
    sda = create_model("sda_tiny")
    bench["fill_unfitted"](sda)
    batch = bench["random_batch"](4, 1, torch.device("cpu"), seed=1)
    out = bench["bench_analysis"](sda, batch, args, torch.device("cpu"))
    assert out["sampler_steps"] == 1 and out["shipped_steps"] == 8
    assert out["analysis_projected_ms"] == pytest.approx(8 * out["analysis_ms"])


class _Fits(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("sigma", torch.full((2,), float("nan")))
        self.calls = 0

    def fit(self, dataset, stats, **_):
        self.calls += 1


def test_fit_fill_skips_the_fit_and_says_so(bench):
    model = _Fits()
    figures, note = bench["fit_or_fill"](model, 3, fill=True)
    assert model.calls == 0 and figures == {"fit_skipped": 1.0}
    assert note.startswith("fit skipped (not run (--fit fill))") and "['sigma']" in note
    assert torch.all(torch.isfinite(model.sigma))
    figures, note = bench["fit_or_fill"](_Fits(), 3)
    assert "fit_s" in figures and note is None


def test_failure_reasons_name_time_memory_and_the_model_s_error(bench):
    reason = bench["failure_reason"]
    assert reason(0, False, 9, "") is None
    assert reason(-9, True, 9, "") == "over --timeout-s 9 s (killed)"
    assert reason(-9, False, 9, "") == "killed by signal 9 (out of memory?)"
    table = "| m | 1 | FAILED: RuntimeError: bad shape |\nsize=full failed=1"
    assert reason(1, False, 9, table) == "exit status 1: RuntimeError: bad shape"
    assert reason(3, False, 9, "x\nRSS 2 GiB over --max-rss-gib 1; stopped\n") == (
        "exit status 3: RSS 2 GiB over --max-rss-gib 1; stopped"
    )


def test_a_child_s_peak_rss_and_its_timeout_are_measured(bench):
    grow = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"
    proc = subprocess.Popen([sys.executable, "-c", grow])
    status, peak_mib, timed_out = bench["wait_with_usage"](proc, 60)
    assert status == 0 and not timed_out and peak_mib > 300
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    status, _, timed_out = bench["wait_with_usage"](proc, 0.5)
    assert timed_out and status == -9


def test_isolate_runs_each_model_in_a_child_and_reports_a_capped_one(tmp_path):
    """--isolate: one child per model, the child's figures and peak RSS in the parent's table;
    a child over --max-rss-gib is stopped and reported with the cap, and the status is 1."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    common = [sys.executable, "benchmarks/bench_models.py", "--size", "tiny", "--isolate",
              "--repeats", "1", "--warmup", "0", "--log-dir", str(tmp_path)]  # fmt: skip
    done = subprocess.run([*common, "--models", "convcnp_tiny"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    pairs = dict(item.split("=", 1) for item in done.stdout.splitlines()[-1].split())
    assert pairs["models"] == "1" and pairs["failed"] == "0"
    assert float(pairs["convcnp_tiny_child_peak_rss_mib"]) >= float(
        pairs["convcnp_tiny_process_peak_rss_mib"]
    ) > 0
    assert float(pairs["convcnp_tiny_step_ms"]) > 0 and (tmp_path / "convcnp_tiny.out").exists()
    capped = subprocess.run([*common, "--models", "convcnp_tiny", "--max-rss-gib", "0.01"],
                            cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert capped.returncode == 1
    assert "FAILED: exit status 3: RSS" in capped.stdout
    assert "over --max-rss-gib 0.01" in capped.stdout


class _Scaled(torch.nn.Module):
    """loss = sum(w * x): autograd saves x (1000 float32) for w's gradient, nothing else."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1000))

    def loss(self, batch):
        return SimpleNamespace(loss=(self.w * batch).sum())


def test_the_activation_estimate_counts_the_saved_tensors_and_keeps_none(bench):
    model = _Scaled()
    args = SimpleNamespace(freeze_host=False)
    assert bench["saved_activations_mib"](model, torch.randn(1000), args) == 4000 / 2**20
    assert model.training and model.w.grad is None
    model.loss(torch.randn(1000)).loss.backward()  # the model still trains normally afterwards
    assert model.w.grad is not None
