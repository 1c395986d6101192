"""A time-conditioned UNet on the sphere: the noise predictor of SDA and SLAMS.

Written from the description of SDA's score network (Rozet & Louppe 2023,
``shared/reference/baselines.md`` section 6.2); no code was copied.

Architecture
    - Time embedding: ``t -> [cos(pi k t), sin(pi k t)]`` for ``k = 1..16`` (32 features), then
      ``Linear(32, 256) -> SiLU -> Linear(256, embed_dim)``.
    - Head convolution ``in_chans -> hidden_channels[0]``.
    - Descent: level ``i`` starts (for ``i > 0``) with a stride-2 convolution
      ``hidden_channels[i-1] -> hidden_channels[i]`` and has ``hidden_blocks[i]`` modulated
      residual blocks ``x <- x + Conv(Act(Conv(LN(x + Linear(emb)))))`` (:class:`ModResBlock`;
      ``LN`` standardises over channels without parameters, with the unbiased variance).
    - Ascent: level ``i`` adds the descent's output of that level (skips by addition), has
      ``hidden_blocks[i]`` blocks and (for ``i > 0``) ends with ``LN -> nearest x2 -> Conv``
      down to ``hidden_channels[i-1]``.
    - Tail convolution ``hidden_channels[0] -> out_chans``. Kernel 3, SiLU.

    At ``in_chans = 69``, hidden (96, 192, 384), blocks (3, 3, 3) and ``embed_dim = 64`` this is
    22,976,069 parameters, the 23.0 M measured for the upstream network.

Grid handling (deliberate deviation)
    Upstream pads every convolution circularly in both directions (a periodic square domain).
    Here every convolution pads on the sphere (:func:`baselines.layers.sphere_pad.pad_sphere`:
    periodic in longitude, across the pole in latitude), and the input is first padded on the
    sphere to a multiple of ``2 ** (levels - 1)`` rows and columns
    (:func:`~baselines.layers.sphere_pad.pad_to_multiple`: 121 -> 124 rows for three levels) and
    cropped back at the end, since strided convolutions and nearest up-sampling need even sizes
    at every level (at 121 rows the skips would meet 61 against 62 rows). Inside the padded
    grid the pole padding is approximate (its edge rows are a pad, not a pole).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from baselines.layers.sphere_pad import crop, pad_sphere, pad_to_multiple
from dambench.exceptions import DambenchInputError

TIME_FEATURES = 32
TIME_HIDDEN = 256
LN_EPS = 1e-5


class SphereConv(nn.Conv2d):
    """``nn.Conv2d`` with an odd kernel, stride 1 or 2, padded on the sphere.

    (B, C_in, H, W) -> (B, C_out, H / stride, W / stride) (H and W even when ``stride = 2``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        if kernel_size < 1 or kernel_size % 2 == 0 or stride not in (1, 2):
            raise DambenchInputError(
                f"SphereConv needs an odd kernel_size and stride 1 or 2; got {kernel_size=}, "
                f"{stride=}."
            )
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        self.pad = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = pad_sphere(x, self.pad, self.pad)  # (B, C_in, H + 2p, W + 2p)
        return F.conv2d(x, self.weight, self.bias, stride=self.stride)


def channel_standardise(x: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / sqrt(var + 1e-5)`` over the channel dim of (B, C, H, W), unbiased var."""
    var, mean = torch.var_mean(x, dim=1, keepdim=True, unbiased=x.shape[1] > 1)
    return (x - mean) / torch.sqrt(var + LN_EPS)


class ChannelNorm(nn.Module):
    """:func:`channel_standardise` as a module, or the identity when ``enabled`` is False."""

    def __init__(self, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_standardise(x) if self.enabled else x

    def extra_repr(self) -> str:
        return f"enabled={self.enabled}"


class TimeEmbedding(nn.Module):
    """(N,) times in [0, 1] -> (N, embed_dim): sine features and a two-layer MLP."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.register_buffer(
            "frequencies", math.pi * torch.arange(1, TIME_FEATURES // 2 + 1), persistent=False
        )
        self.mlp = nn.Sequential(
            nn.Linear(TIME_FEATURES, TIME_HIDDEN), nn.SiLU(), nn.Linear(TIME_HIDDEN, embed_dim)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.frequencies  # (N, 16)
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=-1))  # (N, embed_dim)


class ModResBlock(nn.Module):
    """``x + Conv(SiLU(Conv(LN(x + Linear(emb)))))`` at ``channels`` channels."""

    def __init__(
        self, channels: int, embed_dim: int, kernel_size: int = 3, layer_norm: bool = True
    ):
        super().__init__()
        self.project = nn.Linear(embed_dim, channels)
        self.norm = ChannelNorm(layer_norm)
        self.conv1 = SphereConv(channels, channels, kernel_size)
        self.act = nn.SiLU()
        self.conv2 = SphereConv(channels, channels, kernel_size)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        y = x + self.project(emb)[:, :, None, None]  # (N, C, H, W)
        return x + self.conv2(self.act(self.conv1(self.norm(y))))


class UpSample(nn.Module):
    """``LN -> nearest x2 -> Conv``: (N, C_in, H, W) -> (N, C_out, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, layer_norm: bool):
        super().__init__()
        self.norm = ChannelNorm(layer_norm)
        self.conv = SphereConv(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(self.norm(x), scale_factor=2.0, mode="nearest"))


class ScoreUNet(nn.Module):
    """Noise predictor ``eps(x_t, t)`` for (N, in_chans, H, W) fields on a lat-lon grid.

    Parameters
    ----------
    in_chans
        Channels of ``x_t`` plus any context channels concatenated to it.
    out_chans
        Channels of the predicted noise (default ``in_chans``).
    hidden_channels, hidden_blocks
        Width and number of residual blocks per level (one entry per level).
    embed_dim
        Width of the time embedding.
    kernel_size
        Odd kernel of every convolution.
    layer_norm
        Standardise over channels in the blocks and before up-sampling (SDA: yes; the SLAMS copy
        of the network: no).
    zero_init_tail
        Start the tail convolution at zero (the network then outputs 0 until trained).
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int | None = None,
        hidden_channels: Sequence[int] = (96, 192, 384),
        hidden_blocks: Sequence[int] = (3, 3, 3),
        embed_dim: int = 64,
        kernel_size: int = 3,
        layer_norm: bool = True,
        zero_init_tail: bool = False,
    ) -> None:
        super().__init__()
        hidden, blocks = list(hidden_channels), list(hidden_blocks)
        if not hidden or len(hidden) != len(blocks) or min(hidden) < 1 or min(blocks) < 0:
            raise DambenchInputError(
                "ScoreUNet needs one positive width and one block count >= 0 per level; got "
                f"hidden_channels={hidden}, hidden_blocks={blocks}."
            )
        self.in_chans, self.out_chans = in_chans, out_chans or in_chans
        self.levels = len(hidden)
        self.embedding = TimeEmbedding(embed_dim)
        self.head = SphereConv(in_chans, hidden[0], kernel_size)
        self.down = nn.ModuleList(
            [SphereConv(hidden[i - 1], hidden[i], kernel_size, 2) for i in range(1, self.levels)]
        )
        self.up = nn.ModuleList(
            [
                UpSample(hidden[i], hidden[i - 1], kernel_size, layer_norm)
                for i in range(1, self.levels)
            ]
        )

        def level_blocks(width: int, count: int) -> nn.ModuleList:
            return nn.ModuleList(
                ModResBlock(width, embed_dim, kernel_size, layer_norm) for _ in range(count)
            )

        self.descent = nn.ModuleList(
            level_blocks(w, n) for w, n in zip(hidden, blocks, strict=True)
        )
        self.ascent = nn.ModuleList(level_blocks(w, n) for w, n in zip(hidden, blocks, strict=True))
        self.tail = SphereConv(hidden[0], self.out_chans, kernel_size)
        if zero_init_tail:
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    @property
    def multiple(self) -> int:
        """The grid sizes every level needs: multiples of ``2 ** (levels - 1)``."""
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """(N, in_chans, H, W) noisy fields and times (() or (N,)) -> (N, out_chans, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise DambenchInputError(
                f"ScoreUNet expects (N, {self.in_chans}, H, W); got {tuple(x.shape)}."
            )
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype).expand(x.shape[0])
        emb = self.embedding(t)  # (N, embed_dim)
        h, pads = pad_to_multiple(x, self.multiple)  # (N, C, H', W'), H' and W' multiples
        h = self.head(h)  # (N, hidden[0], H', W')
        skips = []
        for level, blocks in enumerate(self.descent):
            if level > 0:
                h = self.down[level - 1](h)  # (N, hidden[level], H' / 2**level, ...)
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
        for level in reversed(range(self.levels)):
            if level < self.levels - 1:
                h = h + skips[level]
            for block in self.ascent[level]:
                h = block(h, emb)
            if level > 0:
                h = self.up[level - 1](h)  # (N, hidden[level - 1], H' / 2**(level - 1), ...)
        return crop(self.tail(h), pads)  # (N, out_chans, H, W)
