"""Train a DAMBench baseline: ``python -m baselines.train --config baselines/configs/NAME.yaml``.

The script never names a model: it dispatches on the registered
:class:`~baselines.interface.ModelInfo`. A model that is not trainable (Background, 3D-Var) is
refused with a pointer to ``evaluate.py``; a model with ``needs_fit`` is fitted on the train
split first (:meth:`fit`, its results kept in buffers and so in the checkpoints); patches
(``task.patch``) are refused for a model without ``supports_patches``.

AdamW with the paper's schedule (linear warm-up from 1e-5 to 1e-4 over the first sixth of the
steps, cosine decay to 3e-6) unless the model has a ``configure_optimizers(train_config)`` hook;
mixed precision on GPU, gradient clipping, an optional EMA of the weights (``train.ema_decay``:
the averaged weights are validated, evaluated and saved as the checkpoint's ``model``), a fixed
seed, JSONL logs, a checkpoint each epoch (``last.pt``, with the optimiser and RNG states, so
re-running the same command resumes bit-identically) and the best one by the benchmark's own
validation metric (``best.pt``: MSE of the analysis on normalised fields over the validation
split, or the fair CRPS for ensembles; ``train.select_by``), never a test-split number.
Validation also logs the loss and its diagnostics; every ``train.sample_every`` epochs the
inference step (``analyse``) also runs on ``train.sample_batches`` validation batches.
Checkpoints are described in :mod:`baselines.checkpoint`.

A run starts from scratch or from ``model.init_from`` (the same model, or the host of a
``multi_*`` model); ``train.freeze: [host]`` trains only a multi-modal model's adapter.

Data-parallel with ``torchrun --nproc_per_node N -m baselines.train ...`` (NCCL on GPU, gloo on
CPU); each rank takes every N-th sample of the same shuffled order, so N processes with batch b
follow one process with batch N*b.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import random
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import xarray as xr
from tqdm.auto import tqdm

from baselines.checkpoint import (
    CheckpointError,
    ResumeMismatchError,
    check_same_dataset,
    config_differences,
    dataset_record,
    initialise_from,
    load_checkpoint,
    modality_record,
    model_kwargs,
    normalization_record,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from baselines.config import RunConfig, TrainConfig, load_run_config
from baselines.interface import DABatch, ModelInfo
from baselines.layers.ema import ModelEma
from baselines.models.multi import adapter_of, freeze_host, keep_host_in_eval
from baselines.registry import create_model, model_info
from dambench.exceptions import DambenchError, DambenchInputError

logger = logging.getLogger(__name__)
_VALIDATION_SEED_OFFSET = 1_000_003
"""Validation runs in a forked RNG seeded from the run's seed, so it never shifts training."""


# --- schedule and sampling ---------------------------------------------------------------------


def learning_rate(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """The paper's schedule at optimiser step ``step`` (0-based) of ``total_steps``."""
    warmup = max(1, int(round(cfg.warmup_fraction * total_steps)))
    if step < warmup:
        return cfg.lr_start + (cfg.lr_peak - cfg.lr_start) * step / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return cfg.lr_end + 0.5 * (cfg.lr_peak - cfg.lr_end) * (
        1 + math.cos(math.pi * min(progress, 1))
    )


class EpochSampler(torch.utils.data.Sampler):
    """The same shuffled order of all samples for every rank; rank r takes positions r, r+N, ...

    The order depends only on (seed, epoch). The sample count is padded by repeating the first
    samples so every rank gets the same number of steps.
    """

    def __init__(
        self, n: int, *, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = True
    ):
        self.n, self.rank, self.world, self.seed, self.shuffle = n, rank, world, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=generator).tolist()

    def __iter__(self):
        order = self._order()
        padded = order + order[: (-len(order)) % self.world]
        return iter(padded[self.rank :: self.world])

    def __len__(self) -> int:
        return math.ceil(self.n / self.world)


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment, or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and Python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the legacy global generator, for third-party code)
    random.seed(seed)


# --- data and model ----------------------------------------------------------------------------


@dataclass
class TrainData:
    """Loaders and what the checkpoints record about the data."""

    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    sampler: EpochSampler
    train_ds: xr.Dataset
    stats: xr.Dataset
    channels: list[str]
    dataset: dict[str, Any]
    """The checkpoints' ``dataset`` entry (:func:`~baselines.checkpoint.dataset_record`)."""
    whole: xr.Dataset
    """The whole dataset (all splits, lazy) that ``dataset`` identifies."""
    modality_names: list[str] = field(default_factory=list)
    val_ds: xr.Dataset | None = None
    """The validation split (lazy, physical units) that ``val`` loads: a ``fit`` that measures
    statistics on validation cycles (SLAMS' ``sigma_z``) is given it (:func:`fit_model`)."""

    @property
    def normalization(self) -> dict[str, list]:
        return normalization_record(self.stats, self.channels)


def make_loaders(cfg: RunConfig, rank: int, world: int) -> TrainData:
    """Train and validation loaders, the train split, its statistics and the dataset record."""
    from dambench.batching import DATorchDataset, make_dataloader
    from dambench.load import open_dataset, stats_from_attrs

    train_ds = open_dataset(cfg.task.dataset, split="train")
    val_ds = open_dataset(cfg.task.dataset, split="validation")
    stats = stats_from_attrs(train_ds)
    seed = cfg.train.seed
    info = model_info(cfg.model.name)
    modalities = cfg.task.modalities
    if modalities is None and not info.uses_modalities:
        modalities = []  # nothing read for a model that ignores them
    train_samples = DATorchDataset(
        train_ds,
        stats=stats,
        train=True,
        patch=cfg.task.patch,
        seed=seed,
        modalities=modalities,
    )  # with patches there are more samples than cycles
    sampler = EpochSampler(len(train_samples), rank=rank, world=world, seed=seed)
    common = {"num_workers": cfg.task.num_workers, "seed": seed, "model_info": info}
    train = make_dataloader(
        train_samples, batch_size=cfg.task.batch_size, sampler=sampler, **common
    )
    val = make_dataloader(
        val_ds,
        batch_size=cfg.task.batch_size,
        train=False,
        stats=stats,
        patch=cfg.task.patch,
        modalities=train_samples.modality_names,  # the same M, in the same order
        modality_stats=train_samples.modality_stats,  # the train split's, resolved once
        **common,
    )
    channels = [str(c) for c in train_ds["channel"].values]
    whole = open_dataset(cfg.task.dataset)
    record = dataset_record(cfg.task.dataset, channels)  # the scorer's identity
    names = list(train_samples.modality_names)
    return TrainData(
        train, val, sampler, train_ds, stats, channels, record, whole, names, val_ds=val_ds
    )


def check_trainable(cfg: RunConfig) -> ModelInfo:
    """The model's :class:`ModelInfo`, after refusing what ``train.py`` cannot do with it."""
    name = cfg.model.name
    info = model_info(name)
    if not info.trainable:
        fitted = " (it is fitted on the train split by evaluate.py)" if info.needs_fit else ""
        raise DambenchInputError(
            f"Model {name!r} is not trainable (ModelInfo.trainable=False): it has no parameters "
            f"to optimise{fitted}. Evaluate it directly with "
            f"`python -m baselines.evaluate run --model {name}`."
        )
    if cfg.task.patch is not None and not info.supports_patches:
        raise DambenchInputError(
            f"Model {name!r} does not support patches (ModelInfo.supports_patches=False: it "
            f"assumes the whole globe), but task.patch={cfg.task.patch}. Remove task.patch or "
            "choose a model that supports patches."
        )
    return info


def build_model(cfg: RunConfig, data: TrainData, device: torch.device) -> torch.nn.Module:
    """``create_model`` with ``in_chans`` and the modalities (names, or the ``modality_chans``
    count) from the data, moved to ``device`` and then fitted when ``needs_fit`` (a fit that
    trains a network, as SLAMS' autoencoder, runs on the run's device), unless it starts from a
    checkpoint (``model.init_from``), whose fitted state it loads."""
    name, names = cfg.model.name, data.modality_names
    kwargs = model_kwargs(name, cfg.model.kwargs, channels=data.channels, modalities=names)
    model = create_model(name, **kwargs).to(device)
    if model.info.needs_fit and cfg.model.init_from is None:  # else the checkpoint's fit is kept
        fit_model(model, data)
    return model


def fit_model(model: torch.nn.Module, data: TrainData) -> None:
    """``model.fit`` on the train split; a ``fit`` with a ``validation`` parameter (SLAMS,
    which measures ``sigma_z`` there) is also given the run's validation split, the cycles the
    validation loader reads.

    Raises
    ------
    DambenchInputError
        A ``fit`` that takes ``validation`` while the run has no validation split.
    """
    options: dict[str, Any] = {"verbose": False}
    if "validation" in inspect.signature(model.fit).parameters:
        if data.val_ds is None:
            raise DambenchInputError(
                f"{type(model).__name__}.fit measures statistics on validation cycles, but the "
                "run has no validation split (TrainData.val_ds is None); build the data with "
                "make_loaders, which opens split='validation'."
            )
        options["validation"] = data.val_ds
    model.fit(data.train_ds, data.stats, **options)


def start_from(cfg: RunConfig, data: TrainData, model: torch.nn.Module) -> dict | None:
    """Load ``model.init_from`` into ``model`` and apply ``train.freeze``; returns the
    provenance of the initial weights (``None`` from scratch)."""
    record = None
    if cfg.model.init_from is not None:
        record = initialise_from(
            model,
            cfg.model.init_from,
            model_name=cfg.model.name,
            kwargs=cfg.model.kwargs,
            channels=data.channels,
            normalization=data.normalization,
        )
    if "host" in cfg.train.freeze:
        logger.info("froze %d host parameters", freeze_host(model))
    if not any(p.requires_grad for p in model.parameters()):
        raise DambenchInputError(
            f"Model {cfg.model.name!r} is registered as trainable but has no parameters that "
            "require gradients; fix its ModelInfo (trainable=False) or its constructor."
        )
    return record


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The model's ``configure_optimizers(cfg)`` when it has one, else AdamW over the
    parameters that require gradients (learning rates are set per step by the schedule)."""
    hook = getattr(model, "configure_optimizers", None)
    if hook is not None:
        optimizer = hook(cfg)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise DambenchInputError(
                f"{type(model).__name__}.configure_optimizers must return a torch optimiser; "
                f"got {type(optimizer).__name__}."
            )
        return optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr_start, weight_decay=cfg.weight_decay)


class LossModule(torch.nn.Module):
    """Wraps a model so its training loss is the forward pass (what DDP synchronises)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: DABatch) -> torch.Tensor:
        return self.model.loss(batch).loss


# --- the training state ------------------------------------------------------------------------


@dataclass
class Trainer:
    """Everything a training run updates, saves and restores."""

    cfg: RunConfig
    data: TrainData
    model: torch.nn.Module
    device: torch.device
    rank: int = 0
    world: int = 1
    ema: ModelEma | None = None
    init_from: dict | None = None
    optimizer: torch.optim.Optimizer = field(init=False)
    scaler: torch.amp.GradScaler = field(init=False)
    loss_module: torch.nn.Module = field(init=False)
    start_epoch: int = 0
    step: int = 0
    best: float = float("inf")
    best_epoch: int | None = None

    def __post_init__(self) -> None:
        self.optimizer = make_optimizer(self.model, self.cfg.train)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.loss_module = LossModule(self.model)
        if self.world > 1:
            # an adapter's stream without tokens in a batch leaves its parameters unused
            unused = adapter_of(self.model) is not None
            self.loss_module = torch.nn.parallel.DistributedDataParallel(
                self.loss_module, find_unused_parameters=unused
            )

    @property
    def use_amp(self) -> bool:
        return self.cfg.train.amp and self.device.type == "cuda"

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights evaluation uses: the EMA copy when there is one."""
        return self.model if self.ema is None else self.ema.module

    @property
    def steps_per_epoch(self) -> int:
        cap = self.cfg.train.max_steps_per_epoch
        return len(self.data.train) if cap is None else min(len(self.data.train), cap)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.train.epochs

    @property
    def out(self) -> Path:
        return Path(self.cfg.train.out)

    def payload(self, epoch: int, *, resumable: bool) -> dict[str, Any]:
        """The checkpoint dict (see :mod:`baselines.checkpoint`)."""
        import dambench

        state = {
            "model": self.eval_model.state_dict(),
            "config": self.cfg.to_dict(),
            "model_name": self.cfg.model.name,
            "model_info": self.model.info.to_dict(),
            "dataset": self.data.dataset,
            "normalization": self.data.normalization,
            "versions": {"dambench": dambench.__version__, "torch": str(torch.__version__)},
            "epoch": epoch,
            "step": self.step,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "selected_by": selection_key(self.cfg.train, self.model.info),
        }
        if self.model.info.uses_modalities:
            state["modalities"] = modality_record(self.data.modality_names, self.data.train_ds)
        if self.init_from is not None:
            state["init_from"] = self.init_from
        if resumable:
            if self.ema is not None:
                state["raw_model"] = self.model.state_dict()
            state.update(
                optimizer=self.optimizer.state_dict(),
                scaler=self.scaler.state_dict(),
                rng=rng_state(),
                sampler_epoch=self.data.sampler.epoch,
            )
        return state

    def resume(self, path: Path) -> None:
        """Restore the state saved in ``path`` by a run with the same config and dataset."""
        state = load_checkpoint(path, map_location=self.device, mmap=False)
        differences = config_differences(state["config"], self.cfg.to_dict())
        if differences:
            raise ResumeMismatchError(
                f"{path} was written by a run with a different config ({'; '.join(differences)})."
                " Resume with the same config, or choose another train.out."
            )
        check_same_dataset(path, state["dataset"], self.data.dataset, self.data.whole)
        if "optimizer" not in state:
            raise CheckpointError(f"{path} holds no training state to resume from.")
        self.model.load_state_dict(state["raw_model"] if self.ema is not None else state["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.step, self.best = state["epoch"] + 1, state["step"], state["best"]
        self.best_epoch = state.get("best_epoch")
        set_rng_state(state["rng"])


# --- one epoch ---------------------------------------------------------------------------------


def train_step(t: Trainer, batch: DABatch) -> float:
    """One optimiser step (schedule, AMP, clipping, EMA); returns the loss."""
    rate = learning_rate(t.step, t.total_steps, t.cfg.train)
    for group in t.optimizer.param_groups:
        group["lr"] = rate * group.get("lr_scale", 1.0)
    with torch.autocast(t.device.type, enabled=t.use_amp):
        loss = t.loss_module(batch)
    if not t.use_amp and not torch.isfinite(loss):
        raise DambenchError(
            f"The training loss is {float(loss)} at step {t.step} (model {t.cfg.model.name!r}, "
            f"lr {rate:.3g}); lower train.lr_peak or check the data."
        )
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss).backward()
    t.scaler.unscale_(t.optimizer)
    params = [p for group in t.optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, t.cfg.train.grad_clip)
    t.scaler.step(t.optimizer)
    t.scaler.update()
    if t.ema is not None:
        t.ema.update(t.model)
    t.step += 1
    return float(loss.detach())


def train_epoch(t: Trainer, epoch: int, verbose: bool) -> list[float]:
    """The optimiser steps of one epoch; returns their losses."""
    t.data.sampler.set_epoch(epoch)
    t.data.train.dataset.set_epoch(epoch)
    t.model.train()
    if "host" in t.cfg.train.freeze:
        keep_host_in_eval(t.model)
    losses: list[float] = []
    bar = tqdm(total=t.steps_per_epoch, desc=f"epoch {epoch}", disable=not verbose or t.rank != 0)
    for i, raw in enumerate(t.data.train):
        if i >= t.steps_per_epoch:
            break
        losses.append(train_step(t, DABatch.from_loader(raw).to(t.device)))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    return losses


def validate(model: torch.nn.Module, loader, device: torch.device) -> dict[str, float]:
    """Batch-size-weighted means of the loss and its diagnostics (normalised units) over a
    loader, without gradients and without running the model's inference step."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    with torch.no_grad():
        for raw in loader:
            batch = DABatch.from_loader(raw).to(device)
            result = model.loss(batch)
            n = batch.shape[0]
            for name, value in {"loss": float(result.loss), **result.diagnostics}.items():
                totals[name] = totals.get(name, 0.0) + float(value) * n
            count += n
    model.train(was_training)
    return {name: value / max(count, 1) for name, value in totals.items()}


def sample_analyses(model: torch.nn.Module, loader, device, cfg: TrainConfig) -> dict[str, float]:
    """MSE (normalised) of ``model.analyse`` on the first ``cfg.sample_batches`` batches, and
    the mean spread (``std``) when the analysis has one; ``members`` for ensemble models."""
    members = cfg.sample_members if model.info.output == "ensemble" else None
    was_training = model.training
    model.eval()
    totals = {"sample_mse": 0.0, "sample_spread": 0.0}
    count, spread_count = 0, 0
    for i, raw in enumerate(loader):
        if i >= cfg.sample_batches:
            break
        batch = DABatch.from_loader(raw).to(device)
        analysis = model.analyse(batch, members=members, seed=cfg.seed + i)
        n = batch.shape[0]
        totals["sample_mse"] += float(((analysis.mean - batch.target) ** 2).mean()) * n
        count += n
        if analysis.std is not None:
            totals["sample_spread"] += float(analysis.std.mean()) * n
            spread_count += n
    model.train(was_training)
    out = {"sample_mse": totals["sample_mse"] / max(count, 1)}
    if spread_count:
        out["sample_spread"] = totals["sample_spread"] / spread_count
    return out


def selection_key(cfg: TrainConfig, info) -> str:
    """The log key ``best.pt`` is chosen by (lower is better): ``val_select_mse``,
    ``val_select_crps`` or ``val_loss`` (``train.select_by``; by default CRPS for ensemble
    models, else MSE)."""
    by = cfg.select_by or ("crps" if info.output == "ensemble" else "mse")
    return "val_loss" if by == "loss" else f"val_select_{by}"


def fair_crps(members: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean fair CRPS of members ``(B, N, ...)`` against ``truth`` ``(B, ...)``:
    ``E|X - y| - sum_{i != j} |X_i - X_j| / (2 N (N - 1))``, with the pair sum from the sorted
    members (``sum_{i,j} |X_i - X_j| = 2 sum_k (2k - N + 1) X_(k)``)."""
    n = members.shape[1]
    skill = (members - truth[:, None]).abs().mean(dim=1)
    ranks = torch.arange(n, dtype=members.dtype, device=members.device)
    shape = (1, n) + (1,) * (members.dim() - 2)
    pairs = 2 * ((2 * ranks - n + 1).view(shape) * members.sort(dim=1).values).sum(dim=1)
    return (skill - pairs / (2 * n * (n - 1))).mean()


def selection_scores(model, loader, device, cfg: TrainConfig, epoch: int) -> dict[str, float]:
    """The benchmark's validation metric over the whole validation loader: ``select_mse`` (the
    analysis mean's MSE on normalised fields) and, for ensemble models, ``select_crps`` (fair
    CRPS of ``select_members`` members). Member draws are seeded by (seed, epoch, batch)."""
    ensemble = model.info.output == "ensemble"
    members = (cfg.select_members or cfg.sample_members or 4) if ensemble else None
    was_training = model.training
    model.eval()
    totals, count = {"select_mse": 0.0, "select_crps": 0.0}, 0
    for i, raw in enumerate(loader):
        batch = DABatch.from_loader(raw).to(device)
        target = batch.target
        analysis = model.analyse(replace(batch, target=None), members=members, seed=cfg.seed + i)
        n = batch.shape[0]
        totals["select_mse"] += float(((analysis.mean.detach() - target) ** 2).mean()) * n
        if ensemble:
            totals["select_crps"] += float(fair_crps(analysis.members.detach(), target)) * n
        count += n
    model.train(was_training)
    out = {"select_mse": totals["select_mse"] / max(count, 1)}
    if ensemble:
        out["select_crps"] = totals["select_crps"] / max(count, 1)
    return out


def _selection_due(cfg: TrainConfig, epoch: int) -> bool:
    return cfg.select_by != "loss" and (
        (epoch + 1) % cfg.select_every == 0 or epoch == cfg.epochs - 1
    )


def evaluate_epoch(t: Trainer, epoch: int) -> dict[str, float]:
    """Validation diagnostics, the selection metric when due (:func:`selection_scores`) and
    sampled analyses every ``sample_every`` epochs, in an RNG forked from the run's seed so
    that validation never changes the training stream."""
    cfg = t.cfg.train
    devices = [t.device] if t.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed + _VALIDATION_SEED_OFFSET + epoch)
        metrics = {f"val_{k}": v for k, v in validate(t.eval_model, t.data.val, t.device).items()}
        if _selection_due(cfg, epoch):
            scores = selection_scores(t.eval_model, t.data.val, t.device, cfg, epoch)
            metrics.update({f"val_{k}": v for k, v in scores.items()})
        if cfg.sample_every is not None and (epoch + 1) % cfg.sample_every == 0:
            sampled = sample_analyses(t.eval_model, t.data.val, t.device, cfg)
            metrics.update({f"val_{k}": v for k, v in sampled.items()})
    return metrics


# --- the run -----------------------------------------------------------------------------------


def _log(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _save_run_info(t: Trainer) -> None:
    import yaml

    import dambench

    info = {
        "config": t.cfg.to_dict(),
        "model_info": t.model.info.to_dict(),
        "dataset": t.data.dataset,
        "dambench_version": dambench.__version__,
        "n_channels": len(t.data.channels),
        "torch_version": str(torch.__version__),
    }
    (t.out / "run.yaml").write_text(yaml.safe_dump(info, sort_keys=True))


def _end_of_epoch(t: Trainer, epoch: int, record: dict) -> None:
    """Keep the best checkpoint by the selection metric (:func:`selection_key`), log (with
    ``selected: true`` on the epoch ``best.pt`` now holds) and write ``last.pt`` (rank 0
    only)."""
    if t.rank != 0:
        return
    checkpoints = t.out / "checkpoints"
    key = selection_key(t.cfg.train, t.model.info)
    record["selected"] = key in record and record[key] < t.best
    if record["selected"]:
        t.best, t.best_epoch = record[key], epoch
        save_checkpoint(checkpoints / "best.pt", t.payload(epoch, resumable=False))
    _log(t.out / "log.jsonl", record)
    save_checkpoint(checkpoints / "last.pt", t.payload(epoch, resumable=True))


def setup(cfg: RunConfig) -> Trainer:
    """Refuse what cannot be trained, seed, load the data, build (and fit) the model, start
    it from ``model.init_from``, and resume from ``train.out/checkpoints/last.pt`` when it
    exists."""
    check_trainable(cfg)
    rank, world, device = setup_distributed()
    seed_everything(cfg.train.seed)
    data = make_loaders(cfg, rank, world)
    model = build_model(cfg, data, device)
    init_from = start_from(cfg, data, model)
    ema = None if cfg.train.ema_decay is None else ModelEma(model, cfg.train.ema_decay)
    t = Trainer(cfg, data, model, device, rank=rank, world=world, ema=ema, init_from=init_from)
    (t.out / "checkpoints").mkdir(parents=True, exist_ok=True)
    last = t.out / "checkpoints" / "last.pt"
    if last.exists():
        t.resume(last)
        logger.info("resumed %s at epoch %d, step %d", last, t.start_epoch, t.step)
    if rank == 0:
        _save_run_info(t)
    return t


def run(cfg: RunConfig, *, verbose: bool = True) -> dict:
    """Train (or resume) and return the final record: epoch, losses, validation metrics, and
    ``selected_by``, ``best`` and ``best_epoch`` of ``best.pt``."""
    t = setup(cfg)
    record: dict[str, Any] = {}
    for epoch in range(t.start_epoch, cfg.train.epochs):
        losses = train_epoch(t, epoch, verbose)
        record = {
            "epoch": epoch,
            "step": t.step,
            "train_loss": float(np.mean(losses)),
            **evaluate_epoch(t, epoch),
            "lr": learning_rate(t.step - 1, t.total_steps, cfg.train),
        }
        _end_of_epoch(t, epoch, record)
        if t.world > 1:
            dist.barrier()
    record.update(
        selected_by=selection_key(cfg.train, t.model.info), best=t.best, best_epoch=t.best_epoch
    )
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML file in baselines/configs/")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=2")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    cfg = load_run_config(args.config, args.overrides)
    record = run(cfg, verbose=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(record))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
