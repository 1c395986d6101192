"""Padding a lat-lon grid for convolutions and size constraints, and cropping back.

Longitude is periodic: padded columns wrap around. Latitude is not: a row beyond a pole continues
on the other side of the globe, so the pad mirrors the rows next to the pole and rolls them by
half the longitudes (the point 1 row "north" of the north pole at longitude L is the point 1 row
south of it at L + 180 degrees).

Models whose grid must meet a size constraint (window or patch multiples: VAE-Var's Swin U-Net,
Adas on a grid other than the one it was built for, the diffusion U-Nets) pad the input with
:func:`pad_to_multiple` or :func:`pad_to_size` and :func:`crop` the output back: the padding is on
the sphere (no zeros, no resize), and the crop returns exactly the input's grid.
"""

from __future__ import annotations

import torch


def pad_sphere(x: torch.Tensor, lat: int, lon: int) -> torch.Tensor:
    """Pad (..., H, W) by ``lat`` rows at each pole and ``lon`` columns at each side."""
    if lat:
        if lat >= x.shape[-2]:
            raise ValueError(f"Latitude pad {lat} must be smaller than the {x.shape[-2]} rows.")
        half = x.shape[-1] // 2
        north = torch.roll(torch.flip(x[..., 1 : lat + 1, :], dims=[-2]), half, dims=-1)
        south = torch.roll(torch.flip(x[..., -lat - 1 : -1, :], dims=[-2]), half, dims=-1)
        x = torch.cat([north, x, south], dim=-2)
    if lon:
        x = torch.cat([x[..., -lon:], x, x[..., :lon]], dim=-1)
    return x


def pad_to_multiple(
    x: torch.Tensor, multiple: int
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad (..., H, W) on the sphere so H and W are multiples of ``multiple``.

    Returns the padded tensor and ``(top, bottom, left, right)`` for :func:`crop`.
    """
    h, w = x.shape[-2:]
    return pad_to_size(x, (h + (-h) % multiple, w + (-w) % multiple))


def pad_to_size(
    x: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad (..., H, W) on the sphere to exactly ``size = (H', W')`` with ``H' >= H``, ``W' >= W``.

    The extra rows go half to the north (rounded down) and half to the south, the extra columns
    half to the west and half to the east. Returns the padded tensor and
    ``(top, bottom, left, right)`` for :func:`crop`.
    """
    h, w = x.shape[-2:]
    extra_h, extra_w = size[0] - h, size[1] - w
    if extra_h < 0 or extra_w < 0:
        raise ValueError(f"pad_to_size cannot shrink a {h} x {w} grid to {tuple(size)}.")
    top, left = extra_h // 2, extra_w // 2
    bottom, right = extra_h - top, extra_w - left
    padded = pad_sphere(x, max(top, bottom), max(left, right))
    big_lat, big_lon = max(top, bottom), max(left, right)
    padded = padded[
        ...,
        big_lat - top : padded.shape[-2] - (big_lat - bottom),
        big_lon - left : padded.shape[-1] - (big_lon - right),
    ]
    return padded, (top, bottom, left, right)


def crop(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`."""
    top, bottom, left, right = pads
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]
