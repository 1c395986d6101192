"""The encoder / fusion / decoder pattern shared by the neural-process baselines (ConvCNP, FNP).

Both models encode the observations (with their mask) and the background (with an all-ones
mask) by two encoders of the same structure with separate weights, fuse the two
representations pointwise, and decode a per-pixel Gaussian with pointwise MLPs:

:class:`SetConvEncoder`
    The on-grid SetConv (:class:`~baselines.layers.conv.SetConvEmbed`) followed by ``depth``
    blocks of the model's choice (ConvCNP: residual CNN blocks; FNP: neural Fourier blocks).
:class:`ObservationBackgroundFusion`
    The two encoders and the pointwise fusion ``[r_obs, r_bg]`` (2r) -> r. Its
    ``observation representation`` ``r_obs`` is where a multi-modal adapter's context enters
    (``ModelInfo.adapter_entry = "observation_representation"``): ``encode(...,
    obs_context=context.entry(slot))`` adds it before the fusion.
:class:`GaussianDecoder`
    Pointwise MLP(s) from features to a raw mean and a raw std per channel: one MLP for both
    (upstream), or with ``detach_std`` a second MLP for the std on detached features, so that
    only the mean's loss shapes the encoders.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from baselines.layers.conv import PointwiseMLP, SetConvEmbed


class SetConvEncoder(nn.Module):
    """SetConv embedding followed by ``depth`` blocks made by ``make_block``.

    (B, C, H, W) values and mask -> (B, embed_dim, H, W).

    Parameters
    ----------
    in_chans
        Channels C of the values and the mask.
    embed_dim
        Width r of the representation.
    setconv_kernel_size
        Odd kernel of the positive SetConv.
    make_block
        Builds one (B, r, H, W) -> (B, r, H, W) block; called ``depth`` times after the
        embedding is built (parameter initialisation follows that order).
    depth
        Number of blocks.
    depthwise
        One SetConv kernel per channel (True) or a full C -> C positive convolution (FNP's
        all-variable branch).
    """

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        setconv_kernel_size: int,
        make_block: Callable[[], nn.Module],
        depth: int,
        *,
        depthwise: bool = True,
    ) -> None:
        super().__init__()
        self.embed = SetConvEmbed(in_chans, embed_dim, setconv_kernel_size, depthwise=depthwise)
        self.blocks = nn.Sequential(*(make_block() for _ in range(depth)))

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) values and mask -> (B, embed_dim, H, W)."""
        return self.blocks(self.embed(values, mask))


class ObservationBackgroundFusion(nn.Module):
    """An observation encoder and a background encoder (same structure, separate weights) fused
    pointwise: ``fuse([r_obs, r_bg])``, (B, 2r, H, W) -> (B, r, H, W).

    Parameters
    ----------
    make_encoder
        Builds one encoder ``(values, mask) -> (B, r, H, W)``; called twice.
    embed_dim
        Width r of the representations.
    """

    def __init__(self, make_encoder: Callable[[], nn.Module], embed_dim: int) -> None:
        super().__init__()
        self.obs_encoder = make_encoder()
        self.bg_encoder = make_encoder()
        self.fuse = nn.Conv2d(2 * embed_dim, embed_dim, 1)

    def encode(
        self,
        observation: torch.Tensor,
        mask: torch.Tensor,
        background: torch.Tensor,
        obs_context: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(fused, r_obs, r_bg), each (B, r, H, W), from (B, C, H, W) observation (0 where
        unobserved), mask (1 where observed) and background. ``obs_context`` (the adapter
        entry, :meth:`baselines.layers.adapter.AdapterContext.entry`) maps ``r_obs`` to
        ``r_obs + context`` before the fusion."""
        r_obs = self.obs_encoder(observation, mask)  # (B, r, H, W)
        if obs_context is not None:
            r_obs = obs_context(r_obs)  # (B, r, H, W): the multi-modal context enters here
        r_bg = self.bg_encoder(background, torch.ones_like(background))  # (B, r, H, W)
        fused = self.fuse(torch.cat([r_obs, r_bg], dim=1))  # (B, r, H, W)
        return fused, r_obs, r_bg

    def forward(
        self,
        observation: torch.Tensor,
        mask: torch.Tensor,
        background: torch.Tensor,
        obs_context: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The fused representation (B, r, H, W) (``obs_context`` as in :meth:`encode`)."""
        return self.encode(observation, mask, background, obs_context)[0]


class GaussianDecoder(nn.Module):
    """Pointwise decoder of a per-pixel Gaussian: (B, F, H, W) features -> raw mean and raw std,
    each (B, c, H, W).

    Parameters
    ----------
    in_features, hidden, out_chans, depth
        Input width F, hidden width, output channels c and hidden layers of the MLP(s)
        (:class:`~baselines.layers.conv.PointwiseMLP`).
    detach_std
        A separate MLP for the std on detached features (False: one MLP with 2c outputs, the
        first c the mean, upstream).
    zero_mean
        Initialise the mean outputs to exactly 0 (a residual head then starts at the
        background).
    """

    def __init__(
        self,
        in_features: int,
        hidden: int,
        out_chans: int,
        depth: int,
        *,
        detach_std: bool = False,
        zero_mean: bool = False,
    ) -> None:
        super().__init__()
        outputs = out_chans if detach_std else 2 * out_chans
        self.mlp = PointwiseMLP(in_features, hidden, outputs, depth)
        self.std_mlp = PointwiseMLP(in_features, hidden, out_chans, depth) if detach_std else None
        if zero_mean:
            self.mlp.zero_outputs(out_chans)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F, H, W) -> (raw mean, raw std), each (B, c, H, W)."""
        if self.std_mlp is None:
            raw_mean, raw_std = self.mlp(features).chunk(2, dim=1)  # 2 x (B, c, H, W)
            return raw_mean, raw_std
        # the std learns from the features without shaping them
        return self.mlp(features), self.std_mlp(features.detach())
