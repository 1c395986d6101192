"""The contract every baseline shares: a batch in, an analysis out, a loss with diagnostics.

All tensors are in normalised units (per-channel z-scores of the dataset's train split) on the
dataset's grid, ``(batch, channel, latitude, longitude)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch


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
        (B, M, H, W) extra observations (precipitation, OLR), 0 where absent.
    modality_present
        (B, M) float, 1 where the modality exists for that sample.
    """

    background: torch.Tensor
    observation: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor | None = None
    modalities: torch.Tensor | None = None
    modality_present: torch.Tensor | None = None

    def to(self, device: Any, dtype: torch.dtype | None = None) -> DABatch:
        """The batch on ``device`` (floating tensors cast to ``dtype`` when given)."""
        moved = {
            name: None if value is None else value.to(device=device, dtype=dtype)
            for name, value in self.__dict__.items()
        }
        return replace(self, **moved)

    @classmethod
    def from_loader(cls, batch: dict[str, torch.Tensor]) -> DABatch:
        """From a ``dambench.batching`` DataLoader batch (a dict with the same keys)."""
        names = ("background", "observation", "mask", "target", "modalities", "modality_present")
        return cls(**{name: batch.get(name) for name in names})

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
    """A model's output: the analysis mean (B, C, H, W) and, for probabilistic models, its
    standard deviation (B, C, H, W)."""

    mean: torch.Tensor
    std: torch.Tensor | None = None
