"""best.pt is chosen by the benchmark's own validation metric (MSE of the analysis on
normalised fields, fair CRPS for ensembles), not by a loss that can reward the spread."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from baselines import train
from baselines.checkpoint import load_checkpoint
from baselines.config import TrainConfig, load_run_config
from baselines.registry import model_info
from dambench.exceptions import DambenchInputError
from dambench.load import ensure_embedded


def _trainer(tmp_path, cfg: TrainConfig, output="gaussian"):
    return SimpleNamespace(
        rank=0,
        out=tmp_path,
        cfg=SimpleNamespace(train=cfg),
        model=SimpleNamespace(info=SimpleNamespace(output=output)),
        best=float("inf"),
        best_epoch=None,
        payload=lambda epoch, resumable: {"epoch": epoch},
    )


def test_best_is_chosen_by_validation_mse_not_by_the_loss(tmp_path, monkeypatch):
    """The FNP case: the beta-NLL is lowest at epoch 0 (a wide spread), the analysis MSE at
    epoch 2. The old selection (val_loss) kept epoch 0."""
    saved = []

    def save(path, state):
        if path.name == "best.pt":
            saved.append(state)

    monkeypatch.setattr(train, "save_checkpoint", save)
    t = _trainer(tmp_path, TrainConfig(epochs=4))
    records = [
        {"val_loss": -1.0, "val_select_mse": 0.42},
        {"val_loss": -0.5, "val_select_mse": 0.35},
        {"val_loss": -0.4},  # the metric is not due this epoch
        {"val_loss": -0.2, "val_select_mse": 0.38},
    ]
    for epoch, record in enumerate(records):
        train._end_of_epoch(t, epoch, dict(record))
    assert [s["epoch"] for s in saved] == [0, 1] and t.best_epoch == 1 and t.best == 0.35
    log = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["selected"] for r in log] == [True, True, False, False]
    saved.clear()
    t = _trainer(tmp_path / "loss", TrainConfig(epochs=4, select_by="loss"))
    (tmp_path / "loss").mkdir()
    for epoch, record in enumerate(records):
        train._end_of_epoch(t, epoch, dict(record))
    assert [s["epoch"] for s in saved] == [0] and t.best_epoch == 0  # the paper's version


def test_selection_key_defaults_by_output_kind_and_refuses_unknown_metrics():
    assert train.selection_key(TrainConfig(), model_info("convcnp_small")) == "val_select_mse"
    assert train.selection_key(TrainConfig(), model_info("sda_small")) == "val_select_crps"
    assert train.selection_key(TrainConfig(select_by="loss"), model_info("sda_small")) == "val_loss"
    with pytest.raises(DambenchInputError, match="train.select_by must be one of"):
        TrainConfig(select_by="test_mse")
    with pytest.raises(DambenchInputError, match="select_every must be >= 1"):
        TrainConfig(select_every=0)


def test_fair_crps_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    members, truth = rng.normal(size=(2, 5, 3, 4)), rng.normal(size=(2, 3, 4))
    n = members.shape[1]
    skill = np.abs(members - truth[:, None]).mean(axis=1)
    spread = np.abs(members[:, :, None] - members[:, None, :]).sum(axis=(1, 2)) / (2 * n * (n - 1))
    expected = (skill - spread).mean()
    got = float(train.fair_crps(torch.from_numpy(members), torch.from_numpy(truth)))
    assert got == pytest.approx(expected, rel=1e-12)


def test_a_run_logs_the_selection_metric_and_records_the_selected_epoch(tmp_path):
    folder = ensure_embedded()
    config = {
        "task": {"dataset": str(folder), "batch_size": 1, "num_workers": 0},
        "model": {"name": "convcnp_tiny", "kwargs": {}},
        "train": {"epochs": 3, "max_steps_per_epoch": 2, "amp": False, "seed": 0,
                  "select_every": 2, "out": str(tmp_path / "run")},
    }  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    record = train.run(load_run_config(tmp_path / "c.yaml"), verbose=False)
    log = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    # due at epochs 1 (every 2) and 2 (the last), not at epoch 0
    assert ["val_select_mse" in r for r in log] == [False, True, True]
    scored = {r["epoch"]: r["val_select_mse"] for r in log if "val_select_mse" in r}
    best_epoch = min(scored, key=scored.get)
    assert record["selected_by"] == "val_select_mse" and record["best_epoch"] == best_epoch
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", mmap=False)
    assert best["epoch"] == best_epoch and best["best"] == scored[best_epoch]
