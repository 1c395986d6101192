"""The local-global Swin U-Net ("LGUnet") of VAE-Var's encoder and decoder.

Reference
    Xiao et al. (2025), "VAE-Var: Variational autoencoder-enhanced variational methods for data
    assimilation in meteorology", ICLR 2025, https://openreview.net/forum?id=AfJQdFbyhW; upstream
    ``xiaoyi018/VAE-Var`` (``nf_model``; no licence). Written from
    ``shared/reference/baselines.md`` section 5.3; no code copied.

Structure, (B, sum(in_groups), H, W) -> (B, sum(out_groups), H, W)
    The channels are split into variable groups (surface, then one group per upper-air
    variable). Per group, a **local encoder**: a 2 x 2 strided convolution to ``enc_dim``
    (H/2 x W/2) plus a learned position embedding, Swin level 1 (``depths[0]`` blocks,
    ``num_heads[0]``), 2 x 2 patch merging to 2 ``enc_dim`` (H/4 x W/4) and Swin level 2.
    The **global** part concatenates every group's level-2 tokens, maps them linearly to
    ``embed_dim``, adds a position embedding and runs ``len(global_depths)`` Swin stages at that
    width; a linear map splits the result back into one 2 ``enc_dim`` map per group. Per group, a
    **local decoder** mirrors the encoder: concatenation with the level-2 skip, a linear squeeze,
    Swin level 2, patch expansion to H/2 x W/2, concatenation with the level-1 skip, a squeeze,
    Swin level 1, LayerNorm and the **patch recovery** to H x W and the group's output channels
    (``recovery``):

    - ``"resize_conv"`` (dambench's default): bilinear upsampling by 2 (longitude wrapped) and a
      sphere-padded 3 x 3 convolution. Bilinear interpolation has no response at the grid's
      Nyquist frequency and the convolution is shift-invariant, so the output carries no
      2-periodic pattern of its own.
    - ``"transposed"`` (upstream): a 2 x 2 stride-2 transposed convolution. Each token becomes a
      2 x 2 block of learned weights, so the output is made of 2 x 2 tiles: an untrained decoder
      puts hundreds of times more power at the longitude Nyquist than at its neighbours
      (issue 17), and a trained one keeps grid-scale noise.

Grid
    The two halvings need H and W divisible by 4: the input is padded on the sphere with
    :func:`~baselines.layers.sphere_pad.pad_to_multiple` (121 -> 124 rows) and the output cropped
    back; windows need no divisibility (:mod:`baselines.layers.swin`). The position embeddings
    are built for ``img_size`` and resampled for other grids.

Deviations from upstream
    The patch recovery (above; upstream's transposed convolution stays selectable). Output
    channels are in group order (upstream permutes them: first halves, then second halves,
    which the network learns around); shifted windows wrap in longitude (upstream too)
    and padded latitude tokens are masked.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from baselines.layers.conv import SphereConv2d
from baselines.layers.sphere_pad import crop, pad_sphere, pad_to_multiple
from baselines.layers.swin import PatchExpand, PatchMerging, SwinStage, resample_pos_embed

GRID_MULTIPLE = 4
"""H and W of the padded grid are multiples of this (patch 2, then one 2 x 2 merging)."""
RECOVERIES = ("resize_conv", "transposed")
"""Patch recoveries of the local decoder (module docstring); the first is the default."""


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)


def _fields(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).contiguous()  # (B, H, W, C) -> (B, C, H, W)


def upsample_sphere(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 2 H, 2 W) by bilinear interpolation (``align_corners=False``) on
    the sphere: one row and column of :func:`~baselines.layers.sphere_pad.pad_sphere` padding is
    interpolated through and cropped, so longitude wraps instead of clamping at its ends."""
    padded = pad_sphere(x, 1, 1)  # (B, C, H + 2, W + 2)
    up = F.interpolate(padded, scale_factor=2, mode="bilinear", align_corners=False)
    return up[..., 2:-2, 2:-2]  # (B, C, 2 H, 2 W): padded index 1 is output index 2


class ResizeConvRecovery(nn.Module):
    """Patch recovery without a 2-periodic artefact: :func:`upsample_sphere`, then a
    sphere-padded 3 x 3 convolution, (B, e, H, W) -> (B, c, 2 H, 2 W)."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.conv = SphereConv2d(in_chans, out_chans, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(upsample_sphere(x))


def patch_recovery(in_chans: int, out_chans: int, recovery: str) -> nn.Module:
    """The local decoder's last layer, (B, in_chans, H, W) -> (B, out_chans, 2 H, 2 W), by
    name (:data:`RECOVERIES`)."""
    if recovery == "resize_conv":
        return ResizeConvRecovery(in_chans, out_chans)
    if recovery == "transposed":
        return nn.ConvTranspose2d(in_chans, out_chans, 2, stride=2)
    raise ValueError(f"recovery must be one of {RECOVERIES}; got {recovery!r}.")


class LocalEncoder(nn.Module):
    """One group's encoder: (B, c, H, W) -> level-1 (B, H/2, W/2, e) and level-2 (B, H/4, W/4,
    2e) tokens."""

    def __init__(
        self,
        in_chans: int,
        enc_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        window: Sequence[int],
        grid: tuple[int, int],
    ) -> None:
        super().__init__()
        self.embed = nn.Conv2d(in_chans, enc_dim, 2, stride=2)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] // 2, grid[1] // 2, enc_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.level1 = SwinStage(enc_dim, depths[0], num_heads[0], window)
        self.merge = PatchMerging(enc_dim)
        self.level2 = SwinStage(2 * enc_dim, depths[1], num_heads[1], window)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = _tokens(self.embed(x))  # (B, H/2, W/2, e)
        level1 = self.level1(tokens + resample_pos_embed(self.pos_embed, tokens.shape[1:3]))
        return level1, self.level2(self.merge(level1))  # (B, H/4, W/4, 2e)


class LocalDecoder(nn.Module):
    """One group's decoder: global tokens (B, H/4, W/4, 2e) and the encoder skips -> (B, c, H,
    W)."""

    def __init__(
        self,
        out_chans: int,
        enc_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        window: Sequence[int],
        recovery: str = RECOVERIES[0],
    ) -> None:
        super().__init__()
        self.squeeze2 = nn.Linear(4 * enc_dim, 2 * enc_dim)
        self.level2 = SwinStage(2 * enc_dim, depths[1], num_heads[1], window)
        self.expand = PatchExpand(2 * enc_dim, enc_dim)
        self.squeeze1 = nn.Linear(2 * enc_dim, enc_dim)
        self.level1 = SwinStage(enc_dim, depths[0], num_heads[0], window)
        self.norm = nn.LayerNorm(enc_dim)
        self.recover = patch_recovery(enc_dim, out_chans, recovery)

    def forward(self, x: torch.Tensor, skip1: torch.Tensor, skip2: torch.Tensor) -> torch.Tensor:
        x = self.level2(self.squeeze2(torch.cat([x, skip2], dim=-1)))  # (B, H/4, W/4, 2e)
        x = self.expand(x, skip1.shape[1:3])  # (B, H/2, W/2, e)
        x = self.level1(self.squeeze1(torch.cat([x, skip1], dim=-1)))
        return self.recover(_fields(self.norm(x)))  # (B, c, H, W)


class LGUnet(nn.Module):
    """Local-global Swin U-Net over variable groups (see the module docstring).

    Parameters
    ----------
    in_groups, out_groups
        Channels per group in and out (same number of groups), e.g. [4, 13, 13, 13, 13, 13].
    enc_dim
        Local width at level 1 (level 2: twice this). Upstream: 96.
    depths, num_heads
        Swin blocks and heads of the two local levels. Upstream: (2, 2), (3, 6).
    embed_dim
        Global width. Upstream: 1152.
    global_depths, global_heads
        Blocks per global stage and their heads. Upstream: (4, 4, 4), 6.
    window_size
        (latitude, longitude) window in tokens. Upstream: (4, 4) at 128 x 256.
    img_size
        (H, W) the position embeddings are built for.
    recovery
        The decoders' patch recovery, one of :data:`RECOVERIES` (module docstring). Upstream:
        ``"transposed"``.
    """

    def __init__(
        self,
        in_groups: Sequence[int],
        out_groups: Sequence[int],
        *,
        enc_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        embed_dim: int,
        global_depths: Sequence[int],
        global_heads: int,
        window_size: Sequence[int],
        img_size: Sequence[int],
        recovery: str = RECOVERIES[0],
    ) -> None:
        super().__init__()
        if recovery not in RECOVERIES:
            raise ValueError(f"LGUnet recovery must be one of {RECOVERIES}; got {recovery!r}.")
        if len(in_groups) != len(out_groups) or len(depths) != 2 or len(num_heads) != 2:
            raise ValueError(
                f"LGUnet needs as many input as output groups and two local levels; got "
                f"{in_groups=}, {out_groups=}, {depths=}, {num_heads=}."
            )
        self.in_groups, self.out_groups = list(in_groups), list(out_groups)
        window = tuple(window_size)
        grid = tuple(n + (-n) % GRID_MULTIPLE for n in img_size)
        self.encoders = nn.ModuleList(
            LocalEncoder(c, enc_dim, depths, num_heads, window, grid) for c in in_groups
        )
        width = 2 * enc_dim * len(in_groups)
        self.to_global = nn.Linear(width, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] // 4, grid[1] // 4, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.global_stages = nn.Sequential(
            *(SwinStage(embed_dim, d, global_heads, window) for d in global_depths)
        )
        self.from_global = nn.Linear(embed_dim, width)
        self.decoders = nn.ModuleList(
            LocalDecoder(c, enc_dim, depths, num_heads, window, recovery) for c in out_groups
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, sum(in_groups), H, W) -> (B, sum(out_groups), H, W), any H, W >= 4."""
        if x.shape[1] != sum(self.in_groups):
            raise ValueError(
                f"LGUnet expects {sum(self.in_groups)} channels (groups {self.in_groups}); got "
                f"{x.shape[1]}."
            )
        padded, pads = pad_to_multiple(x, GRID_MULTIPLE)  # (B, C, H', W'), H' and W' % 4 == 0
        skips = [
            enc(part)
            for enc, part in zip(self.encoders, padded.split(self.in_groups, 1), strict=True)
        ]
        joined = torch.cat([level2 for _, level2 in skips], dim=-1)  # (B, H'/4, W'/4, G 2e)
        tokens = self.to_global(joined)
        tokens = self.global_stages(tokens + resample_pos_embed(self.pos_embed, tokens.shape[1:3]))
        parts = self.from_global(tokens).chunk(len(self.decoders), dim=-1)  # G x (.., 2e)
        out = [
            dec(part, level1, level2)
            for dec, part, (level1, level2) in zip(self.decoders, parts, skips, strict=True)
        ]
        return crop(torch.cat(out, dim=1), pads)  # (B, sum(out_groups), H, W)
