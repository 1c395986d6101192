"""Shifted-window attention on 2-D (latitude, longitude) and 3-D (level, latitude, longitude)
token grids, shared by Adas (3-D, gated cross-attention) and VAE-Var's local-global Swin U-Net
(2-D).

Tokens are channels-last, ``(B, *spatial, C)``; the **last** spatial axis is longitude and is
periodic, every other axis (latitude, level) is not.

Windows on any grid
    Swin (Liu et al. 2021, https://arxiv.org/abs/2103.14030) partitions the grid into windows and
    shifts them by half a window every other block. Here:

    - **longitude** (periodic): the window width is the largest divisor of the token count that
      does not exceed the configured width, so the windows tile the circle exactly; the shift is
      a roll, and the tokens it wraps around *are* neighbours on the sphere, so no mask is needed
      (upstream Swin masks them as if the date line were an edge);
    - **latitude and level** (not periodic): the window is ``min(window, extent)``; the grid is
      padded at the end to a multiple of it and padded tokens are masked out as keys; a shift
      is a roll whose wrapped tokens are masked from the others (Swin's region mask).

    A smaller effective window indexes the same relative-position table (sized for the
    configured window), so one set of weights serves every stage and grid.

Blocks
    :class:`WindowAttention` (self or cross), :class:`SwinBlock` (pre-norm, optional separate
    norm for the key/value context), :class:`SwinStage` (blocks alternating unshifted and
    shifted), :class:`PatchMerging` and :class:`PatchExpand` (2 x 2 in the last two axes),
    :class:`DropPath`, :func:`resample_pos_embed`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

MASK_VALUE = -1.0e4
"""Logit added where attention is not allowed (finite, so fully masked padded queries stay
finite; representable in float16)."""


# --- window geometry (pure functions) -----------------------------------------------------------


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def effective_window(extent: Sequence[int], window: Sequence[int]) -> tuple[int, ...]:
    """The window used on a token grid of ``extent``: ``min(window, extent)`` on the
    non-periodic axes, the largest divisor of the extent not above the window on the last
    (periodic, longitude) axis."""
    *lead, last = extent
    *lead_w, last_w = window
    return (*(min(w, n) for w, n in zip(lead_w, lead, strict=True)),) + (
        _largest_divisor_at_most(last, last_w),
    )


def effective_shift(extent: Sequence[int], window: Sequence[int]) -> tuple[int, ...]:
    """Half the effective window on every axis longer than its window, else 0 (Swin)."""
    return tuple(w // 2 if n > w else 0 for n, w in zip(extent, window, strict=True))


@functools.lru_cache(maxsize=64)
def relative_position_index(window: tuple[int, ...], table_window: tuple[int, ...]) -> torch.Tensor:
    """Index (N, N), N = prod(window), into a relative-position table built for ``table_window``
    (shape prod(2 w - 1) rows)."""
    coords = torch.stack(torch.meshgrid(*(torch.arange(w) for w in window), indexing="ij")).flatten(
        1
    )  # (ndim, N)
    relative = coords[:, :, None] - coords[:, None, :]  # (ndim, N, N)
    index = torch.zeros(relative.shape[1:], dtype=torch.long)
    for axis, size in enumerate(table_window):
        index = index * (2 * size - 1) + relative[axis] + size - 1
    return index


@functools.lru_cache(maxsize=64)
def window_mask(
    extent: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...]
) -> torch.Tensor | None:
    """Additive attention mask (n_windows, N, N) for a padded, rolled grid, or ``None``.

    A key is hidden from a query when it is a padded token or when, on a non-periodic axis, one
    of the two was wrapped around by the shift and the other was not. The last axis is
    periodic (never padded, wraps are real neighbours).
    """
    padded = tuple(math.ceil(n / w) * w for n, w in zip(extent, window, strict=True))
    if padded == extent and not any(shift[:-1]):
        return None
    valid = torch.ones(padded, dtype=torch.bool)
    segment = torch.zeros(padded, dtype=torch.long)
    for axis, (n, n_pad, s) in enumerate(zip(extent, padded, shift, strict=True)):
        position = torch.arange(n_pad)
        origin = (position + s) % n_pad  # roll by -s: new[p] = old[p + s]
        view = [1] * len(padded)
        view[axis] = n_pad
        valid &= (origin < n).view(view)
        if axis < len(padded) - 1 and s:
            segment = segment * 2 + (position >= n_pad - s).long().view(view)
    valid_w = partition(valid[None, ..., None].float(), window)[..., 0]  # (nW, N)
    segment_w = partition(segment[None, ..., None].float(), window)[..., 0]  # (nW, N)
    allowed = (segment_w[:, :, None] == segment_w[:, None, :]) & (valid_w[:, None, :] > 0)
    return torch.where(allowed, 0.0, MASK_VALUE)  # (nW, N, N)


def partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """(B, *S, C) with S divisible by ``window`` -> (B * n_windows, prod(window), C)."""
    batch, *spatial, channels = x.shape
    shape = [batch]
    for n, w in zip(spatial, window, strict=True):
        shape += [n // w, w]
    x = x.view(*shape, channels)  # (B, n1, w1, n2, w2, ..., C)
    ndim = len(spatial)
    order = [0, *range(1, 2 * ndim, 2), *range(2, 2 * ndim + 1, 2), 2 * ndim + 1]
    return x.permute(order).reshape(-1, math.prod(window), channels)


def reverse(windows: torch.Tensor, window: Sequence[int], spatial: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`partition`: (B * n_windows, N, C) -> (B, *spatial, C)."""
    ndim = len(spatial)
    counts = [n // w for n, w in zip(spatial, window, strict=True)]
    channels = windows.shape[-1]
    x = windows.view(-1, *counts, *window, channels)  # (B, n1, n2, ..., w1, w2, ..., C)
    order = [0]
    for axis in range(ndim):
        order += [1 + axis, 1 + ndim + axis]
    return x.permute(*order, 2 * ndim + 1).reshape(-1, *spatial, channels)


def _pad_end(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """Zero-pad (B, *S, C) at the end of each spatial axis to a multiple of ``window``."""
    pads: list[int] = [0, 0]  # channels
    for n, w in zip(reversed(x.shape[1:-1]), reversed(window), strict=True):
        pads += [0, (-n) % w]
    return F.pad(x, pads) if any(pads) else x


# --- blocks --------------------------------------------------------------------------------------


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability ``p`` in training and
    rescale the others by ``1 / (1 - p)`` (Huang et al. 2016)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath needs 0 <= p < 1; got {p=}.")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class WindowAttention(nn.Module):
    """Multi-head attention inside windows with a learned relative-position bias.

    Queries come from ``x``, keys and values from ``context`` (``x`` itself for
    self-attention). The bias table has ``prod(2 w - 1)`` rows for the configured ``window``
    (Swin; Adas's 3-D table is (2Wd-1)(2Wh-1)(2Ww-1) x heads).
    """

    def __init__(
        self, dim: int, num_heads: int, window: Sequence[int], qkv_bias: bool = True
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}.")
        self.num_heads = num_heads
        self.window = tuple(window)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        rows = math.prod(2 * w - 1 for w in self.window)
        self.relative_position_bias = nn.Parameter(torch.empty(rows, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias, std=0.02)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        window: tuple[int, ...],
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """(B * nW, N, C) queries and context, ``mask`` (nW, N, N) or None -> (B * nW, N, C)."""
        bw, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).view(bw, n, heads, c // heads).transpose(1, 2)  # (BW, h, N, c/h)
        k, v = self.kv(context).view(bw, n, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        index = relative_position_index(window, self.window).to(x.device)
        bias = self.relative_position_bias[index.flatten()].view(n, n, heads)
        bias = bias.permute(2, 0, 1).to(q.dtype)  # (h, N, N)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            n_windows = mask.shape[0]
            shape = (bw // n_windows, n_windows, heads, n, c // heads)
            attn = bias[None, None] + mask.to(q.dtype)[None, :, None]  # (1, nW, h, N, N)
            out = F.scaled_dot_product_attention(
                q.reshape(shape), k.reshape(shape), v.reshape(shape), attn_mask=attn
            )
        return self.proj(out.reshape(bw, heads, n, c // heads).transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    """Linear -> GELU -> Linear, hidden width ``ratio * dim``."""

    def __init__(self, dim: int, ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention block with an MLP, self or cross attention.

    ``x + DropPath(WA(LN(x), LN_c(context)))`` then ``+ DropPath(MLP(LN(x)))``. With
    ``cross=False`` the context is ``LN(x)`` itself.

    Parameters
    ----------
    dim, num_heads
        Token width and attention heads.
    window
        Configured window per spatial axis (2 or 3 axes; the last is longitude).
    shift
        Shift the windows by half a window (every other block of a stage).
    mlp_ratio, qkv_bias, drop_path
        As Swin.
    cross
        Keys and values from a second token grid of the same shape (with its own LayerNorm).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: Sequence[int],
        *,
        shift: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        cross: bool = False,
    ) -> None:
        super().__init__()
        self.window = tuple(window)
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim) if cross else None
        self.attn = WindowAttention(dim, num_heads, self.window, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def _attend(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Windowed attention of (B, *S, C) tokens; pads, shifts, partitions and undoes it."""
        spatial = tuple(x.shape[1:-1])
        if len(spatial) != len(self.window):
            raise ValueError(
                f"SwinBlock with a {len(self.window)}-D window got tokens of shape "
                f"{tuple(x.shape)}; expected (B, {len(self.window)} spatial axes, C)."
            )
        window = effective_window(spatial, self.window)
        shift = effective_shift(spatial, window) if self.shift else (0,) * len(window)
        axes = tuple(range(1, len(spatial) + 1))
        tensors = []
        for t in (x, context) if context is not x else (x,):
            t = _pad_end(t, window)
            if any(shift):
                t = torch.roll(t, [-s for s in shift], dims=axes)
            tensors.append(partition(t, window))  # (B * nW, N, C)
        if len(tensors) == 1:  # self-attention
            tensors.append(tensors[0])
        padded = tuple(math.ceil(n / w) * w for n, w in zip(spatial, window, strict=True))
        mask = window_mask(spatial, window, shift)
        mask = None if mask is None else mask.to(x.device)
        out = reverse(self.attn(*tensors, window, mask), window, padded)  # (B, *padded, C)
        if any(shift):
            out = torch.roll(out, list(shift), dims=axes)
        return out[(slice(None), *(slice(0, n) for n in spatial))]

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """(B, *S, C) tokens (and a context of the same shape when ``cross``) -> (B, *S, C)."""
        if (context is None) != (self.norm_context is None):
            raise ValueError("A cross-attention SwinBlock needs a context; a self one takes none.")
        h = self.norm1(x)
        c = h if self.norm_context is None else self.norm_context(context)
        x = x + self.drop_path(self._attend(h, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage(nn.Module):
    """``depth`` self-attention :class:`SwinBlock` alternating unshifted and shifted windows.

    ``drop_path`` is one rate for all blocks or one per block.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: Sequence[int],
        *,
        mlp_ratio: float = 4.0,
        drop_path: float | Sequence[float] = 0.0,
    ) -> None:
        super().__init__()
        rates = [drop_path] * depth if isinstance(drop_path, int | float) else list(drop_path)
        if len(rates) != depth:
            raise ValueError(f"Got {len(rates)} drop-path rates for {depth} blocks.")
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim, num_heads, window, shift=i % 2 == 1, mlp_ratio=mlp_ratio, drop_path=rates[i]
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *S, C) -> (B, *S, C)."""
        for block in self.blocks:
            x = block(x)
        return x


class PatchMerging(nn.Module):
    """2 x 2 merging in the last two spatial axes (latitude, longitude): LN(4C) -> Linear(4C ->
    ``out_dim``, default 2C). Odd extents are zero-padded at the south/east end first, so
    (B, *L, H, W, C) -> (B, *L, ceil(H/2), ceil(W/2), out_dim)."""

    def __init__(self, dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim or 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-3:-1]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))  # (..., H', W', C), both even
        parts = [x[..., i::2, j::2, :] for j in (0, 1) for i in (0, 1)]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))  # (..., H'/2, W'/2, out)


class PatchExpand(nn.Module):
    """Inverse of :class:`PatchMerging`: LN(C) -> Linear(C -> 4 ``out_dim``) -> 2 x 2 pixel
    shuffle in (latitude, longitude), then a crop to ``size`` (the skip connection's extent).

    (B, *L, H, W, C) -> (B, *L, size[0], size[1], out_dim) with ``size <= (2H, 2W)``. The crop
    replaces the upstream Adas pad that corrupts odd token grids (reference section 2.7).
    """

    def __init__(self, dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.out_dim = out_dim or dim // 2
        self.norm = nn.LayerNorm(dim)
        self.expand = nn.Linear(dim, 4 * self.out_dim, bias=False)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        *lead, h, w, _ = x.shape
        if not (size[0] <= 2 * h and size[1] <= 2 * w):
            raise ValueError(f"PatchExpand of a {h} x {w} grid cannot reach {tuple(size)}.")
        x = self.expand(self.norm(x)).view(*lead, h, w, 2, 2, self.out_dim)
        nd = len(lead)
        x = x.permute(*range(nd), nd, nd + 2, nd + 1, nd + 3, nd + 4)  # (*L, H, 2, W, 2, C)
        x = x.reshape(*lead, 2 * h, 2 * w, self.out_dim)
        return x[..., : size[0], : size[1], :]


def resample_pos_embed(pos: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A learned position embedding (1, *S, C) on another grid: itself when ``S == size``, else
    (bi/tri)linearly resampled over the spatial axes (as timm's ``dynamic_img_size``)."""
    if tuple(pos.shape[1:-1]) == tuple(size):
        return pos
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    moved = pos.movedim(-1, 1)  # (1, C, *S)
    resized = F.interpolate(moved, size=tuple(size), mode=mode, align_corners=False)
    return resized.movedim(1, -1)
