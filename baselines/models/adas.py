"""Adas: gated cross-attention between background and observation tokens in 3-D windows.

Paper
    Chen, Zhong, Bai, Ling, Ouyang, Wang, Fan, Han (2023), "Towards an end-to-end artificial
    intelligence driven global weather forecasting system" (FengWu-Adas),
    https://arxiv.org/abs/2312.12462.
Upstream code
    ``OpenEarthLab/FengWu-Adas`` (``models/Adas.py``, ``models/modules.py``), the 128 x 256
    variant in ``OpenEarthLab/FNP`` and ``figerhaowang/DAMBench`` (``models/Adas.py``). None has
    a licence; this file is written from the description in ``shared/reference/baselines.md``
    section 2 and copies no code.

Architecture
    Three streams, each patch-embedded on its own weights into 3-D tokens
    (level slice, latitude, longitude): the background, the observations (0 where unobserved)
    and the mask, whose embedding goes through a sigmoid and becomes a confidence (gate) map.
    Upper-air channels form a (variable, level) grid embedded by a Conv3d with the variables as
    input channels and the levels as depth; the surface channels, embedded by a Conv2d, are
    appended as the last level slice. A learned absolute position embedding is added to all
    three streams. A five-stage U-shaped encoder (d, 2d down, 4d down, 2d up + skip, d up +
    skip) applies in every stage a gated convolution (``obs' = SiLU(conv(obs)) * sigmoid(conv(
    gate))``) and two rounds (unshifted, shifted) of gated 3-D window cross-attention
    (``bg <- bg (1 - g) + XBlock(bg g; obs)``, ``obs <- XBlock(obs; bg)``). The streams are fused
    by a Conv3d, refined by a 3-D Swin decoder of ``depth`` blocks, and patch recovery
    (transposed convolutions with the embedding's kernels) gives the analysis. Loss: the
    balanced per-channel L1 ("UnifyMAE", :func:`balanced_l1`).

Channel subsets
    The model takes any channel subset in schema order (:data:`dambench.schema`: surface
    channels first, then the upper-air channels grouped by variable, each variable at the same
    levels): ``surface_chans`` surface channels followed by ``upper_vars`` variables x
    ``levels`` levels, with ``levels = (in_chans - surface_chans) / upper_vars``. era5-sample's
    four surface channels give ``levels = 0``: the level axis then holds only the surface slice
    (depth 1), and the 3-D windows and kernels have depth 1 in effect. 69 channels give the
    paper's 13 levels + surface = 14 slices. ``surface_chans=0`` (upper air only) also works.

Grid
    ``img_size`` fixes the patch kernel and the position embedding: the latitude (longitude)
    kernel is ``p + H mod p`` with stride ``p`` (upstream: ``p + 1`` for odd H), so 121 rows give
    40 token rows at p = 3 and 60 at p = 2, and patch recovery returns exactly H x W. A batch on
    another grid is padded on the sphere to the nearest size with the same remainder, the
    position embedding is resampled to its token grid, and the output is cropped back.

Deliberate deviations
    - Patch expansion crops to the skip connection's size instead of padding (the upstream pad
      corrupts odd token grids, section 2.7): any p works at 121 x 240, including p = 2.
    - Shifted windows wrap periodically in longitude (no mask at the date line); padded tokens
      are masked as keys (:mod:`baselines.layers.swin`). Convolutions pad on the sphere in
      (latitude, longitude) and with zeros along the level axis, instead of zero "same" padding.
    - The gate stream keeps no residual connection (it stays a gate in (0, 1)); background and
      observation streams add their stage input as upstream.
    - Attention heads double with the width (``num_heads`` at d, 2x at 2d, 4x at 4d).
    - ``residual=True`` (``adas_small`` only) adds the background to the output and starts the
      patch recovery at zero, so the untrained model returns the background; upstream outputs the
      full state (``adas_tiny``/``adas_full``).
    - ``batch.modalities`` are ignored by Adas itself. The multi-modal adapter
      (``multi_adas_*``, :mod:`baselines.models.multi`) adds its context to the observation
      stream's tokens right after their patch embedding (one slot of ``embed_dim x levels``
      channels, :meth:`Adas.adapter_slots`), resized from the batch's grid to the token grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from baselines.interface import Analysis, BaselineModule, DABatch, LossAndDiagnostics, ModelInfo
from baselines.layers.adapter import adapter_context
from baselines.layers.channel_layout import SURFACE_CHANS, UPPER_VARS, ChannelLayout
from baselines.layers.gaussian import check_batch
from baselines.layers.sphere_pad import crop, pad_sphere, pad_to_size
from baselines.layers.swin import (
    PatchExpand,
    PatchMerging,
    SwinBlock,
    SwinStage,
    resample_pos_embed,
)
from baselines.registry import register_variants
from dambench.exceptions import DambenchInputError

__all__ = ["Adas", "balanced_l1"]

STAGE_KERNELS: tuple[tuple[int, int, int], ...] = (
    (3, 5, 7),
    (3, 3, 5),
    (3, 3, 3),
    (3, 3, 5),
    (3, 5, 7),
)
"""Conv3d kernels (level, latitude, longitude) of the five encoder stages (upstream)."""
STAGE_WIDTHS: tuple[int, ...] = (1, 2, 4, 2, 1)
"""Width of each encoder stage in units of ``embed_dim``."""


# --- building blocks ---------------------------------------------------------------------------


def balanced_l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Adas's balanced per-channel L1 ("UnifyMAE").

    ``L = (1/C) [l_0 + sum_{c>=1} l_c / sg(l_c / l_0)]`` with ``l_c`` the mean absolute error of
    channel c over (B, H, W) and ``sg`` stop-gradient: every channel's term has channel 0's
    value and keeps its own gradient direction. The value equals ``l_0``.

    Parameters
    ----------
    prediction, target
        (B, C, H, W), normalised units.
    """
    per_channel = (prediction - target).abs().float().mean(dim=(0, 2, 3))  # (C,)
    reference = per_channel[0]
    scale = (per_channel / reference).detach().clamp(min=1e-12)  # (C,), scale[0] == 1
    return (per_channel / scale).mean()


class SphereConv3d(nn.Conv3d):
    """``nn.Conv3d`` on (B, C, D, H, W) tokens: zero padding along the level axis D, sphere
    padding (:func:`~baselines.layers.sphere_pad.pad_sphere`) in (H, W); same-size output."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Sequence[int]) -> None:
        if any(k % 2 == 0 for k in kernel_size):
            raise ValueError(f"SphereConv3d needs odd kernels; got {tuple(kernel_size)}.")
        super().__init__(in_channels, out_channels, tuple(kernel_size), padding=0)
        self.pads = tuple(k // 2 for k in kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, D, H, W) -> (B, C_out, D, H, W)."""
        pad_d, pad_h, pad_w = self.pads
        h = x.shape[-2]
        # on token grids with fewer rows than the kernel needs, the extra rows are zeros
        lat = min(pad_h, h - 1)
        x = pad_sphere(x, lat, pad_w)
        x = F.pad(x, (0, 0, pad_h - lat, pad_h - lat, pad_d, pad_d))
        return super().forward(x)


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 4, 1, 2, 3).contiguous()  # (B, D, H, W, C) -> (B, C, D, H, W)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 4, 1)  # (B, C, D, H, W) -> (B, D, H, W, C)


def _patch_convs(
    layout: ChannelLayout, embed_dim: int, patch: int, kernel: tuple[int, int], *, recover: bool
) -> tuple[nn.Module | None, nn.Module | None]:
    """(surface, upper) convolutions of a patch embedding (``recover=False``: Conv2d S -> d and
    Conv3d V -> d) or recovery (transposed, d -> S and d -> V); ``None`` for an empty part.
    The upper-air kernel is ``(1, kh, kw)`` with stride ``(1, p, p)``."""
    s, v = layout.surface_chans, layout.upper_vars
    conv2d, conv3d = (nn.ConvTranspose2d, nn.ConvTranspose3d) if recover else (nn.Conv2d, nn.Conv3d)

    def io(chans: int) -> tuple[int, int]:
        return (embed_dim, chans) if recover else (chans, embed_dim)

    surface = conv2d(*io(s), kernel, stride=patch) if s else None  # built first (RNG order)
    upper = conv3d(*io(v), (1, *kernel), stride=(1, patch, patch)) if layout.levels else None
    return surface, upper


class PatchEmbed3d(nn.Module):
    """Patch embedding of one stream to tokens (B, D, Hp, Wp, d), then LayerNorm over d.

    Upper air: Conv3d(V -> d, kernel (1, kh, kw), stride (1, p, p)); surface: Conv2d(S -> d,
    (kh, kw), stride p), appended as the last level slice. ``kh = p + H mod p`` (likewise kw).
    """

    def __init__(
        self, layout: ChannelLayout, embed_dim: int, patch: int, kernel: tuple[int, int]
    ) -> None:
        super().__init__()
        self.layout = layout
        self.surface, self.upper = _patch_convs(layout, embed_dim, patch, kernel, recover=False)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D, Hp, Wp, d)."""
        surface, upper = self.layout.split(x)
        slices = []
        if self.upper is not None:
            slices.append(self.upper(upper))  # (B, d, L, Hp, Wp)
        if self.surface is not None:
            slices.append(self.surface(surface)[:, :, None])  # (B, d, 1, Hp, Wp)
        return self.norm(_channels_last(torch.cat(slices, dim=2)))  # (B, D, Hp, Wp, d)


class PatchRecovery3d(nn.Module):
    """Transposed convolutions with the embedding's kernels: (B, D, Hp, Wp, d) -> (B, C, H, W)."""

    def __init__(
        self, layout: ChannelLayout, embed_dim: int, patch: int, kernel: tuple[int, int]
    ) -> None:
        super().__init__()
        self.layout = layout
        self.surface, self.upper = _patch_convs(layout, embed_dim, patch, kernel, recover=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = _channels_first(tokens)  # (B, d, D, Hp, Wp)
        b = x.shape[0]
        levels = self.layout.levels
        upper = self.upper(x[:, :, :levels]) if self.upper is not None else None  # (B,V,L,H,W)
        surface = self.surface(x[:, :, -1]) if self.surface is not None else None  # (B,S,H,W)
        ref = upper[:, 0] if upper is not None else surface
        h, w = ref.shape[-2:]
        if upper is None:
            upper = x.new_zeros(b, self.layout.upper_vars, 0, h, w)
        if surface is None:
            surface = x.new_zeros(b, 0, h, w)
        return self.layout.merge(surface, upper)

    @torch.no_grad()
    def zero_(self) -> None:
        """All weights and biases to 0 (a residual model starts at the background)."""
        for conv in (self.surface, self.upper):
            if conv is not None:
                conv.weight.zero_()
                conv.bias.zero_()


class GatedCrossRound(nn.Module):
    """One round of gated cross-attention (unshifted or shifted windows).

    ``bg <- bg (1 - g) + XBlock_bg(bg g; obs)``, ``obs <- XBlock_obs(obs; bg_old)``.
    """

    def __init__(self, dim: int, num_heads: int, window: Sequence[int], shift: bool) -> None:
        super().__init__()
        self.bg_block = SwinBlock(dim, num_heads, window, shift=shift, cross=True)
        self.obs_block = SwinBlock(dim, num_heads, window, shift=shift, cross=True)

    def forward(self, bg: torch.Tensor, obs: torch.Tensor, gate: torch.Tensor):
        """Three (B, D, H, W, C) streams -> updated (bg, obs)."""
        new_bg = bg * (1 - gate) + self.bg_block(bg * gate, obs)
        return new_bg, self.obs_block(obs, bg)


class GatedStage(nn.Module):
    """An encoder stage on the (bg, obs, gate) streams (reference section 2.3, "BasicLayer").

    Parameters
    ----------
    dim
        Width of the stage.
    num_heads, window
        Attention heads and 3-D window (level, latitude, longitude).
    kernel
        Conv3d kernel of the gated convolutions.
    resample
        ``None``, ``"down"`` (2 x 2 patch merging from dim / 2) or ``"up"`` (patch expansion from
        2 dim, then concatenation of the skip streams: the convolutions take 2 dim).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: Sequence[int],
        kernel: Sequence[int],
        resample: str | None = None,
    ) -> None:
        super().__init__()
        self.resample_kind = resample
        if resample == "down":
            self.resample = nn.ModuleList(PatchMerging(dim // 2, dim) for _ in range(3))
        elif resample == "up":
            self.resample = nn.ModuleList(PatchExpand(2 * dim, dim) for _ in range(3))
        elif resample is None:
            self.resample = None
        else:
            raise ValueError(f"resample={resample!r}; choose None, 'down' or 'up'.")
        conv_in = 2 * dim if resample == "up" else dim
        self.conv_bg, self.conv_obs, self.conv_gate = (
            SphereConv3d(conv_in, dim, kernel) for _ in range(3)
        )
        self.rounds = nn.ModuleList(
            GatedCrossRound(dim, num_heads, window, shift) for shift in (False, True)
        )
        self.gate_out = nn.Linear(dim, dim)  # the 1 x 1 x 1 Conv3d, channels-last

    def _resample(self, streams, skip):
        if self.resample_kind == "down":
            streams = [m(s) for m, s in zip(self.resample, streams, strict=True)]
        elif self.resample_kind == "up":
            size = skip[0].shape[2:4]
            streams = [m(s, size) for m, s in zip(self.resample, streams, strict=True)]
        if self.resample is not None:
            streams[2] = torch.sigmoid(streams[2])
        return streams

    def forward(self, bg, obs, gate, skip=None):
        """(B, D, H, W, C) streams (and the skip streams for an up stage) -> new streams."""
        bg, obs, gate = self._resample([bg, obs, gate], skip)  # (B, D, H, W, dim)
        residual_bg, residual_obs = bg, obs
        if skip is not None:
            bg, obs, gate = (
                torch.cat(pair, dim=-1) for pair in zip((bg, obs, gate), skip, strict=True)
            )

        def conv(module, x):
            return _channels_last(module(_channels_first(x)))

        gate = torch.sigmoid(conv(self.conv_gate, gate))
        bg = F.silu(conv(self.conv_bg, bg))
        obs = F.silu(conv(self.conv_obs, obs)) * gate
        for cross_round in self.rounds:
            bg, obs = cross_round(bg, obs, gate)
        gate = torch.sigmoid(self.gate_out(gate))
        return bg + residual_bg, obs + residual_obs, gate


# --- model -------------------------------------------------------------------------------------


class Adas(BaselineModule):
    """Adas on a lat-lon grid (see the module docstring).

    Parameters
    ----------
    in_chans
        Number of channels C (a schema-ordered subset; see "Channel subsets").
    img_size
        (H, W) the patch kernels and position embedding are built for.
    patch_size
        Patch p in latitude and longitude (upstream: 2 at 128 x 256, 6 at 721 x 1440).
    embed_dim
        Token width d (upstream: 96 in DAMBench/FNP, 192 at 0.25 deg).
    depth
        3-D Swin decoder blocks (upstream: 8).
    num_heads
        Attention heads at width d (upstream: 4 in DAMBench).
    window_size
        3-D window (level, latitude, longitude) in tokens (upstream: (2, 4, 8)).
    drop_path_rate
        Decoder stochastic depth, linear from 0 to this (upstream: 0.1).
    surface_chans, upper_vars
        The channel layout (defaults: the schema's 4 surface channels and 5 upper-air variables).
    residual
        Output ``background + network`` with a zero-initialised recovery (not upstream).
    """

    def __init__(
        self,
        in_chans: int = 69,
        img_size: Sequence[int] = (121, 240),
        patch_size: int = 3,
        embed_dim: int = 96,
        depth: int = 8,
        num_heads: int = 4,
        window_size: Sequence[int] = (2, 4, 8),
        drop_path_rate: float = 0.1,
        surface_chans: int = SURFACE_CHANS,
        upper_vars: int = UPPER_VARS,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.img_size = tuple(img_size)
        self.patch_size = patch_size
        self.residual = residual
        self.layout = ChannelLayout(in_chans, surface_chans, upper_vars)
        h, w = self.img_size
        self.kernel = (patch_size + h % patch_size, patch_size + w % patch_size)
        tokens = (self.layout.depth, h // patch_size, w // patch_size)
        if min(tokens[1:]) < 2:
            raise DambenchInputError(f"img_size={self.img_size} is too small for {patch_size=}.")
        self.embeds = nn.ModuleList(
            PatchEmbed3d(self.layout, embed_dim, patch_size, self.kernel) for _ in range(3)
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, *tokens, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        window = tuple(window_size)
        self.stages = nn.ModuleList(
            GatedStage(embed_dim * m, num_heads * m, window, kernel, resample)
            for m, kernel, resample in zip(
                STAGE_WIDTHS, STAGE_KERNELS, (None, "down", "down", "up", "up"), strict=True
            )
        )
        self.fuse = SphereConv3d(3 * embed_dim, embed_dim, STAGE_KERNELS[0])
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.decoder = SwinStage(embed_dim, depth, num_heads, window, drop_path=rates)
        self.recovery = PatchRecovery3d(self.layout, embed_dim, patch_size, self.kernel)
        if residual:
            self.recovery.zero_()

    def _grid_pads(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """Pad on the sphere to the nearest grid with the built grid's remainders mod p."""
        p = self.patch_size
        h, w = x.shape[-2:]
        size = (h + (self.img_size[0] - h) % p, w + (self.img_size[1] - w) % p)
        if size[0] // p < 2 or size[1] // p < 2:
            raise DambenchInputError(f"A {h} x {w} grid is too small for patch_size={p}.")
        return pad_to_size(x, size)

    def adapter_slots(self) -> tuple[int, ...]:
        """Channels of the adapter entry (``ModelInfo.adapter_entry``): the observation
        stream's tokens, (B, d, D, Hp, Wp) channels-first, so ``d x D`` channels."""
        return (self.pos_embed.shape[-1] * self.layout.depth,)

    def forward_features(self, batch: DABatch) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Decoder tokens (B, D, Hp, Wp, d) and the sphere pads applied to the input (with an
        attached adapter's context added to the observation tokens)."""
        check_batch(batch, self.in_chans, type(self).__name__)
        fields = [batch.background, batch.observation, batch.mask]
        padded = [self._grid_pads(f) for f in fields]
        pads = padded[0][1]
        bg, obs, gate = (embed(f) for embed, (f, _) in zip(self.embeds, padded, strict=True))
        context = adapter_context(self, batch)  # NO_CONTEXT without an adapter: adds nothing
        if context.tokens is not None:  # (B, D, Hp, Wp, d), the layout the stages expect
            obs = _channels_last(context.add(_channels_first(obs), slot=0)).contiguous()
        pos = resample_pos_embed(self.pos_embed, bg.shape[1:4])
        bg, obs, gate = bg + pos, obs + pos, torch.sigmoid(gate) + pos
        skips = []
        for i, stage in enumerate(self.stages):
            skip = skips[len(self.stages) - 1 - i] if i >= 3 else None
            bg, obs, gate = stage(bg, obs, gate, skip)
            if i < 2:
                skips.append((bg, obs, gate))
        fused = self.fuse(_channels_first(torch.cat([bg, obs, gate], dim=-1)))  # (B,d,D,Hp,Wp)
        return self.decoder(_channels_last(fused)), pads

    def forward(self, batch: DABatch) -> Analysis:
        """The analysis (B, C, H, W) of a batch (normalised units; modalities are read only by
        an attached adapter)."""
        tokens, pads = self.forward_features(batch)
        out = crop(self.recovery(tokens), pads)
        if self.residual:
            out = out + batch.background
        return Analysis(mean=out)

    def loss(self, batch: DABatch) -> LossAndDiagnostics:
        """Balanced per-channel L1 of the analysis against ``batch.target``."""
        if batch.target is None:
            raise DambenchInputError("Adas.loss needs batch.target (the truth x*).")
        mean = self(batch).mean
        loss = balanced_l1(mean, batch.target)
        error = (mean.detach() - batch.target).float()
        return LossAndDiagnostics(
            loss,
            {
                "balanced_l1": float(loss.detach()),
                "mae": float(error.abs().mean()),
                "mse": float((error**2).mean()),
            },
        )


# --- registered variants (configs as data) ------------------------------------------------------

INFO = ModelInfo(
    output="deterministic",
    trainable=True,
    adapter_entry="observation_tokens",
    paper="Chen et al. (2023), Towards an end-to-end artificial intelligence driven global "
    "weather forecasting system (FengWu-Adas), https://arxiv.org/abs/2312.12462",
    code="https://github.com/OpenEarthLab/FengWu-Adas",
    code_licence="none (no licence file)",
)

register_variants(
    Adas,
    {
        "adas_tiny": (
            "CPU-test size: d = 16, p = 3, window (2, 4, 4), 2 heads, 2 decoder blocks.",
            dict(
                in_chans=4,
                embed_dim=16,
                patch_size=3,
                window_size=(2, 4, 4),
                num_heads=2,
                depth=2,
            ),
        ),
        "adas_small": (
            "CPU-training size: d = 16, p = 3, window (2, 4, 8), 2 heads, 2 decoder blocks, "
            "residual on the background.",
            dict(
                in_chans=4,
                embed_dim=16,
                patch_size=3,
                window_size=(2, 4, 8),
                num_heads=2,
                depth=2,
                drop_path_rate=0.0,
                residual=True,
            ),
        ),
        "adas_full": (
            "Published width at 121 x 240 (reference section 2.4): d = 96, p = 3, window "
            "(2, 4, 8), 4 heads, 8 decoder blocks, 69 channels.",
            dict(
                in_chans=69,
                embed_dim=96,
                patch_size=3,
                window_size=(2, 4, 8),
                num_heads=4,
                depth=8,
            ),
        ),
    },
    info=INFO,
)
