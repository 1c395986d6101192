"""baselines/train.py and evaluate.py end to end on the embedded era5-sample dataset."""

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from baselines import evaluate, train
from baselines.config import load_run_config
from dambench.load import ensure_embedded, open_dataset, stats_from_attrs
from dambench.metrics import mse, rmse
from dambench.normalize import normalize

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folder():
    return ensure_embedded()


def write_config(path: Path, folder: Path, out: Path, model_kwargs=None, **train_overrides):
    config = {
        "task": {"dataset": str(folder), "batch_size": 1, "num_workers": 0},
        "model": {"name": "convcnp_tiny", "kwargs": model_kwargs or {}},
        "train": {"epochs": 2, "max_steps_per_epoch": 4, "amp": False, "seed": 0,
                  "out": str(out), **train_overrides},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def final_weights(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.pt", weights_only=False)["model"]


def test_train_then_resume_continues_the_same_run(folder, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train.run(load_run_config(write_config(tmp_path / "a.yaml", folder, straight)), verbose=False)
    resumed = tmp_path / "resumed"
    config = write_config(tmp_path / "b.yaml", folder, resumed)
    original_log = train._log

    def killed_in_second_epoch(path, record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt("killed")
        original_log(path, record)

    monkeypatch.setattr(train, "_log", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.run(load_run_config(config), verbose=False)
    monkeypatch.setattr(train, "_log", original_log)
    assert [json.loads(line)["epoch"] for line in open(resumed / "log.jsonl")] == [0]
    with pytest.raises(ValueError, match="different config"):
        train.run(load_run_config(config, ["train.lr_peak=0.5"]), verbose=False)
    train.run(load_run_config(config), verbose=False)
    log = [json.loads(line) for line in open(resumed / "log.jsonl")]
    assert [r["epoch"] for r in log] == [0, 1] and log[1]["step"] == 8
    a, b = final_weights(straight), final_weights(resumed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    assert (resumed / "checkpoints" / "best.pt").exists() and (resumed / "run.yaml").exists()


def test_ddp_two_gloo_processes_equal_one_process_with_double_batch(folder, tmp_path):
    # BatchNorm statistics depend on the per-process batch: compare with GroupNorm
    group = {"norm_layer": "group"}
    single = tmp_path / "single"
    config = write_config(tmp_path / "single.yaml", folder, single, group, epochs=1)
    train.run(load_run_config(config, ["task.batch_size=2"]), verbose=False)
    ddp = tmp_path / "ddp"
    write_config(tmp_path / "ddp.yaml", folder, ddp, group, epochs=1, max_steps_per_epoch=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "29517", str(REPO / "baselines" / "train.py"),
         "--config", str(tmp_path / "ddp.yaml"), "--quiet"],
        check=True, env=env, capture_output=True, timeout=240,
    )
    a, b = final_weights(single), final_weights(ddp)
    # gloo averages per-rank gradients in another order than one batched backward: float32
    # rounding differences, which Adam's normalisation can lift to ~1e-5 after 4 steps
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-4)


def test_evaluate_table_equals_dambench_metrics(folder, tmp_path):
    out = tmp_path / "bg"
    args = Namespace(model="background", checkpoint=None, dataset=str(folder), split="test",
                     out=str(out), name="Background", batch_size=2, bootstrap=200, channel="t2m")
    summary = evaluate.run(args)
    ds = open_dataset(folder, split="test").load()
    stats = stats_from_attrs(ds)
    norm_bg, norm_target = normalize(ds["background"], stats), normalize(ds["target"], stats)
    expected_mse = float(mse(norm_bg, norm_target, dims=("channel", "latitude", "longitude")))
    assert summary["MSE(1e-2)"]["mean"] == pytest.approx(100 * expected_mse, rel=1e-5)
    expected_rmse = float(rmse(ds["background"], ds["target"]).sel(channel="t2m"))
    assert summary["RMSE t2m"]["mean"] == pytest.approx(expected_rmse, rel=1e-5)
    low, high = summary["MSE(1e-2)"]["ci95"]
    assert low <= summary["MSE(1e-2)"]["mean"] <= high
    for name in ("results.json", "table.md", "table.csv", "maps.png", "error_spectra.png"):
        assert (out / name).exists()
    board = evaluate.leaderboard([str(out / "results.json"), str(out / "results.json")], None)
    assert "| Background |" in board


def test_threedvar_beats_background_in_evaluate(folder, tmp_path):
    rows = {}
    for model in ("background", "threedvar"):
        args = Namespace(model=model, checkpoint=None, dataset=str(folder), split="test",
                         out=str(tmp_path / model), name=model, batch_size=2, bootstrap=200,
                         channel="t2m")
        rows[model] = evaluate.run(args)
    assert rows["threedvar"]["MSE(1e-2)"]["mean"] < rows["background"]["MSE(1e-2)"]["mean"]
    board = evaluate.leaderboard([str(tmp_path / m / "results.json") for m in rows], None)
    assert "background: worse than threedvar" in board
    assert np.isfinite(rows["threedvar"]["SpecDiv"]["mean"])


def test_patch_training_samples_every_window(folder, tmp_path):
    # With patches the sampler must cover every (cycle, window), not only the cycles.
    path = write_config(tmp_path / "p.yaml", folder, tmp_path / "out")
    config = yaml.safe_load(path.read_text())
    config["task"]["patch"] = {"latitude": 64, "longitude": 96}
    path.write_text(yaml.safe_dump(config))
    loader, _, sampler, n_channels = train.make_loaders(load_run_config(path), rank=0, world=1)
    n_cycles = open_dataset(folder, split="train").sizes["time"]
    assert len(loader.dataset) > n_cycles
    assert len(sampler) == len(loader.dataset)
    assert sorted(sampler) == list(range(len(loader.dataset)))
    batch = next(iter(loader))
    assert tuple(batch["target"].shape) == (1, n_channels, 64, 96)


def test_summarise_averages_seeds_and_bootstraps_cycles():
    seed_a = {"MSE(1e-2)": np.array([1.0, 2.0, 3.0, 4.0])}
    seed_b = {"MSE(1e-2)": np.array([3.0, 4.0, 5.0, 6.0])}
    row = evaluate.summarise([seed_a, seed_b], n_resamples=2000)["MSE(1e-2)"]
    assert row["mean"] == pytest.approx(3.5)  # seed means 2.5 and 4.5
    assert row["std_over_seeds"] == pytest.approx(np.sqrt(2.0))  # sample std of (2.5, 4.5)
    assert row["per_cycle"] == [2.0, 3.0, 4.0, 5.0]
    low, high = row["ci95"]
    assert 2.0 <= low < 3.5 < high <= 5.0
    single = evaluate.summarise([seed_a], n_resamples=100)["MSE(1e-2)"]
    assert single["std_over_seeds"] is None and single["mean"] == pytest.approx(2.5)
