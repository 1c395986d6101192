"""baselines/train.py end to end on the embedded era5-sample dataset (evaluate.py:
tests/baselines/test_evaluate_client.py).

Resume, EMA, dispatch on ModelInfo and checkpoints: tests/baselines/test_contract_train.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from baselines import train
from baselines.config import load_run_config
from dambench.load import ensure_embedded, open_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folder():
    return ensure_embedded()


def write_config(path: Path, folder: Path, out: Path, model_kwargs=None, **train_overrides):
    config = {
        "task": {"dataset": str(folder), "batch_size": 1, "num_workers": 0},
        "model": {"name": "convcnp_tiny", "kwargs": model_kwargs or {}},
        "train": {
            "epochs": 2,
            "max_steps_per_epoch": 4,
            "amp": False,
            "seed": 0,
            "out": str(out),
            **train_overrides,
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def final_weights(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.pt", weights_only=False)["model"]


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
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            str(REPO / "baselines" / "train.py"),
            "--config",
            str(tmp_path / "ddp.yaml"),
            "--quiet",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=240,
    )
    a, b = final_weights(single), final_weights(ddp)
    # gloo averages per-rank gradients in another order than one batched backward: float32
    # rounding differences, which Adam's normalisation can lift to ~1e-5 after 4 steps
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-4)


def test_patch_training_samples_every_window(folder, tmp_path):
    # With patches the sampler must cover every (cycle, window), not only the cycles. The
    # loader serves patches only to a model whose ModelInfo.supports_patches (background).
    path = write_config(tmp_path / "p.yaml", folder, tmp_path / "out")
    config = yaml.safe_load(path.read_text())
    config["task"]["patch"] = {"latitude": 64, "longitude": 96}
    config["model"]["name"] = "background_tiny"
    path.write_text(yaml.safe_dump(config))
    data = train.make_loaders(load_run_config(path), rank=0, world=1)
    loader, sampler = data.train, data.sampler
    n_cycles = open_dataset(folder, split="train").sizes["time"]
    assert len(loader.dataset) > n_cycles
    assert len(sampler) == len(loader.dataset)
    assert sorted(sampler) == list(range(len(loader.dataset)))
    batch = next(iter(loader))
    assert tuple(batch["target"].shape) == (1, len(data.channels), 64, 96)
    assert tuple(batch["latitude"].shape) == (1, 64) and tuple(batch["longitude"].shape) == (1, 96)


def test_slams_fit_in_training_measures_sigma_z_on_the_runs_validation_split(folder, tmp_path):
    """train.py hands SLAMS.fit the validation split its validation loader reads (the old
    train.py passed none, and fit fell back to looking the split up by the dataset's name or
    to held-out train cycles)."""
    from dataclasses import replace

    from dambench.exceptions import DambenchInputError

    path = write_config(tmp_path / "s.yaml", folder, tmp_path / "out")
    config = yaml.safe_load(path.read_text())
    config["model"]["name"] = "slams_tiny"
    path.write_text(yaml.safe_dump(config))
    cfg = load_run_config(path)
    data = train.make_loaders(cfg, rank=0, world=1)
    validation = open_dataset(folder, split="validation")
    assert list(data.val_ds["time"].values) == list(validation["time"].values)
    model = train.build_model(cfg, data, torch.device("cpu"))
    assert model.fit_info["latent_std_cycles"] == "validation split (given)"
    assert model.fit_info["n_latent_std_cycles"] == validation.sizes["time"]
    with pytest.raises(DambenchInputError, match="no validation split"):
        train.fit_model(model, replace(data, val_ds=None))
