"""A per-pixel Gaussian predictive distribution: the head, its negative log-likelihood, samples.

Used by the conditional neural-process baselines (ConvCNP, FNP), whose predictive is a product of
independent Normals, one per (channel, latitude, longitude); :func:`check_batch` is their shared
input check.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from baselines.interface import Analysis, DABatch, LossAndDiagnostics
from dambench.exceptions import DambenchInputError

MIN_STD = 0.01
"""Default lower bound of the predicted std (normalised units), as upstream ConvCNP/FNP."""
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class GaussianHead(nn.Module):
    """Split raw outputs into a mean and a positive std.

    ``std = min_std + (1 - min_std) * softplus(raw_std)`` (computed in float32), so
    ``std >= min_std`` and the gradient never vanishes for large negative ``raw_std``.

    Parameters
    ----------
    min_std
        Lower bound of the std, in (0, 1).
    """

    def __init__(self, min_std: float = MIN_STD) -> None:
        super().__init__()
        if not 0.0 < min_std < 1.0:
            raise ValueError(f"min_std must be in (0, 1); got {min_std=}.")
        self.min_std = min_std

    def forward(
        self, raw_mean: torch.Tensor, raw_std: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) raw mean and raw std -> (mean, std), both (B, C, H, W)."""
        std = self.min_std + (1.0 - self.min_std) * F.softplus(raw_std.float())
        return raw_mean, std.to(raw_mean.dtype)

    def extra_repr(self) -> str:
        return f"min_std={self.min_std}"


def gaussian_nll(mean: torch.Tensor, std: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Elementwise Gaussian negative log-likelihood, float32, same shape as the inputs.

    ``-log N(y | mu, sigma) = log sigma + (y - mu)^2 / (2 sigma^2) + log(2 pi) / 2``.
    """
    mean, std, target = mean.float(), std.float(), target.float()
    return torch.log(std) + 0.5 * ((target - mean) / std) ** 2 + _HALF_LOG_2PI


def check_batch(batch: DABatch, in_chans: int, model: str) -> None:
    """Raise :class:`~dambench.exceptions.DambenchInputError` unless background, observation
    and mask are (B, ``in_chans``, H, W) tensors of one shape."""
    background = batch.background
    if background.ndim != 4 or background.shape[1] != in_chans:
        found = background.shape[1] if background.ndim == 4 else "?"
        raise DambenchInputError(
            f"{model} expects batch.background of shape (B, {in_chans}, H, W); got "
            f"{tuple(background.shape)}. Build the model with in_chans={found}."
        )
    for name in ("observation", "mask"):
        value = getattr(batch, name)
        if value is None or value.shape != background.shape:
            found = None if value is None else tuple(value.shape)
            raise DambenchInputError(
                f"{model} expects batch.{name} shaped like the background "
                f"{tuple(background.shape)}; got {found}."
            )


def gaussian_loss(analysis: Analysis, batch: DABatch, beta: float = 0.0) -> LossAndDiagnostics:
    """Mean Gaussian NLL of ``batch.target`` under ``analysis`` (mean, std), with diagnostics.

    Parameters
    ----------
    beta
        beta-NLL weighting (Seitzer et al. 2022, "On the Pitfalls of Heteroscedastic Uncertainty
        Estimation with Probabilistic Neural Networks", ICLR): each element's NLL is multiplied
        by ``std ** (2 beta)`` with the gradient stopped through the weight. ``0`` is the plain
        NLL (upstream ConvCNP/FNP); ``1`` gives the mean the gradient of the MSE. With the plain
        NLL the shared features first learn where the error is small (near observations) and
        the mean can stall at the background for hundreds of steps; ``0.5`` avoids that.

    Returns
    -------
    LossAndDiagnostics
        ``loss``: the (beta-weighted) NLL averaged over every (sample, channel, latitude,
        longitude) element; diagnostics ``nll`` (the plain NLL), ``mse`` of the mean,
        ``mean_std`` (mean predicted std) and ``z2`` (mean squared standardised error, 1 for a
        calibrated std).
    """
    if batch.target is None:
        raise DambenchInputError("loss needs batch.target (the truth x*); it is None.")
    if analysis.std is None:
        raise DambenchInputError("gaussian_loss needs an Analysis with a std.")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1]; got {beta=}.")
    elementwise = gaussian_nll(analysis.mean, analysis.std, batch.target)
    nll = elementwise.mean()
    loss = nll
    if beta > 0.0:
        loss = (elementwise * analysis.std.detach().float() ** (2.0 * beta)).mean()
    with torch.no_grad():
        error = analysis.mean.float() - batch.target.float()
        std = analysis.std.float()
        diagnostics = {
            "nll": float(nll),
            "mse": float((error**2).mean()),
            "mean_std": float(std.mean()),
            "z2": float(((error / std) ** 2).mean()),
        }
    return LossAndDiagnostics(loss=loss, diagnostics=diagnostics)


def gaussian_sample(
    analysis: Analysis, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` draws from the factorised Normal, (n, B, C, H, W).

    Each pixel and channel is drawn independently (the neural-process predictive has no spatial
    covariance), so samples are noisier than real fields at the grid scale.
    """
    if n < 1:
        raise DambenchInputError(f"sample needs n >= 1; got {n=}.")
    if analysis.std is None:
        raise DambenchInputError("gaussian_sample needs an Analysis with a std.")
    mean, std = analysis.mean, analysis.std
    noise = torch.randn(
        (n, *mean.shape), generator=generator, device=mean.device, dtype=mean.dtype
    )  # (n, B, C, H, W)
    return mean.unsqueeze(0) + std.unsqueeze(0) * noise


class GaussianPredictive:
    """Mixin for models whose ``forward(batch)`` returns an :class:`Analysis` with a std: the
    training loss (beta-NLL with ``self.nll_beta``), sampling, and an inference step that can
    draw an ensemble from the predictive (an ensemble stand-in for evaluation)."""

    nll_beta: float = 0.0

    def loss(self, batch: DABatch) -> LossAndDiagnostics:
        """Gaussian NLL of ``batch.target`` averaged over elements (beta-weighted when
        ``nll_beta > 0``); diagnostics ``nll``, ``mse``, ``mean_std``, ``z2`` (see
        :func:`gaussian_loss`)."""
        return gaussian_loss(self(batch), batch, beta=self.nll_beta)

    @torch.no_grad()
    def sample(
        self, batch: DABatch, n: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` draws (n, B, C, H, W) from the factorised predictive (spatially independent)."""
        return gaussian_sample(self(batch), n, generator)

    @torch.no_grad()
    def analyse(self, batch: DABatch, *, members: int | None = None, seed: int = 0) -> Analysis:
        """The predictive mean and std; with ``members=N`` also N draws (B, N, C, H, W) from a
        generator seeded with ``seed`` (the mean and std stay the predictive's own)."""
        analysis = self(batch)
        if members is None:
            return analysis
        generator = torch.Generator(device=analysis.mean.device).manual_seed(seed)
        draws = gaussian_sample(analysis, members, generator)  # (N, B, C, H, W)
        return Analysis(mean=analysis.mean, std=analysis.std, members=draws.transpose(0, 1))
