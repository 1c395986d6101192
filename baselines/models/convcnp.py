"""ConvCNP on the grid: a convolutional conditional neural process for data assimilation.

Paper
    Gordon, Bruinsma, Foong, Requeima, Dubois, Turner (2020), "Convolutional Conditional Neural
    Processes", ICLR 2020, https://arxiv.org/abs/1910.13556. The on-grid form (SetConv as a
    normalised positive convolution with a density channel, a ResNet-style CNN, a pointwise
    Gaussian decoder) is the one of the paper's image experiments.
Upstream code
    ``cambridge-mlg/convcnp`` (1-D only), the 2-D ``GridConvCNP`` of ``YannDubs/Neural-Process-
    Family`` and the DA variant used as a baseline by FNP (``OpenEarthLab/FNP``, ``ConvCNP_model``)
    and DAMBench (``figerhaowang/DAMBench``, ``models/ConvCNP.py``). This file is written from the
    description in ``shared/reference/baselines.md`` section 3; no code was copied (the upstream
    repositories carry no licence).

Architecture (as the FNP/DAMBench DA variant)
    The encoder / fusion / decoder pattern of :mod:`baselines.layers.np_blocks` (shared with
    FNP). Two encoders with the same structure and separate weights:

    - observation encoder: SetConv of the observations with the observation mask;
    - background encoder: SetConv of the background with an all-ones mask.

    Each encoder is a depthwise positive ``setconv_kernel_size`` convolution (density channel and
    normalised signal, :class:`~baselines.layers.conv.SetConvEmbed`), a pointwise map to
    ``embed_dim`` channels and ``depth`` pre-activation depthwise-separable residual blocks
    (:class:`~baselines.layers.conv.ResConvBlock`, kernel ``kernel_size``). The two
    representations are concatenated and fused pointwise (2r -> r); a pointwise MLP with
    ``decoder_depth`` hidden ReLU layers gives a mean and a raw std per channel;
    ``std = 0.01 + 0.99 softplus(raw)``. Loss: Gaussian negative log-likelihood of the target.
    ``convcnp_full`` (r = 512, 12 blocks, kernel 9, SetConv kernel 11) has 16,477,124 parameters
    at 69 channels, the 16.5 M measured for the upstream model.

Deliberate deviations
    - Padding: every spatial convolution pads on the sphere (periodic longitude, across-the-pole
      latitude, :mod:`baselines.layers.sphere_pad`) instead of zero padding, so the model is
      exactly equivariant to rolls in longitude and has no edge at the poles or the date line.
    - Layout: channels-first (B, C, H, W) on the dataset's 121 x 240 grid, no resize to
      128 x 256; the observations share the background's grid, so the upstream bilinear resize of
      the observation representation is the identity and is left out.
    - Loss: the NLL is averaged over all elements (upstream sums over pixels and channels and
      averages over the batch); the minimiser is the same, the scale no longer depends on the grid.
    - ``residual=True`` (used by ``convcnp_small`` only) predicts the mean as an increment on the
      background; upstream ConvCNP (and ``convcnp_full``/``convcnp_tiny``) has no residual. It
      makes the minutes-long CPU run of the small variant start from the background (the
      increment's last layer is zero-initialised, so the untrained model returns the background).
    - Training of the CPU-sized ``*_small`` configs: ``nll_beta=1`` and ``detach_std=True``.
      Measured on era5-sample: with the plain NLL the shared features learn the std first (small
      next to observations) and the mean stays at the background for 100+ steps; with beta-NLL
      (beta = 1) and a std decoder on detached features the mean learns as fast as under an MSE
      loss while the model still predicts a std. The ``*_full`` configs keep the upstream NLL.
    - ``norm_layer`` and ``act_layer`` are options (upstream: BatchNorm, ReLU).
    - ``batch.modalities`` are ignored by ConvCNP itself. The multi-modal adapter
      (``multi_convcnp_*``, :mod:`baselines.models.multi`) adds its context to the observation
      representation ``r_obs`` (one slot of ``embed_dim`` channels, :meth:`adapter_slots`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from baselines.interface import Analysis, BaselineModule, DABatch, ModelInfo
from baselines.layers.adapter import adapter_context
from baselines.layers.conv import ActName, NormName, ResConvBlock
from baselines.layers.gaussian import (
    MIN_STD,
    GaussianHead,
    GaussianPredictive,
    check_batch,
)
from baselines.layers.np_blocks import GaussianDecoder, ObservationBackgroundFusion, SetConvEncoder
from baselines.registry import register_variants

__all__ = ["ConvCNP", "convcnp_encoder"]


# --- building blocks ---------------------------------------------------------------------------


def convcnp_encoder(
    in_chans: int,
    embed_dim: int,
    depth: int,
    kernel_size: int,
    setconv_kernel_size: int,
    *,
    act_layer: ActName = "relu",
    norm_layer: NormName = "batch",
) -> SetConvEncoder:
    """SetConv embedding followed by ``depth`` residual CNN blocks.

    (B, C, H, W) values and mask -> (B, embed_dim, H, W).

    Parameters
    ----------
    in_chans
        Number of channels C.
    embed_dim
        Width r of the representation.
    depth
        Number of :class:`~baselines.layers.conv.ResConvBlock`.
    kernel_size
        Odd kernel of the CNN's depthwise convolutions.
    setconv_kernel_size
        Odd kernel of the positive SetConv.
    act_layer, norm_layer
        Activation and normalisation of the residual blocks.
    """

    def block() -> nn.Module:
        return ResConvBlock(embed_dim, kernel_size, act_layer=act_layer, norm_layer=norm_layer)

    return SetConvEncoder(in_chans, embed_dim, setconv_kernel_size, block, depth)


# --- model -------------------------------------------------------------------------------------


class ConvCNP(GaussianPredictive, BaselineModule):
    """On-grid ConvCNP: observation and background encoders, pointwise fusion and decoder.

    Parameters
    ----------
    in_chans
        Number of channels C of background, observation, mask and target.
    embed_dim
        Representation width r (upstream: 512 in DAMBench/FNP at 128 x 256, 128 at 0.25 deg).
    depth
        Residual blocks per encoder (upstream: 12).
    kernel_size
        Odd kernel of the depthwise convolutions in the residual blocks (upstream: 9).
    setconv_kernel_size
        Odd kernel of the positive SetConv (upstream: 11).
    decoder_depth
        Hidden layers (width r) of the pointwise decoder MLP (upstream: 4).
    act_layer, norm_layer
        Activation (``"relu"``, ``"silu"``, ``"gelu"``) and normalisation (``"batch"``,
        ``"group"``, ``"none"``) of the residual blocks (upstream: ReLU, BatchNorm).
    residual
        Predict the mean as ``background + decoder output`` (not upstream; see the module notes).
    min_std
        Lower bound of the predicted std (normalised units).
    nll_beta
        beta of the beta-NLL training loss (0: the plain Gaussian NLL, upstream; see
        :func:`~baselines.layers.gaussian.gaussian_loss`).
    detach_std
        Predict the std with its own pointwise decoder on detached features, so that only the
        mean's loss trains the encoders (False: one decoder for both, upstream).

    Notes
    -----
    Fully convolutional with sphere padding: any (H, W) with H > ``setconv_kernel_size // 2``.
    """

    def __init__(
        self,
        in_chans: int = 69,
        embed_dim: int = 128,
        depth: int = 12,
        kernel_size: int = 9,
        setconv_kernel_size: int = 11,
        decoder_depth: int = 4,
        act_layer: ActName = "relu",
        norm_layer: NormName = "batch",
        residual: bool = False,
        min_std: float = MIN_STD,
        nll_beta: float = 0.0,
        detach_std: bool = False,
    ) -> None:
        super().__init__()
        if in_chans < 1 or embed_dim < 1 or depth < 0:
            raise ValueError(
                f"ConvCNP needs in_chans >= 1, embed_dim >= 1, depth >= 0; got {in_chans=}, "
                f"{embed_dim=}, {depth=}."
            )
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.residual = residual
        encoder_args: dict[str, Any] = {
            "in_chans": in_chans,
            "embed_dim": embed_dim,
            "depth": depth,
            "kernel_size": kernel_size,
            "setconv_kernel_size": setconv_kernel_size,
            "act_layer": act_layer,
            "norm_layer": norm_layer,
        }
        self.encoder = ObservationBackgroundFusion(
            lambda: convcnp_encoder(**encoder_args), embed_dim
        )
        self.decoder = GaussianDecoder(
            embed_dim,
            embed_dim,
            in_chans,
            decoder_depth,
            detach_std=detach_std,
            zero_mean=residual,  # the increment starts at 0: the background
        )
        self.head = GaussianHead(min_std)
        self.nll_beta = nll_beta

    def adapter_slots(self) -> tuple[int, ...]:
        """Channels of the adapter entry (``ModelInfo.adapter_entry``): the observation
        representation r_obs, (B, embed_dim, H, W)."""
        return (self.embed_dim,)

    def forward_features(self, batch: DABatch) -> torch.Tensor:
        """The fused representation (B, embed_dim, H, W) of observations and background (with
        an attached adapter's context added to the observation representation)."""
        check_batch(batch, self.in_chans, type(self).__name__)
        context = adapter_context(self, batch)  # NO_CONTEXT without an adapter: adds nothing
        return self.encoder(
            batch.observation, batch.mask, batch.background, obs_context=context.entry(0)
        )  # (B, r, H, W)

    def forward_head(self, features: torch.Tensor, background: torch.Tensor) -> Analysis:
        """(B, r, H, W) features -> Analysis with mean and std (B, C, H, W)."""
        raw_mean, raw_std = self.decoder(features)  # 2 x (B, C, H, W)
        if self.residual:
            raw_mean = raw_mean + background
        mean, std = self.head(raw_mean, raw_std)
        return Analysis(mean=mean, std=std)

    def forward(self, batch: DABatch) -> Analysis:
        """The analysis of a batch.

        Parameters
        ----------
        batch
            ``background``, ``observation`` (0 where unobserved) and ``mask`` (1 where observed),
            each (B, C, H, W) in normalised units; ``modalities`` (B, M, H, W) and
            ``modality_present`` (B, M) are read only by an attached adapter.

        Returns
        -------
        Analysis
            ``mean`` and ``std`` (B, C, H, W): the per-pixel Gaussian predictive.
        """
        return self.forward_head(self.forward_features(batch), batch.background)


# --- registered variants (configs as data) ------------------------------------------------------

INFO = ModelInfo(
    output="gaussian",
    trainable=True,
    adapter_entry="observation_representation",
    paper="Gordon et al. (2020), Convolutional Conditional Neural Processes, ICLR, "
    "https://arxiv.org/abs/1910.13556",
    code="https://github.com/OpenEarthLab/FNP (ConvCNP_model)",
    code_licence="none (no licence file)",
)

register_variants(
    ConvCNP,
    {
        "convcnp_tiny": (
            "CPU-test size: r = 16, 1 block, kernels 5, 2-layer decoder (4,576 parameters, C = 4).",
            dict(
                in_chans=4,
                embed_dim=16,
                depth=1,
                kernel_size=5,
                setconv_kernel_size=5,
                decoder_depth=2,
            ),
        ),
        "convcnp_small": (
            "CPU-training size: r = 32, 2 blocks, kernel 9, SetConv 11, residual on the background",
            dict(
                in_chans=4,
                embed_dim=32,
                depth=2,
                kernel_size=9,
                setconv_kernel_size=11,
                decoder_depth=4,
                residual=True,
            ),
        ),
        "convcnp_full": (
            "Published size (FNP/DAMBench baseline): r = 512, 12 blocks, kernel 9, SetConv 11, "
            "BatchNorm, ReLU, no residual; 16.48 M parameters at 69 channels.",
            dict(
                in_chans=69,
                embed_dim=512,
                depth=12,
                kernel_size=9,
                setconv_kernel_size=11,
                decoder_depth=4,
            ),
        ),
    },
    info=INFO,
)
