"""baselines/train.py and baselines/checkpoint.py: dispatch on ModelInfo, EMA, bit-identical
resume, checkpoints that refuse data with other channels.

Runs train on the embedded era5-sample (4 channels, 121 x 240) with tiny models and 2-3 steps.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from baselines import train
from baselines.checkpoint import (
    LEGACY_DIGEST_KIND,
    ChannelMismatchError,
    CheckpointError,
    ResumeMismatchError,
    checkpoint_metadata,
    dataset_digest,
    load_checkpoint,
    model_from_checkpoint,
    model_kwargs,
    save_checkpoint,
    takes_modality_chans,
)
from baselines.config import load_run_config
from baselines.interface import Analysis, BaselineModule, DABatch, LossAndDiagnostics, ModelInfo
from baselines.layers.ema import ModelEma
from baselines.registry import list_models
from dambench.exceptions import DambenchInputError
from dambench.load import ensure_embedded, open_dataset, stats_from_attrs
from dambench.scoring.identity import dataset_identity

CHANNELS = ["u10", "v10", "t2m", "msl"]


@pytest.fixture(scope="module")
def folder():
    return ensure_embedded()


def write_config(path: Path, folder: Path, out: Path, *, model="convcnp_tiny", task=None, **train_):
    config = {
        "task": {"dataset": str(folder), "batch_size": 1, "num_workers": 0, **(task or {})},
        "model": {"name": model, "kwargs": {}},
        "train": {"epochs": 2, "max_steps_per_epoch": 3, "amp": False, "seed": 0,
                  "out": str(out), **train_},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


def _assert_identical(a, b, where=""):
    """Exact equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# --- resume ------------------------------------------------------------------------------------


def _kill_in_second_epoch_and_resume(config: Path, monkeypatch) -> None:
    """Run ``config`` (2 epochs), killed before the second epoch is logged and saved, then run
    it again (a fresh start of the same command resumes from last.pt)."""
    original_log = train._log

    def killed_in_second_epoch(path, record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt("killed")
        original_log(path, record)

    with monkeypatch.context() as patch:
        patch.setattr(train, "_log", killed_in_second_epoch)
        with pytest.raises(KeyboardInterrupt):
            train.run(load_run_config(config), verbose=False)
    out = Path(load_run_config(config).train.out)
    assert [json.loads(line)["epoch"] for line in open(out / "log.jsonl")] == [0]
    torch.manual_seed(12345)  # a fresh process would start from other generator states
    np.random.seed(12345)  # noqa: NPY002
    random.seed(12345)
    train.run(load_run_config(config), verbose=False)


def test_resume_continues_bit_identically_with_ema_and_sampling(folder, tmp_path, monkeypatch):
    """2 epochs straight vs 1 epoch, killed, then resumed for the second: identical weights
    (EMA and raw), optimiser state and logs, bit for bit."""
    options = {"ema_decay": 0.5, "sample_every": 1}
    straight = tmp_path / "straight"
    train.run(load_run_config(write_config(tmp_path / "a.yaml", folder, straight, **options)),
              verbose=False)  # fmt: skip
    resumed = tmp_path / "resumed"
    config = write_config(tmp_path / "b.yaml", folder, resumed, **options)
    _kill_in_second_epoch_and_resume(config, monkeypatch)

    a = load_checkpoint(straight / "checkpoints" / "last.pt", mmap=False)
    b = load_checkpoint(resumed / "checkpoints" / "last.pt", mmap=False)
    for key in ("model", "raw_model", "optimizer", "rng", "step", "epoch", "best"):
        _assert_identical(a[key], b[key], key)
    assert not all(torch.equal(a["model"][k], a["raw_model"][k]) for k in a["model"])  # EMA
    logs = [[json.loads(line) for line in open(run / "log.jsonl")] for run in (straight, resumed)]
    assert logs[0] == logs[1] and [r["step"] for r in logs[0]] == [3, 6]
    assert "val_sample_mse" in logs[0][0] and "val_mse" in logs[0][0]


def test_resume_with_a_different_config_is_refused(folder, tmp_path):
    config = write_config(tmp_path / "c.yaml", folder, tmp_path / "run", epochs=1)
    train.run(load_run_config(config), verbose=False)
    with pytest.raises(
        ResumeMismatchError, match=r"different config \(train.lr_peak: 0.0001 -> 0.5"
    ):
        train.run(load_run_config(config, ["train.lr_peak=0.5"]), verbose=False)
    assert issubclass(ResumeMismatchError, ValueError)


# --- dispatch on ModelInfo ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["background_tiny", "threedvar_tiny"])
def test_non_trainable_models_are_refused_with_the_evaluate_command(folder, tmp_path, name):
    config = write_config(tmp_path / "n.yaml", folder, tmp_path / "run", model=name)
    with pytest.raises(DambenchInputError, match=rf"'{name}' is not trainable.*--model {name}"):
        train.run(load_run_config(config), verbose=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_patches_are_refused_for_a_whole_globe_model(folder, tmp_path):
    patch = {"patch": {"latitude": 64, "longitude": 96}}
    config = write_config(tmp_path / "p.yaml", folder, tmp_path / "run", task=patch)
    with pytest.raises(DambenchInputError, match="'convcnp_tiny' does not support patches"):
        train.run(load_run_config(config), verbose=False)


class _Probe(BaselineModule):
    """A one-parameter model recording how train.py drives it."""

    def __init__(self, in_chans: int = 4, **_):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))
        self.register_buffer("fitted_error", torch.zeros(in_chans))
        self.calls = {"fit": [], "analyse": 0, "forward": 0}

    def fit(self, dataset, stats, *, verbose=False):
        self.calls["fit"].append(sorted(set(dataset["split"].values.tolist())))
        self.calls["fit_device"] = self.scale.device.type
        error = (dataset["background"] - dataset["target"]) / stats["std"]
        self.fitted_error.copy_(
            torch.as_tensor(error.std(["time", "latitude", "longitude"]).values)
        )
        return self

    def configure_optimizers(self, cfg):
        return torch.optim.SGD([{"params": [self.scale], "lr_scale": 0.25}], lr=cfg.lr_start)

    def forward(self, batch: DABatch) -> Analysis:
        self.calls["forward"] += 1
        return Analysis(mean=batch.background * self.scale)

    def loss(self, batch: DABatch) -> LossAndDiagnostics:
        mse = ((batch.background * self.scale - batch.target) ** 2).mean()
        if self.training:  # draws from every global generator, as a stochastic loss would
            mse = mse * (1 + torch.rand(()) + np.random.rand() + random.random())  # noqa: NPY002
        return LossAndDiagnostics(loss=mse, diagnostics={"probe": 1.0})

    def analyse(self, batch, *, members=None, seed=0):
        self.calls["analyse"] += 1
        return super().analyse(batch, members=members, seed=seed)


@pytest.fixture
def probes(monkeypatch):
    """Make train.py build :class:`_Probe` models; returns the list of built ones."""
    info = ModelInfo(output="deterministic", needs_fit=True, paper="-", code="-", code_licence="-")
    built = []

    def create_probe(name, **kwargs):
        model = _Probe(**kwargs)
        model.model_name, model.info = name, info
        built.append(model)
        return model

    monkeypatch.setattr(train, "model_info", lambda name: info)
    monkeypatch.setattr(train, "create_model", create_probe)
    return built


@pytest.mark.parametrize("restore", [True, False])
def test_resume_restores_the_global_generators(folder, tmp_path, monkeypatch, probes, restore):
    """A loss drawing from torch, numpy and Python generators resumes bit-identically; without
    restoring the generators (``restore=False``, the old train.py) it does not."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train.run(load_run_config(write_config(tmp_path / "a.yaml", folder, straight, model="probe")),
              verbose=False)  # fmt: skip
    if not restore:
        monkeypatch.setattr(train, "set_rng_state", lambda state: None)
    _kill_in_second_epoch_and_resume(
        write_config(tmp_path / "b.yaml", folder, resumed, model="probe"), monkeypatch
    )
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (straight, resumed))
    assert torch.equal(a["model"]["scale"], b["model"]["scale"]) is restore


def test_fit_hook_optimiser_hook_and_sampled_validation(folder, tmp_path, monkeypatch, probes):
    built = probes
    rates = []
    step = train.train_step

    def spy(t, batch):
        out = step(t, batch)
        rates.append((t.optimizer.param_groups[0]["lr"], t.step - 1, t.total_steps))
        return out

    monkeypatch.setattr(train, "train_step", spy)
    out = tmp_path / "run"
    config = write_config(tmp_path / "f.yaml", folder, out, model="probe", epochs=3,
                          sample_every=2, sample_batches=2, select_by="loss")  # fmt: skip
    train.run(load_run_config(config), verbose=False)
    probe = built[0]
    assert probe.calls["fit"] == [["train"]]  # fitted once, on the train split only
    assert probe.calls["analyse"] == 2  # epoch index 1 only (sample_every=2), 2 batches
    cfg = load_run_config(config).train
    for rate, index, total in rates:  # the schedule times the group's lr_scale
        assert rate == pytest.approx(0.25 * train.learning_rate(index, total, cfg))
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert torch.all(state["model"]["fitted_error"] > 0)  # the fit travels with the weights
    assert state["model_info"]["needs_fit"] is True
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [("val_sample_mse" in r) for r in log] == [False, True, False]
    assert all(r["val_probe"] == 1.0 for r in log)


def test_the_model_is_on_the_run_device_before_fit(folder, probes):
    """fit (SLAMS trains its autoencoder there) runs on the run's device, not on the CPU; the
    ``meta`` device stands in for a GPU (the old train.py moved the model after fit)."""
    train_ds = open_dataset(folder, split="train")
    data = SimpleNamespace(channels=CHANNELS, modality_names=[], train_ds=train_ds,
                           stats=stats_from_attrs(train_ds))  # fmt: skip
    cfg = SimpleNamespace(model=SimpleNamespace(name="probe", kwargs={}, init_from=None))
    model = train.build_model(cfg, data, torch.device("meta"))
    assert probes[0].calls["fit_device"] == "meta" and model.scale.device.type == "meta"


def test_a_run_starting_from_a_checkpoint_keeps_its_fit(folder, probes):
    """With ``model.init_from`` the fitted state comes with the checkpoint's weights: fitting
    again (SLAMS retrains its autoencoder for minutes) would be thrown away."""
    train_ds = open_dataset(folder, split="train")
    data = SimpleNamespace(channels=CHANNELS, modality_names=[], train_ds=train_ds,
                           stats=stats_from_attrs(train_ds))  # fmt: skip
    model = SimpleNamespace(name="probe", kwargs={}, init_from="runs/probe/best.pt")
    train.build_model(SimpleNamespace(model=model), data, torch.device("cpu"))
    assert probes[0].calls["fit"] == []


# --- modalities --------------------------------------------------------------------------------


def test_modality_chans_is_filled_from_the_loader_and_a_mismatch_is_refused():
    given = {"channels": CHANNELS, "modalities": ["precip", "precip_gauges"]}
    assert model_kwargs("slams_tiny", {}, **given)["modality_chans"] == 2  # variant default 1
    assert model_kwargs("slams_small", {"modality_chans": 2}, **given)["modality_chans"] == 2
    assert model_kwargs("slams_tiny", {}, **{**given, "modalities": []})["modality_chans"] == 0
    with pytest.raises(DambenchInputError, match=r"modality_chans=3 .*gives 2 modalities"):
        model_kwargs("slams_full", {"modality_chans": 3}, **given)
    # no loader count (nothing recorded): the config's or the variant's value stays
    assert "modality_chans" not in model_kwargs("slams_tiny", {}, channels=CHANNELS,
                                                modalities=None)  # fmt: skip
    assert "modality_chans" not in model_kwargs("convcnp_tiny", {}, **given)  # takes none
    takers = [n for n in list_models("*_tiny") if takes_modality_chans(n)]
    assert "slams_tiny" in takers  # and any composed model on it (multi_slams_tiny)
    for name in takers:
        assert model_kwargs(name, {}, **given)["modality_chans"] == 2, name


def test_a_modality_model_trains_with_the_loaders_modality_count(folder, tmp_path):
    """slams_tiny (built for M = 1) on era5-sample (M = 2: precip and its gauge flags): the
    count comes from the loader, so training runs and the checkpoint rebuilds the model."""
    config = write_config(tmp_path / "s.yaml", folder, tmp_path / "run", model="slams_tiny",
                          epochs=1, max_steps_per_epoch=1)  # fmt: skip
    train.run(load_run_config(config), verbose=False)
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    assert load_checkpoint(best)["modalities"]["names"] == ["precip", "precip_gauges"]
    model = model_from_checkpoint(best, channels=CHANNELS)
    assert model.modality_chans == 2
    with pytest.raises(DambenchInputError, match=r"modality_chans=1 .*gives 2 modalities"):
        train.run(load_run_config(config, ["model.kwargs.modality_chans=1",
                                           f"train.out={tmp_path / 'other'}"]),
                  verbose=False)  # fmt: skip


# --- checkpoints -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    config = write_config(out / "t.yaml", folder, out / "run", epochs=1, ema_decay=0.9)
    train.run(load_run_config(config), verbose=False)
    return out / "run" / "checkpoints"


def test_checkpoint_records_provenance_and_keeps_ema_weights_as_model(trained):
    state = load_checkpoint(trained / "last.pt")
    assert state["dataset"]["channels"] == CHANNELS and len(state["dataset"]["digest"]) == 64
    assert state["normalization"]["channels"] == CHANNELS
    assert state["normalization"]["std"][2] == pytest.approx(22.2, rel=0.01)  # t2m, K
    assert state["model_info"]["output"] == "gaussian" and state["config"]["train"]["seed"] == 0
    model = model_from_checkpoint(trained / "best.pt", channels=CHANNELS)
    assert model.model_name == "convcnp_tiny" and model.info.output == "gaussian"
    assert not model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, state["model"][name])
    meta = checkpoint_metadata(trained / "best.pt")
    assert meta["model"] == "convcnp_tiny" and meta["seed"] == 0 and meta["ema_decay"] == 0.9
    assert meta["dataset_digest"] == state["dataset"]["digest"]
    json.dumps(meta)  # plain JSON types for results files


def test_checkpoints_record_the_scorers_dataset_identity(folder, trained):
    """The checkpoint's digest is the one ``dambench evaluate`` writes to results files (the
    sha256 of the build's manifest.json), whatever split is scored."""
    state = load_checkpoint(trained / "best.pt")
    scored = dataset_identity(folder)
    manifest = hashlib.sha256((Path(folder) / "manifest.json").read_bytes()).hexdigest()
    assert state["dataset"]["digest"] == scored.digest == manifest
    assert state["dataset"]["digest_kind"] == "manifest"
    assert state["dataset"]["name"] == scored.name == "era5-sample"
    meta = checkpoint_metadata(trained / "best.pt")
    assert (meta["dataset_digest"], meta["dataset_digest_kind"]) == (manifest, "manifest")


def _as_legacy(path: Path, digest: str) -> None:
    """Rewrite checkpoint ``path`` as train.py wrote it before it recorded the scorer's
    identity (the config's dataset, a :func:`dataset_digest`, no ``digest_kind``)."""
    state = load_checkpoint(path, mmap=False)
    channels = state["dataset"]["channels"]
    state["dataset"] = {"name": state["config"]["task"]["dataset"], "digest": digest,
                        "channels": channels}  # fmt: skip
    save_checkpoint(path, state)


def test_resume_refuses_another_dataset_and_reads_older_checkpoints(folder, tmp_path):
    config = write_config(tmp_path / "r.yaml", folder, tmp_path / "run", epochs=1,
                          max_steps_per_epoch=1)  # fmt: skip
    train.run(load_run_config(config), verbose=False)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(last, mmap=False)
    changed = {**state, "dataset": {**state["dataset"], "digest": "0" * 64}}
    save_checkpoint(last, changed)
    with pytest.raises(ResumeMismatchError, match="trained on dataset .*'0000.*this run has"):
        train.run(load_run_config(config), verbose=False)
    # a checkpoint from before: resumed on the same data (its legacy digest), refused on other
    _as_legacy(last, dataset_digest(open_dataset(folder)))
    assert train.run(load_run_config(config), verbose=False)["best"] == state["best"]
    meta = checkpoint_metadata(last)
    assert meta["dataset_digest_kind"] == LEGACY_DIGEST_KIND and meta["dataset"] == str(folder)
    assert model_from_checkpoint(last, channels=CHANNELS).model_name == "convcnp_tiny"
    _as_legacy(last, "1" * 64)
    with pytest.raises(ResumeMismatchError, match="trained on dataset .*'1111"):
        train.run(load_run_config(config), verbose=False)


def test_data_with_other_channels_is_refused_naming_both_lists(trained):
    both = r"\['u10', 'v10', 't2m', 'msl'\].*\['u10', 'v10', 'msl', 't2m'\].*order"
    with pytest.raises(ChannelMismatchError, match=both):
        model_from_checkpoint(trained / "best.pt", channels=["u10", "v10", "msl", "t2m"])
    with pytest.raises(ChannelMismatchError, match=r"data has channels \['u10', 'v10', 'msl'\]"):
        model_from_checkpoint(trained / "best.pt", channels=["u10", "v10", "msl"])


def test_unreadable_checkpoints_name_the_file(tmp_path, trained):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((trained / "best.pt").read_bytes()[:1000])
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    old = tmp_path / "old.pt"
    torch.save({"model": {}, "config": {"model": {"name": "convcnp_tiny"}}}, old)
    for path in (truncated, garbage, old):
        with pytest.raises(CheckpointError, match=str(path)):
            model_from_checkpoint(path, channels=CHANNELS)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_ema_update_matches_the_closed_form():
    model = torch.nn.Linear(2, 1)
    bn = torch.nn.BatchNorm1d(1)
    both = torch.nn.Sequential(model, bn)
    ema = ModelEma(both, decay=0.75)
    start = model.weight.detach().clone()
    targets = [torch.full_like(start, v) for v in (1.0, 2.0, 4.0)]
    for target in targets:
        with torch.no_grad():
            model.weight.copy_(target)
        ema.update(both)
    # e_k = 0.75 e_{k-1} + 0.25 w_k from e_0 = w_0
    expected = start
    for target in targets:
        expected = 0.75 * expected + 0.25 * target
    torch.testing.assert_close(ema.module[0].weight, expected, rtol=0, atol=1e-7)
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(DambenchInputError, match="decay"):
        ModelEma(both, decay=1.0)
