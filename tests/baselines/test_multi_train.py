"""Training multi-modal models with baselines/train.py on the embedded era5-sample: fine-tuning a
trained host checkpoint (``model.init_from``) with the host frozen (``train.freeze: [host]``),
from scratch, the records a checkpoint keeps (modalities and their sources, where the weights
started) and the refusals.

era5-sample's modalities are ``precip`` (ERA5 total precipitation kept in 70 capitals' cells,
NaN elsewhere) and ``precip_gauges`` (1 in those cells, 0 elsewhere). Tiny models, 2 steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from baselines import train
from baselines.checkpoint import (
    CheckpointError,
    checkpoint_metadata,
    load_checkpoint,
    model_from_checkpoint,
)
from baselines.config import load_run_config
from baselines.interface import DABatch
from baselines.layers.adapter import ADAPTER_ATTRIBUTE
from baselines.models.multi import adapter_of
from dambench.exceptions import DambenchInputError
from dambench.load import ensure_embedded, open_dataset

CHANNELS = ["u10", "v10", "t2m", "msl"]
MODALITIES = ["precip", "precip_gauges"]


@pytest.fixture(scope="module")
def folder():
    return ensure_embedded()


def write_config(path: Path, folder: Path, out: Path, *, model: str, init_from=None, **train_):
    config = {
        "task": {"dataset": str(folder), "batch_size": 1, "num_workers": 0},
        "model": {"name": model, "kwargs": train_.pop("kwargs", {}), "init_from": init_from},
        "train": {"epochs": 1, "max_steps_per_epoch": 2, "amp": False, "seed": 0,
                  "lr_peak": 1e-2, "out": str(out), **train_},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


def run(path: Path, overrides=()) -> dict:
    return train.run(load_run_config(path, list(overrides)), verbose=False)


@pytest.fixture(scope="module")
def host(folder, tmp_path_factory) -> Path:
    """A trained convcnp_tiny (BatchNorm) checkpoint."""
    tmp = tmp_path_factory.mktemp("host")
    run(write_config(tmp / "host.yaml", folder, tmp / "run", model="convcnp_tiny"))
    return tmp / "run" / "checkpoints" / "best.pt"


def _first_validation_batch(folder) -> DABatch:
    from dambench.batching import make_dataloader

    ds = open_dataset(folder, split="validation")
    loader = make_dataloader(ds, batch_size=1, train=False, modalities=MODALITIES)
    return DABatch.from_loader(next(iter(loader)))


def test_fine_tuning_a_frozen_host_trains_only_the_adapter(folder, tmp_path, host):
    out = tmp_path / "multi"
    config = write_config(
        tmp_path / "m.yaml", folder, out, model="multi_convcnp_tiny", init_from=str(host),
        freeze=["host"],
    )  # fmt: skip
    run(config)
    state = load_checkpoint(out / "checkpoints" / "last.pt", mmap=False)
    trained_host = load_checkpoint(host, mmap=False)["model"]
    for key, value in state["model"].items():  # weights and BatchNorm statistics
        if not key.startswith(ADAPTER_ATTRIBUTE + "."):
            assert torch.equal(value, trained_host[key]), key
    heads = [v for k, v in state["model"].items() if ".heads." in k and k.endswith("weight")]
    assert heads and all(bool(h.abs().sum() > 0) for h in heads)  # the adapter learned
    assert state["modalities"]["names"] == MODALITIES
    assert "ERA5 tp" in state["modalities"]["sources"]["precip"]  # not CPC gauges
    assert state["init_from"]["path"] == str(host)
    assert state["init_from"]["model"] == "convcnp_tiny"
    meta = checkpoint_metadata(out / "checkpoints" / "last.pt")
    assert meta["modalities"] == state["modalities"] and meta["init_from"] == state["init_from"]


def test_at_step_zero_the_fine_tuned_model_is_the_trained_host(folder, tmp_path, host):
    """On a real era5-sample cycle with precipitation present: bit for bit."""
    config = write_config(
        tmp_path / "z.yaml", folder, tmp_path / "z", model="multi_convcnp_tiny",
        init_from=str(host),
    )  # fmt: skip
    t = train.setup(load_run_config(config))
    batch = _first_validation_batch(folder)
    assert bool(batch.modality_present.all())
    reference = model_from_checkpoint(host, channels=CHANNELS)
    ours, theirs = t.model.eval().analyse(batch), reference.analyse(batch)
    assert adapter_of(t.model) is not None
    assert torch.equal(ours.mean, theirs.mean) and torch.equal(ours.std, theirs.std)


def test_from_scratch_and_rebuilt_from_its_checkpoint(folder, tmp_path):
    out = tmp_path / "scratch"
    run(write_config(tmp_path / "s.yaml", folder, out, model="multi_fnp_tiny"))
    path = out / "checkpoints" / "best.pt"
    model = model_from_checkpoint(path, channels=CHANNELS)
    assert adapter_of(model).modalities == tuple(MODALITIES)
    assert "init_from" not in load_checkpoint(path)
    batch = _first_validation_batch(folder)
    assert torch.isfinite(model.analyse(batch).mean).all()


def test_the_per_cell_presence_a_model_sees_is_where_the_store_has_data(folder):
    """What the adapter and SLAMS read per cell (``DABatch.modality_cells``) on era5-sample:
    precipitation in exactly the 70 capitals' cells where the store's value is finite; gauge
    counts everywhere (the store holds a count, 0 without a gauge, in every cell)."""
    from dambench.batching import make_dataloader

    ds = open_dataset(folder, split="validation")
    loader = make_dataloader(ds, batch_size=1, train=False, modalities=MODALITIES)
    for i, raw in enumerate(loader):
        cells = DABatch.from_loader(raw).modality_cells()[0].numpy()
        finite = np.isfinite(ds["precip"].isel(time=i).values)
        assert finite.sum() == 70
        assert np.array_equal(cells[0], finite)
        assert cells[1].all() and np.isfinite(ds["precip_gauges"].isel(time=i).values).all()


def test_refusals(folder, tmp_path, host):
    def config(name, **options):
        return write_config(tmp_path / f"{name}.yaml", folder, tmp_path / name, **options)

    other = config("other", model="multi_fnp_tiny", init_from=str(host))
    with pytest.raises(CheckpointError, match="holds model 'convcnp_tiny'.*'multi_fnp_tiny'"):
        run(other)
    kwargs = config("kw", model="multi_convcnp_tiny", init_from=str(host),
                    kwargs={"embed_dim": 8})  # fmt: skip
    with pytest.raises(CheckpointError, match=r"other model kwargs \(embed_dim: 16 -> 8"):
        run(kwargs)
    unfrozen = config("u", model="multi_convcnp_tiny", freeze=["host"])
    with pytest.raises(DambenchInputError, match="freezes an untrained host"):
        load_run_config(unfrozen)
    plain = config("plain", model="convcnp_tiny", init_from=str(host), freeze=["host"])
    with pytest.raises(DambenchInputError, match="has no adapter"):
        run(plain)
    missing = config("missing", model="multi_convcnp_tiny", init_from=str(tmp_path / "no.pt"))
    with pytest.raises(FileNotFoundError, match="no.pt"):
        run(missing)
    named = config("named", model="multi_convcnp_tiny", kwargs={"modalities": ["olr"]})
    with pytest.raises(DambenchInputError, match=r"modalities=\['olr'\].*\['precip', 'precip_g"):
        run(named)
    with pytest.raises(DambenchInputError, match="train.freeze must be"):
        load_run_config(config("f", model="multi_convcnp_tiny", freeze=["encoder"]))


CONFIGS = Path(__file__).resolve().parents[2] / "baselines" / "configs"
MULTI_CONFIGS = sorted(CONFIGS.glob("multi_*.yaml"))


def test_every_host_has_multi_configs():
    names = {path.stem for path in MULTI_CONFIGS}
    hosts = ("convcnp", "fnp", "adas", "vaevar", "sda_cond", "slams")
    assert {f"multi_{h}_{s}" for h in hosts for s in ("small", "full")} <= names


@pytest.mark.parametrize("path", MULTI_CONFIGS, ids=lambda p: p.stem)
def test_multi_configs_build_and_match_their_host_config(path):
    """Each config builds its model with its modalities (on the meta device), and a fine-tune's
    host kwargs are those of the host config its init_from checkpoint comes from (else
    train.py refuses the checkpoint)."""
    from baselines.registry import composed_host, composed_kwargs, create_model

    cfg = load_run_config(path)
    name = cfg.model.name
    assert name == path.stem and cfg.task.modalities
    with torch.device("meta"):
        model = create_model(name, modalities=cfg.task.modalities, **cfg.model.kwargs)
    assert adapter_of(model).modalities == tuple(cfg.task.modalities)
    if cfg.model.init_from is not None:
        host = composed_host(name)
        assert cfg.model.init_from == f"runs/{host}/checkpoints/best.pt"
        own = composed_kwargs(name)  # the multi model's options (VAE-Var's modality_term)
        hosts = {k: v for k, v in cfg.model.kwargs.items() if k not in own}
        assert hosts == load_run_config(CONFIGS / f"{host}.yaml").model.kwargs
