"""The contract every baseline shares: a batch in, an analysis out, a loss with diagnostics.

All tensors are in normalised units (per-channel z-scores of the dataset's train split) on the
dataset's grid, ``(batch, channel, latitude, longitude)``.

A baseline is a ``torch.nn.Module`` registered with a :class:`ModelInfo` (its capabilities as
data, :func:`baselines.registry.model_info`). It provides

``forward(batch) -> Analysis``
    the differentiable training-time pass (deterministic and Gaussian models: the analysis);
``loss(batch) -> LossAndDiagnostics``
    the training objective (``info.trainable``) or an evaluation score without a gradient;
``analyse(batch, *, members=None, seed=0) -> Analysis``
    the inference step used by evaluation. It **owns its grad mode**: the default
    (:class:`BaselineModule`) runs ``forward`` under ``torch.no_grad()``; a model that optimises
    at analysis time (VAE-Var) turns gradients on inside, whatever the caller's mode. Ensemble
    models (``info.output == "ensemble"``) return ``members`` (B, N, C, H, W) drawn from
    ``seed`` and their mean;
``fit(dataset, stats, *, verbose=False)`` (only when ``info.needs_fit``)
    statistics estimated on the **train split** before training or evaluation (3D-Var's B,
    VAE-Var's error scale), kept in the module's buffers so that ``state_dict`` (and so every
    checkpoint) carries them; returns the model. ``train.py`` calls it before training;
    evaluation calls it before analysing.
``configure_optimizers(train_config)`` (optional)
    the optimiser to train with instead of AdamW (param groups may carry an ``lr_scale``
    applied to the scheduled rate).

``tests/baselines/test_contract_models.py`` checks all of this on every registered ``*_tiny``
model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from dambench.exceptions import DambenchInputError

OutputKind = Literal["deterministic", "gaussian", "ensemble"]
OUTPUT_KINDS: tuple[str, ...] = ("deterministic", "gaussian", "ensemble")
_COORDINATES = ("latitude", "longitude")


@dataclass(frozen=True)
class DABatch:
    """One batch of DA tasks.

    Attributes
    ----------
    background
        ``x_b`` (B, C, H, W).
    observation
        ``y`` (B, C, H, W), 0 where unobserved (never NaN).
    mask
        (B, C, H, W) float, 1 where observed.
    target
        ``x*`` (B, C, H, W), absent at inference.
    modalities
        (B, M, H, W) extra observations (precipitation, OLR) in model space, 0 where absent.
    modality_present
        (B, M) float, 1 where the modality exists for that sample.
    latitude, longitude
        (B, H) and (B, W) coordinates in degrees of each sample's window (a patch or the whole
        globe); ``None`` when the loader gives none (then the whole canonical globe is assumed
        only by models whose ``ModelInfo.supports_patches`` is ``False``).
    modality_mask
        (B, M, H, W) float, 1 where a modality's cell holds data (the store's value is finite),
        as the loader sends it; ``None`` in a batch built without one (see
        :meth:`modality_cells`).
    """

    background: torch.Tensor
    observation: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor | None = None
    modalities: torch.Tensor | None = None
    modality_present: torch.Tensor | None = None
    latitude: torch.Tensor | None = None
    longitude: torch.Tensor | None = None
    modality_mask: torch.Tensor | None = None

    def to(self, device: Any, dtype: torch.dtype | None = None) -> DABatch:
        """The batch on ``device`` (floating tensors cast to ``dtype`` when given; coordinates
        keep their dtype)."""
        moved = {
            name: None
            if value is None
            else value.to(device=device, dtype=None if name in _COORDINATES else dtype)
            for name, value in self.__dict__.items()
        }
        return replace(self, **moved)

    @classmethod
    def from_loader(cls, batch: dict[str, torch.Tensor]) -> DABatch:
        """From a ``dambench.batching`` DataLoader batch (a dict with the same keys)."""
        names = (
            "background",
            "observation",
            "mask",
            "target",
            "modalities",
            "modality_present",
            *_COORDINATES,
            "modality_mask",
        )
        return cls(**{name: batch.get(name) for name in names})

    def modality_cells(self) -> torch.Tensor | None:
        """(B, M, H, W) bool: the cells holding data of a modality present in their sample.

        A cell counts where ``modality_mask`` is 1 (the loader's per-cell mask: a value equal
        to the train-split mean, 0 after the z-score, is data) and its sample's
        ``modality_present`` flag is 1. A batch built without ``modality_mask`` falls back to
        the documented encoding of ``modalities`` (0 where absent): a cell counts where its
        value is non-zero, so there a value exactly 0 counts as absent. ``None`` when the
        batch carries no modalities (``None`` or M = 0).

        Raises
        ------
        DambenchInputError
            ``modalities`` is not (B, M, H, W), ``modality_present`` not (B, M), or
            ``modality_mask`` not the shape of ``modalities``.
        """
        values, present, mask = self.modalities, self.modality_present, self.modality_mask
        if values is not None and values.ndim != 4:
            raise DambenchInputError(
                f"batch.modalities must be (B, M, H, W); got shape {tuple(values.shape)}."
            )
        if values is None or values.shape[1] == 0:
            return None
        if present is None or tuple(present.shape) != tuple(values.shape[:2]):
            found = None if present is None else tuple(present.shape)
            raise DambenchInputError(
                f"batch.modality_present must be (B, M) = {tuple(values.shape[:2])}; got {found}."
            )
        if mask is not None and tuple(mask.shape) != tuple(values.shape):
            raise DambenchInputError(
                f"batch.modality_mask must have the shape of batch.modalities "
                f"{tuple(values.shape)}; got {tuple(mask.shape)}."
            )
        cells = values != 0 if mask is None else mask > 0  # (B, M, H, W)
        return cells & (present > 0)[:, :, None, None]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.background.shape)


@dataclass(frozen=True)
class LossAndDiagnostics:
    """A scalar training loss and named float diagnostics (logged as they are)."""

    loss: torch.Tensor
    diagnostics: dict[str, float]


@dataclass(frozen=True)
class Analysis:
    """A model's output.

    Attributes
    ----------
    mean
        The analysis (B, C, H, W); for ensembles the mean over members.
    std
        Per-pixel predictive std (B, C, H, W) of Gaussian models, or the ensemble spread.
    members
        Ensemble members (B, N, C, H, W) of sampling models, else ``None``.
    """

    mean: torch.Tensor
    std: torch.Tensor | None = None
    members: torch.Tensor | None = None

    @classmethod
    def from_members(cls, members: torch.Tensor) -> Analysis:
        """Mean and spread (std over members, ddof 1 when N > 1) of ``members`` (B, N, C, H, W)."""
        if members.ndim != 5:
            raise DambenchInputError(
                f"members must be (B, N, C, H, W); got shape {tuple(members.shape)}."
            )
        std = members.std(dim=1, unbiased=True) if members.shape[1] > 1 else None
        return cls(mean=members.mean(dim=1), std=std, members=members)


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """What a registered model is and can do: the data that scripts dispatch on.

    Attributes
    ----------
    output
        ``"deterministic"`` (``Analysis.mean`` only), ``"gaussian"`` (``mean`` and a per-pixel
        ``std``) or ``"ensemble"`` (``members`` sampled by ``analyse(members=N)``).
    trainable
        Has parameters that ``train.py`` optimises.
    needs_fit
        Needs ``fit(train_dataset, stats)`` on the train split before use.
    supports_patches
        Works on a window of the globe (``DABatch`` carries the window's coordinates); a model
        without it is refused patches by the loader and by ``train.py``.
    uses_modalities
        Reads ``batch.modalities``/``batch.modality_present``.
    adapter_entry
        Where a multi-modal adapter's context enters the model (e.g.
        ``"observation_representation"``), or ``None`` when none is declared.
    paper
        Citation with a link.
    code
        The upstream implementation (URL) or ``"none"``.
    code_licence
        The upstream code's licence as found (e.g. ``"none (no licence file)"``).
    """

    output: OutputKind
    trainable: bool = True
    needs_fit: bool = False
    supports_patches: bool = False
    uses_modalities: bool = False
    adapter_entry: str | None = None
    paper: str
    code: str
    code_licence: str

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_KINDS:
            raise DambenchInputError(
                f"ModelInfo.output={self.output!r}; choose from {OUTPUT_KINDS}."
            )
        flags = ("trainable", "needs_fit", "supports_patches", "uses_modalities")
        texts = ("paper", "code", "code_licence")
        problems = [
            f"{name} must be a bool" for name in flags if type(getattr(self, name)) is not bool
        ]
        problems += [
            f"{name} must be a non-empty string"
            for name in texts
            if not (isinstance(getattr(self, name), str) and getattr(self, name).strip())
        ]
        if not isinstance(self.adapter_entry, str | None):
            problems.append("adapter_entry must be a string or None")
        if problems:
            raise DambenchInputError(f"Invalid ModelInfo ({'; '.join(problems)}): {self}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Baseline(Protocol):
    """The methods every registered model has (see the module docstring)."""

    def forward(self, batch: DABatch) -> Analysis: ...

    def loss(self, batch: DABatch) -> LossAndDiagnostics: ...

    def analyse(self, batch: DABatch, *, members: int | None = None, seed: int = 0) -> Analysis: ...


class BaselineModule(torch.nn.Module):
    """Base class giving the default inference step: ``forward`` without gradients.

    Deterministic and Gaussian models inherit :meth:`analyse` as is; ensemble models and models
    that optimise at analysis time override it.
    """

    def analyse(self, batch: DABatch, *, members: int | None = None, seed: int = 0) -> Analysis:
        """The analysis of ``batch`` (no gradients). ``members`` is refused: this model is not a
        sampler (its ``ModelInfo.output`` is not ``"ensemble"``)."""
        if members is not None:
            raise DambenchInputError(
                f"{type(self).__name__} does not sample ensembles; call analyse() without "
                f"members (got members={members})."
            )
        with torch.no_grad():
            return self(batch)
