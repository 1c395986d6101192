"""Training configurations: YAML loaded strictly (unknown keys are errors) into frozen dataclasses.

A config file has three sections::

    task:  {dataset: era5-sample, batch_size: 1, num_workers: 0, patch: null, modalities: null}
    model: {name: convcnp_small, kwargs: {}, init_from: null}
    train: {epochs: 3, lr_peak: 1.0e-4, ..., seed: 0, freeze: [], out: runs/convcnp_small}

Fine-tuning a trained baseline with the multi-modal adapter (``baselines/configs/multi_*``)::

    model: {name: multi_convcnp_small, init_from: runs/convcnp_small/checkpoints/best.pt}
    train: {freeze: [host], ...}

Command-line overrides use dotted keys: ``train.epochs=2 model.kwargs.embed_dim=32``. Every
invalid value raises :class:`~dambench.exceptions.DambenchInputError` (a ``ValueError``) naming
the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dambench import schema
from dambench.exceptions import DambenchInputError


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """What to learn from: the dataset (name, folder or URL) and how batches are made."""

    dataset: str = "era5-sample"
    batch_size: int = 1
    num_workers: int = 0
    patch: dict[str, int] | None = None
    modalities: list[str] | None = None
    """Schema modalities (``dambench.schema.MODALITIES``) given to the model, in this order;
    ``None``: those the dataset holds, or none for a model with ``uses_modalities=False``."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_workers < 0:
            raise DambenchInputError(
                f"task.batch_size must be >= 1 and task.num_workers >= 0; got "
                f"{self.batch_size=}, {self.num_workers=}."
            )
        if self.modalities is not None:
            names = list(self.modalities)
            unknown = [m for m in names if m not in schema.MODALITIES]
            if unknown or len(set(names)) != len(names):
                raise DambenchInputError(
                    f"task.modalities={names} must be distinct names among "
                    f"{list(schema.MODALITIES)}; unknown: {unknown}."
                )


FREEZABLE = ("host",)
"""Parts of a model ``train.freeze`` can name: ``host`` is every parameter of a multi-modal
model (``multi_*``) outside its adapter."""


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Which registered model, with which constructor arguments (``in_chans`` is filled from the
    data when absent, and from the loader a multi-modal model's ``modalities`` and the
    ``modality_chans`` count of a model that takes one, e.g. SLAMS: a value set here must
    agree with the data, or the run is refused naming both).

    Attributes
    ----------
    init_from
        A checkpoint written by ``baselines/train.py`` (``best.pt``) whose ``model`` weights
        start this run: one of the same model, or of the host of a ``multi_*`` model (then only
        the adapter starts fresh, with zero heads, so training starts from the host's
        analysis). Its channels, normalisation and host kwargs must be this run's.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation: AdamW with the paper's schedule (linear warm-up from ``lr_start`` to
    ``lr_peak`` over ``warmup_fraction`` of the steps, cosine decay to ``lr_end``).

    A model may replace AdamW with a ``configure_optimizers(train_config)`` method returning an
    optimiser; the schedule then sets each group's ``lr`` to the scheduled rate times the
    group's ``lr_scale`` (default 1).

    Attributes
    ----------
    ema_decay
        Keep an exponential moving average of the weights with this decay (e.g. 0.999;
        ``None``: none). The averaged weights are validated, evaluated and saved as the
        checkpoint's ``model``; the raw weights are kept for resuming.
    sample_every, sample_batches, sample_members
        Every ``sample_every`` epochs (``None``: never) also run the model's inference step
        (``analyse``, with ``members`` for ensemble models) on the first ``sample_batches``
        validation batches and log its MSE; per-epoch validation otherwise uses only the loss
        diagnostics (no sampler run per batch).
    select_by, select_every, select_members
        How ``best.pt`` is chosen: by the benchmark's own validation metric, never a test-split
        number. ``"mse"``: MSE of the analysis mean on normalised fields over the whole
        validation split; ``"crps"``: the fair CRPS of ``select_members`` members (default
        ``sample_members``, else 4), also on normalised fields; ``"loss"``: the validation loss
        (the behaviour before; a beta-NLL rewards the predicted spread, so it can pick an epoch
        whose mean barely moved). ``None``: ``"crps"`` for ensemble models, else ``"mse"``.
        The metric is computed every ``select_every`` epochs and at the last epoch.
    max_steps_per_epoch
        Stop each epoch after this many optimiser steps (``None``: the whole loader).
    freeze
        Parts of the model not trained, among :data:`FREEZABLE` (``[host]``: only a multi-modal
        model's adapter learns; the host's layers stay in eval mode). Needs
        ``model.init_from``: a frozen untrained host is refused.
    """

    epochs: int = 1
    lr_start: float = 1e-5
    lr_peak: float = 1e-4
    lr_end: float = 3e-6
    warmup_fraction: float = 1 / 6
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    amp: bool = True
    seed: int = 0
    max_steps_per_epoch: int | None = None
    ema_decay: float | None = None
    sample_every: int | None = None
    sample_batches: int = 1
    sample_members: int | None = None
    select_by: str | None = None
    select_every: int = 1
    select_members: int | None = None
    freeze: list[str] = field(default_factory=list)
    out: str = "runs/default"

    def __post_init__(self) -> None:
        problems = {
            "train.epochs must be >= 1": self.epochs < 1,
            "train.warmup_fraction must lie in [0, 1)": not 0 <= self.warmup_fraction < 1,
            "learning rates must be positive": not (
                self.lr_start > 0 and self.lr_peak > 0 and self.lr_end > 0
            ),
            "train.ema_decay must lie in (0, 1) or be null": self.ema_decay is not None
            and not 0 < self.ema_decay < 1,
            "train.sample_every must be >= 1 or null": self.sample_every is not None
            and self.sample_every < 1,
            "train.sample_batches must be >= 1": self.sample_batches < 1,
            "train.sample_members must be >= 1 or null": self.sample_members is not None
            and self.sample_members < 1,
            f"train.select_by must be one of {list(SELECT_BY)} or null": self.select_by
            is not None
            and self.select_by not in SELECT_BY,
            "train.select_every must be >= 1": self.select_every < 1,
            "train.select_members must be >= 2 or null": self.select_members is not None
            and self.select_members < 2,
            "train.max_steps_per_epoch must be >= 1 or null": self.max_steps_per_epoch is not None
            and self.max_steps_per_epoch < 1,
            f"train.freeze must be a list of distinct names among {list(FREEZABLE)}": not (
                isinstance(self.freeze, list)
                and set(self.freeze) <= set(FREEZABLE)
                and len(set(self.freeze)) == len(self.freeze)
            ),
        }
        failed = [message for message, bad in problems.items() if bad]
        if failed:
            raise DambenchInputError("; ".join(failed) + f". Got {self}.")


SELECT_BY = ("mse", "crps", "loss")
"""Checkpoint selection metrics (:class:`TrainConfig` ``select_by``)."""


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The whole configuration of a training run."""

    task: TaskConfig
    model: ModelConfig
    train: TrainConfig

    def __post_init__(self) -> None:
        if "host" in self.train.freeze and self.model.init_from is None:
            raise DambenchInputError(
                "train.freeze: [host] freezes an untrained host: set model.init_from to a "
                "trained host checkpoint (best.pt), or train from scratch without train.freeze."
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"task": TaskConfig, "model": ModelConfig, "train": TrainConfig}


def _strict(cls, values: dict[str, Any], section: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise DambenchInputError(
            f"Unknown keys in {section}: {sorted(unknown)}; known: {sorted(known)}."
        )
    return cls(**values)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=2"`` -> (["train", "epochs"], 2), the value parsed as YAML."""
    import yaml

    if "=" not in text:
        raise DambenchInputError(f"Override {text!r} must look like section.key=value.")
    key, value = text.split("=", 1)
    return key.split("."), yaml.safe_load(value)


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config, apply dotted ``overrides``, and validate every section."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise DambenchInputError(
            f"Unknown sections {sorted(unknown)} in {path}; use {list(_SECTIONS)}."
        )
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    if "model" not in raw:
        raise DambenchInputError(f"{path} needs a model section with a name.")
    return RunConfig(
        **{name: _strict(cls, raw.get(name, {}), name) for name, cls in _SECTIONS.items()}
    )
