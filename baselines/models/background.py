"""The "Background" reference of Table 3: the analysis is the background, no assimilation.

Paper
    DAMBench (Wang et al. 2025, https://arxiv.org/abs/2511.01468), Table 3, first row.
Upstream code
    None: nothing to port.

Deliberate deviations
    None. The model is not trainable (no parameters, ``ModelInfo.trainable`` is ``False``):
    :meth:`Background.loss` returns the background's MSE against the target without a gradient,
    an evaluation score for validation loops. :func:`evaluation_loss` is the same score for any
    non-trainable model (3D-Var uses it too).
"""

from __future__ import annotations

from typing import Any

import torch

from baselines.interface import Analysis, BaselineModule, DABatch, LossAndDiagnostics, ModelInfo
from baselines.registry import register_model
from dambench.exceptions import DambenchInputError

# --- building blocks ---------------------------------------------------------------------------


def evaluation_loss(model: torch.nn.Module, batch: DABatch) -> LossAndDiagnostics:
    """MSE (normalised units) of ``model``'s analysis against ``batch.target``, no gradient.

    The ``loss`` of a model with nothing to train: diagnostics ``mse``, ``mse_background``
    and ``trainable = 0``.
    """
    if batch.target is None:
        raise DambenchInputError(
            f"{type(model).__name__}.loss needs batch.target; this model is not trainable "
            "(trainable=False) and its loss is only an evaluation score."
        )
    with torch.no_grad():
        analysis = model(batch).mean
        mse = torch.mean((analysis - batch.target) ** 2)
        mse_background = torch.mean((batch.background - batch.target) ** 2)
    diagnostics = {"mse": float(mse), "mse_background": float(mse_background), "trainable": 0.0}
    return LossAndDiagnostics(loss=mse.detach(), diagnostics=diagnostics)


# --- model -------------------------------------------------------------------------------------


class Background(BaselineModule):
    """The "no assimilation" reference of Table 3: the analysis is the background.

    Parameters
    ----------
    in_chans, img_size
        When given, a batch with another channel count or (H, W) is refused (a guard against
        scoring the wrong data); ``None`` accepts any.

    Examples
    --------
    >>> batch = DABatch(background=torch.ones(1, 2, 3, 4), observation=torch.zeros(1, 2, 3, 4),
    ...                 mask=torch.zeros(1, 2, 3, 4))
    >>> bool(torch.equal(Background()(batch).mean, batch.background))
    True
    """

    def __init__(
        self, in_chans: int | None = None, img_size: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.img_size = None if img_size is None else tuple(img_size)

    def forward(self, batch: DABatch) -> Analysis:
        """``Analysis(mean=x_b, std=None)``, the background tensor itself (B, C, H, W)."""
        if self.in_chans is not None and batch.background.shape[1] != self.in_chans:
            raise DambenchInputError(
                f"Background was built for in_chans={self.in_chans}; the batch has "
                f"{batch.background.shape[1]} channels."
            )
        if self.img_size is not None and tuple(batch.background.shape[-2:]) != self.img_size:
            raise DambenchInputError(
                f"Background was built for img_size={self.img_size}; the batch is "
                f"{tuple(batch.background.shape[-2:])}."
            )
        return Analysis(mean=batch.background, std=None)

    def loss(self, batch: DABatch) -> LossAndDiagnostics:
        """The background's MSE (normalised units) against ``batch.target``, no gradient."""
        return evaluation_loss(self, batch)


# --- factory and registered variants -----------------------------------------------------------


def _create_background(**kwargs: Any) -> Background:
    return Background(**kwargs)


BACKGROUND_INFO = ModelInfo(
    output="deterministic",
    trainable=False,
    supports_patches=True,
    paper="Wang et al. (2025), DAMBench, Table 3 'Background', https://arxiv.org/abs/2511.01468",
    code="none",
    code_licence="none (no upstream code)",
)


@register_model(info=BACKGROUND_INFO)
def background(**kwargs: Any) -> Background:
    """The background as the analysis (Table 3, first row)."""
    return _create_background(**kwargs)


@register_model(info=BACKGROUND_INFO)
def background_tiny(**kwargs: Any) -> Background:
    """Identical to :func:`background` (it has no size); registered for the tiny-model tests."""
    return _create_background(**kwargs)


@register_model(info=BACKGROUND_INFO)
def background_small(**kwargs: Any) -> Background:
    """Identical to :func:`background`; registered so every size lists the reference."""
    return _create_background(**kwargs)


@register_model(info=BACKGROUND_INFO)
def background_full(**kwargs: Any) -> Background:
    """Identical to :func:`background`; registered so every size lists the reference."""
    return _create_background(**kwargs)
