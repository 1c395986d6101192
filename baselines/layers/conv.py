"""Sphere-padded convolutions shared by the neural-process baselines (ConvCNP, FNP).

Every spatial convolution here pads with :func:`baselines.layers.sphere_pad.pad_sphere`
(periodic in longitude, across the pole in latitude) and then convolves without padding, so the
output has the input's (H, W) at any grid size and a roll in longitude of the input rolls the
output the same way (no zero-padding seam at the date line, no artificial edge at the poles).

Blocks
    :class:`SphereConv2d`
        ``nn.Conv2d`` with odd ``kernel_size`` and sphere padding.
    :class:`PositiveConv2d`
        The same with non-negative weights ``|W|`` and no bias: the on-grid SetConv kernel.
    :class:`SetConvEmbed`
        The on-grid SetConv (Gordon et al. 2020): density ``conv(mask)``, normalised signal
        ``conv(mask * y) / max(density, eps)``, both mapped pointwise to ``embed_dim`` channels.
    :class:`ResConvBlock`
        Pre-activation depthwise-separable residual block of the Neural Process Family CNNs.
    :class:`PointwiseMLP`
        An MLP applied at every grid point (1 x 1 convolutions), channels-first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from baselines.layers.sphere_pad import pad_sphere

NormName = Literal["batch", "group", "none"]
ActName = Literal["relu", "silu", "gelu"]
NORM_LAYERS: tuple[str, ...] = ("batch", "group", "none")
ACT_LAYERS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}
DENSITY_EPS = 1e-5
"""Floor of the density in the SetConv normalisation (signal / max(density, eps))."""


def get_act_layer(name: ActName) -> nn.Module:
    """A fresh activation module from its name (``"relu"``, ``"silu"``, ``"gelu"``)."""
    if name not in ACT_LAYERS:
        raise ValueError(f"Unknown act_layer={name!r}; choose from {sorted(ACT_LAYERS)}.")
    return ACT_LAYERS[name]()


def get_norm_layer(name: NormName, num_channels: int) -> nn.Module:
    """A normalisation over channels of (B, C, H, W).

    ``"batch"`` is ``BatchNorm2d`` (the upstream choice), ``"group"`` is ``GroupNorm`` with one
    group (layer norm over C, H, W; independent of the batch size), ``"none"`` the identity.
    """
    if name == "batch":
        return nn.BatchNorm2d(num_channels)
    if name == "group":
        return nn.GroupNorm(1, num_channels)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"Unknown norm_layer={name!r}; choose from {NORM_LAYERS}.")


def _check_odd(kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be a positive odd number (same-size output on the sphere); "
            f"got {kernel_size=}."
        )


class SphereConv2d(nn.Conv2d):
    """``nn.Conv2d`` (stride 1, odd square kernel) whose padding wraps the sphere.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, groups, bias
        As ``nn.Conv2d``; ``padding`` is always ``kernel_size // 2`` rows and columns, taken from
        :func:`~baselines.layers.sphere_pad.pad_sphere`.

    Notes
    -----
    Input and output are (B, C, H, W) with the same (H, W); H must exceed ``kernel_size // 2``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        _check_odd(kernel_size)
        super().__init__(
            in_channels, out_channels, kernel_size, padding=0, groups=groups, bias=bias
        )
        self.pad = kernel_size // 2

    def _weight(self) -> torch.Tensor:
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        if self.pad:
            x = pad_sphere(x, self.pad, self.pad)  # (B, C_in, H + 2p, W + 2p)
        return F.conv2d(x, self._weight(), self.bias, groups=self.groups)


class PositiveConv2d(SphereConv2d):
    """A sphere-padded convolution with non-negative weights ``|W|`` and no bias.

    With ``depthwise=True`` each channel has its own kernel (``groups = channels``); otherwise
    every output channel mixes all input channels (FNP's all-variable SetConv).
    Initialised to a Gaussian bump of width ``kernel_size / 4`` (an RBF SetConv), on the diagonal
    for the full variant, plus 1 % uniform noise so no weight starts at the kink of ``|W|``.
    """

    def __init__(self, channels: int, kernel_size: int, *, depthwise: bool = True) -> None:
        super().__init__(
            channels, channels, kernel_size, groups=channels if depthwise else 1, bias=False
        )
        with torch.no_grad():
            offsets = torch.arange(kernel_size, dtype=torch.float32) - kernel_size // 2
            scale = max(kernel_size / 4.0, 0.5)
            bump_1d = torch.exp(-0.5 * (offsets / scale) ** 2)
            bump = bump_1d[:, None] * bump_1d[None, :]  # (k, k)
            if depthwise:
                init = bump.expand(channels, 1, kernel_size, kernel_size)  # (C, 1, k, k)
            else:
                eye = torch.eye(channels)[:, :, None, None]  # (C, C, 1, 1)
                init = eye * bump  # (C, C, k, k)
            noise = 0.01 * torch.rand(self.weight.shape, device=self.weight.device)
            self.weight.copy_(init.to(self.weight.device) + noise)

    def _weight(self) -> torch.Tensor:
        return self.weight.abs()


class SetConvEmbed(nn.Module):
    """On-grid SetConv followed by a pointwise map to ``embed_dim`` channels.

    ``density = conv(mask)``, ``signal = conv(mask * values) / max(density, eps)``, both with the
    same positive kernel; ``[signal, density]`` (2C channels) -> 1 x 1 conv -> ``embed_dim``.

    Parameters
    ----------
    in_chans
        Number of channels C of ``values`` and ``mask``.
    embed_dim
        Output width r.
    kernel_size
        Odd size of the positive kernel.
    depthwise
        One kernel per channel (True) or a full C -> C positive convolution (False).
    """

    def __init__(
        self, in_chans: int, embed_dim: int, kernel_size: int, *, depthwise: bool = True
    ) -> None:
        super().__init__()
        self.conv = PositiveConv2d(in_chans, kernel_size, depthwise=depthwise)
        self.proj = nn.Conv2d(2 * in_chans, embed_dim, 1)

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) values and mask (1 observed, 0 not) -> (B, embed_dim, H, W)."""
        density = self.conv(mask)  # (B, C, H, W)
        signal = self.conv(values * mask) / density.clamp(min=DENSITY_EPS)  # (B, C, H, W)
        return self.proj(torch.cat([signal, density], dim=1))  # (B, r, H, W)


class ResConvBlock(nn.Module):
    """Pre-activation depthwise-separable residual block (Neural Process Family CNN block).

    ``h = pw1(dw1(act(norm1(x))))``; ``h = dw2(act(norm2(h)))``; ``out = pw2(h + x)``, where
    ``dw`` are sphere-padded depthwise ``kernel_size`` convolutions and ``pw`` 1 x 1
    convolutions. Width ``dim`` throughout; (B, dim, H, W) -> (B, dim, H, W).
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 9,
        *,
        act_layer: ActName = "relu",
        norm_layer: NormName = "batch",
    ) -> None:
        super().__init__()
        self.norm1 = get_norm_layer(norm_layer, dim)
        self.act1 = get_act_layer(act_layer)
        self.dw1 = SphereConv2d(dim, dim, kernel_size, groups=dim)
        self.pw1 = nn.Conv2d(dim, dim, 1)
        self.norm2 = get_norm_layer(norm_layer, dim)
        self.act2 = get_act_layer(act_layer)
        self.dw2 = SphereConv2d(dim, dim, kernel_size, groups=dim)
        self.pw2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B, dim, H, W)."""
        h = self.pw1(self.dw1(self.act1(self.norm1(x))))
        h = self.dw2(self.act2(self.norm2(h)))
        return self.pw2(h + x)


class PointwiseMLP(nn.Module):
    """An MLP at every grid point: ``depth`` hidden layers of width ``hidden`` with ReLU.

    (B, in_features, H, W) -> (B, out_features, H, W), as 1 x 1 convolutions.
    """

    def __init__(self, in_features: int, hidden: int, out_features: int, depth: int = 4) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"PointwiseMLP needs depth >= 1 hidden layers; got {depth=}.")
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Conv2d(width, hidden, 1), nn.ReLU()]
            width = hidden
        layers.append(nn.Conv2d(width, out_features, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_features, H, W) -> (B, out_features, H, W)."""
        return self.net(x)

    @torch.no_grad()
    def zero_outputs(self, n: int) -> None:
        """Set the first ``n`` outputs to exactly 0 at initialisation (last layer's rows).

        A residual head whose increment starts at 0 begins training from the background.
        """
        last = self.net[-1]
        last.weight[:n].zero_()
        last.bias[:n].zero_()


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters (works on the ``meta`` device too)."""
    return sum(math.prod(p.shape) for p in module.parameters())
