"""Training configurations: YAML loaded strictly (unknown keys are errors) into frozen dataclasses.

A config file has three sections::

    task:  {dataset: era5-sample, batch_size: 1, num_workers: 0, patch: null}
    model: {name: convcnp_small, kwargs: {}}
    train: {epochs: 3, lr_peak: 1.0e-4, ..., seed: 0, out: runs/convcnp_small}

Command-line overrides use dotted keys: ``train.epochs=2 model.kwargs.embed_dim=32``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """What to learn from: the dataset (name, folder or URL) and how batches are made."""

    dataset: str = "era5-sample"
    batch_size: int = 1
    num_workers: int = 0
    patch: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError("task.batch_size must be >= 1 and task.num_workers >= 0.")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Which registered model, with which constructor arguments (``in_chans`` is filled from the
    data when absent)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation: AdamW with the paper's schedule (linear warm-up from ``lr_start`` to
    ``lr_peak`` over ``warmup_fraction`` of the steps, cosine decay to ``lr_end``)."""

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
    out: str = "runs/default"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError("train.epochs must be >= 1.")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError("train.warmup_fraction must lie in [0, 1).")
        if not (self.lr_start > 0 and self.lr_peak > 0 and self.lr_end > 0):
            raise ValueError("learning rates must be positive.")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The whole configuration of a training run."""

    task: TaskConfig
    model: ModelConfig
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"task": TaskConfig, "model": ModelConfig, "train": TrainConfig}


def _strict(cls, values: dict[str, Any], section: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"Unknown keys in {section}: {sorted(unknown)}; known: {sorted(known)}.")
    return cls(**values)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=2"`` -> (["train", "epochs"], 2), the value parsed as YAML."""
    import yaml

    if "=" not in text:
        raise ValueError(f"Override {text!r} must look like section.key=value.")
    key, value = text.split("=", 1)
    return key.split("."), yaml.safe_load(value)


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config, apply dotted ``overrides``, and validate every section."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise ValueError(f"Unknown sections {sorted(unknown)} in {path}; use {list(_SECTIONS)}.")
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    if "model" not in raw:
        raise ValueError(f"{path} needs a model section with a name.")
    return RunConfig(
        **{name: _strict(cls, raw.get(name, {}), name) for name, cls in _SECTIONS.items()}
    )
