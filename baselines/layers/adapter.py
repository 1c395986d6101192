"""The multi-modal representation adapter (DAMBench paper, section 5.2) and its host entry point.

Paper
    Wang, Weng, Han, Fan, Liu (2025), "DAMBench: A Multi-Modal Benchmark for Deep Learning-based
    Atmospheric Data Assimilation", https://arxiv.org/abs/2511.01468, section 5.2 and Figure 3.
    No code was published; widths, depths, heads and patch sizes are dambench's choices
    (``shared/reference/baselines.md`` section 8.2).

What it does
    Each modality *stream* (a schema modality group: ``precip`` with its gauge counts
    ``precip_gauges``, or ``olr``) is cut into non-overlapping ``patch_size`` patches of its
    fields and their per-cell presence channels (timm ``PatchEmbed``; the 121-row grid is padded
    at the bottom, the padding marked absent), a positional embedding (learned, resampled to
    other grids, or fixed 2-D sin-cos) and a learned modality-type embedding are added, and one
    self-attention layer with a residual and a *post*-norm LayerNorm follows (the paper's
    eq. 14: ``e = LayerNorm(e_E + Attn(e_E))``; timm's ``Block`` is pre-norm, so it is not used
    there). The tokens of all streams are concatenated into a shared transformer encoder (timm
    ``Block``s and a final LayerNorm), split back per stream and summed on the common patch
    grid. One linear head per entry slot projects every token to ``channels x patch`` values,
    which are unpatchified, cropped to the grid (resized when the entry's grid is coarser) and
    **added** to the host's features at that slot. Every head is zero-initialised, so a trained
    host is unchanged bit for bit at step 0.

Missing data (never zero-filled fakes)
    - Per sample: ``batch.modality_present`` decides whether a stream exists. A stream is
      present when its primary variable (the one named like its group: ``precip``, ``olr``) is;
      a count channel alone (``precip_gauges``) describes a missing field but is no observation.
    - Per cell: :meth:`~baselines.interface.DABatch.modality_cells`, i.e. the loader's
      ``batch.modality_mask`` (1 where the store's value is finite, so a present value equal to
      the train-split mean, 0 after the z-score, is data) within a present variable. Every
      variable of a stream gives its values and this per-cell presence as input channels (a
      gauge count of 0 is a stored value: "no gauge in this cell"). A batch built without a
      mask falls back to ``value != 0`` (its documented encoding: 0 where absent).
    - Tokens: only patches holding at least one present cell of the stream's primary variable
      (of any of its variables when it has none) become tokens (attention masks the others):
      a gauge-count field defined everywhere does not turn every patch into a precipitation
      token. The context is exactly 0 on patches without a token, and exactly 0 everywhere
      for a sample without any: the host then sees its own features.

Host entry point (how a model declares where the context enters)
    A host model (a ``ModelInfo`` with ``adapter_entry``) defines ``adapter_slots()``: the
    channels of each feature tensor the context is added to, and at that point in its forward
    pass calls::

        context = adapter_context(self, batch)  # NO_CONTEXT unless an adapter is attached
        features = context.add(features, slot=0)  # the identity without one

    ``features`` is (B, *lead, H', W') with ``prod(lead)`` equal to that slot's channels
    (ConvCNP: the observation representation (B, r, H, W); Adas: tokens (B, d, L, Hp, Wp);
    every host's entry: the table in :mod:`baselines.models.multi`). A host whose own loss
    never reaches its entry adds a term for the adapter whenever :func:`has_adapter` holds.
    :func:`attach_adapter` makes any such host multi-modal by composition. A host that needs
    modules of its own on the multi-modal side (VAE-Var's learned modality operators) adds
    them to the adapter's ``extras`` (:func:`add_adapter_extra`, found again with
    :func:`adapter_extra`): they are then saved, loaded and trained as the adapter's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from timm.layers import (
    Attention,
    PatchEmbed,
    build_sincos2d_pos_embed,
    resample_abs_pos_embed,
    trunc_normal_,
)
from timm.models.vision_transformer import Block
from torch import nn
from torch.nn import functional as F

from baselines.interface import DABatch
from dambench import schema
from dambench.exceptions import DambenchInputError

__all__ = [
    "ADAPTER_ATTRIBUTE",
    "NO_CONTEXT",
    "AdapterContext",
    "ModalityStream",
    "MultiModalAdapter",
    "adapter_context",
    "adapter_extra",
    "add_adapter_extra",
    "attach_adapter",
    "has_adapter",
    "modality_streams",
]

PosEmbedName = Literal["learned", "sincos"]
POS_EMBEDS: tuple[str, ...] = ("learned", "sincos")
ADAPTER_ATTRIBUTE = "multimodal_adapter"
"""Name of the adapter submodule on a host (its ``state_dict`` keys start with it)."""
CANONICAL_GRID = (schema.N_LATITUDE, schema.N_LONGITUDE)
"""(H, W) the learned position table is sized for by default (121 x 240)."""


# --- streams -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModalityStream:
    """One modality group fed to its own patch embedding.

    Attributes
    ----------
    group
        The schema group (``"precip"``, ``"olr"``).
    indices
        Positions of its variables in ``batch.modalities`` (dim 1).
    primary
        Position (within ``indices``) of the variable whose presence decides the stream's, or
        ``None`` when it is not given (then any of its variables decides).
    """

    group: str
    indices: tuple[int, ...]
    primary: int | None


def modality_streams(names: Sequence[str]) -> list[ModalityStream]:
    """Group the loader's modality ``names`` (in ``batch.modalities`` order) by schema group.

    Raises
    ------
    DambenchInputError
        A name that is not a schema modality, or a repeated name.
    """
    names = [str(n) for n in names]
    unknown = [n for n in names if n not in schema.MODALITIES]
    if unknown or len(set(names)) != len(names):
        raise DambenchInputError(
            f"Adapter modalities {names} must be distinct schema modalities "
            f"{list(schema.MODALITIES)}; unknown: {unknown}."
        )
    groups = dict.fromkeys(schema.MODALITIES[n].group for n in names)
    streams = []
    for group in groups:
        indices = tuple(i for i, n in enumerate(names) if schema.MODALITIES[n].group == group)
        members = [names[i] for i in indices]
        primary = members.index(group) if group in members else None
        streams.append(ModalityStream(group, indices, primary))
    return streams


# --- building blocks ---------------------------------------------------------------------------


def _key_mask(valid: torch.Tensor) -> torch.Tensor:
    """Boolean key mask (B, 1, 1, L), True where a key takes part, from token validity (B, L);
    a row without any valid key attends to all (finite outputs, zeroed later). Boolean, so it
    fits the attention's dtype under autocast."""
    keep = valid | ~valid.any(dim=1, keepdim=True)  # (B, L)
    return keep[:, None, None, :]  # (B, 1, 1, L)


def _patch_any(cells: torch.Tensor, patch_size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) bool -> (B, gh, gw): whether each patch holds a True cell (the bottom and right
    padding of :class:`~timm.layers.PatchEmbed`'s ``dynamic_img_pad`` counts as False)."""
    ph, pw = patch_size
    height, width = cells.shape[-2:]
    padded = F.pad(cells[:, None].float(), (0, (-width) % pw, 0, (-height) % ph))
    return F.max_pool2d(padded, patch_size)[:, 0] > 0  # (B, gh, gw)


class PostNormSelfAttention(nn.Module):
    """``LayerNorm(x + Attn(x))`` on (B, L, d) tokens with a key mask (the paper's eq. 14)."""

    def __init__(self, dim: int, num_heads: int, *, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.attn = Attention(
            dim, num_heads, qkv_bias=True, attn_drop=drop_rate, proj_drop=drop_rate
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(B, L, d) tokens and a (B, 1, 1, L) boolean key mask -> (B, L, d)."""
        return self.norm(x + self.attn(x, attn_mask=keys))


class StreamEmbed(nn.Module):
    """Patch embedding of one stream's fields and presence channels, plus its positional and
    modality-type embeddings: (B, 2 V, H, W) -> (B, gh, gw, d) tokens.

    Parameters
    ----------
    n_vars
        Variables V of the stream (each gives a value and a presence channel).
    embed_dim, patch_size, img_size
        Token width d, patch (ph, pw) and the grid the learned position table is sized for.
    pos_embed
        ``"learned"`` (a trunc-normal table over ``img_size``'s patch grid, resampled
        bilinearly for another grid) or ``"sincos"`` (fixed 2-D sin-cos for any grid).
    """

    def __init__(
        self,
        n_vars: int,
        embed_dim: int,
        patch_size: tuple[int, int],
        img_size: tuple[int, int],
        pos_embed: PosEmbedName,
    ) -> None:
        super().__init__()
        self.patch = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=2 * n_vars,
            embed_dim=embed_dim,
            strict_img_size=False,
            dynamic_img_pad=True,  # 121 rows -> a multiple of ph (padding marked absent)
            output_fmt="NHWC",
        )
        self.base_grid = tuple(self.patch.dynamic_feat_size(img_size))  # NOT pe.grid_size
        self.pos_embed = None
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.base_grid), embed_dim))
            trunc_normal_(self.pos_embed, std=0.02)
        self.type_embed = nn.Parameter(torch.zeros(1, 1, 1, embed_dim))
        trunc_normal_(self.type_embed, std=0.02)

    def positions(self, grid: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        """(1, gh, gw, d) positional embedding for a ``grid`` of tokens."""
        dim = self.type_embed.shape[-1]
        if self.pos_embed is None:
            table = build_sincos2d_pos_embed(list(grid), dim=dim, device=like.device)
            return table.to(like.dtype).reshape(1, *grid, dim)
        table = self.pos_embed
        if grid != self.base_grid:
            table = resample_abs_pos_embed(
                table, list(grid), list(self.base_grid), num_prefix_tokens=0,
                interpolation="bilinear",
            )  # fmt: skip
        return table.reshape(1, *grid, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2 V, H, W) -> (B, gh, gw, d)."""
        tokens = self.patch(x)  # (B, gh, gw, d)
        grid = tuple(tokens.shape[1:3])
        return tokens + self.positions(grid, tokens) + self.type_embed


# --- the context handed to a host ----------------------------------------------------------------


@dataclass(frozen=True)
class AdapterContext:
    """The fused representation of one batch and how to add it at a host's entry slots.

    Attributes
    ----------
    tokens
        (B, gh, gw, d) fused tokens, exactly 0 where no token exists; ``None`` for
        :data:`NO_CONTEXT`.
    valid
        (B, gh, gw, 1) 1.0 where a token exists.
    heads
        One zero-initialised ``Linear(d, channels * ph * pw)`` per slot.
    patch_size, grid_shape
        (ph, pw) and the batch's (H, W).
    """

    tokens: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    heads: nn.ModuleList | None = None
    patch_size: tuple[int, int] = (1, 1)
    grid_shape: tuple[int, int] = (0, 0)

    def field(self, slot: int) -> torch.Tensor:
        """The context of ``slot`` on the batch's grid, (B, channels, H, W)."""
        ph, pw = self.patch_size
        batch, gh, gw, _ = self.tokens.shape
        values = self.heads[slot](self.tokens) * self.valid  # (B, gh, gw, c ph pw)
        values = values.reshape(batch, gh, gw, -1, ph, pw)  # (B, gh, gw, c, ph, pw)
        values = values.permute(0, 3, 1, 4, 2, 5).reshape(batch, -1, gh * ph, gw * pw)
        height, width = self.grid_shape
        return values[..., :height, :width]  # (B, c, H, W): the padded rows cropped

    def add(self, features: torch.Tensor, slot: int = 0) -> torch.Tensor:
        """``features`` (B, *lead, H', W') plus the context of ``slot``; ``features`` itself
        without a context. The context is resized (bilinear, antialiased) when (H', W') is
        not the batch's grid and reshaped to ``features``' shape."""
        if self.tokens is None:
            return features
        context = self.field(slot)  # (B, c, H, W)
        spatial = tuple(features.shape[-2:])
        if spatial != tuple(context.shape[-2:]):
            context = F.interpolate(
                context, size=spatial, mode="bilinear", align_corners=False, antialias=True
            )  # (B, c, H', W')
        if context[0].numel() != features[0].numel():
            raise DambenchInputError(
                f"Adapter slot {slot} gives {context.shape[1]} channels, but the host's features "
                f"at that slot are {tuple(features.shape)} (prod of the lead dims must match); "
                "fix the host's adapter_slots()."
            )
        return features + context.reshape(features.shape).to(features.dtype)

    def entry(self, slot: int = 0) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``features -> add(features, slot)``, or ``None`` without a context."""
        return None if self.tokens is None else partial(self.add, slot=slot)


NO_CONTEXT = AdapterContext()
"""The context of a host without an adapter (or of a batch without any token): adds nothing."""


def has_adapter(host: nn.Module) -> bool:
    """Whether an adapter is attached to ``host`` (:func:`attach_adapter`): a host whose loss
    adds a term only for the adapter includes it whenever this holds, so the loss and its
    diagnostics keep one definition over batches with and without modalities."""
    return getattr(host, ADAPTER_ATTRIBUTE, None) is not None


def add_adapter_extra(host: nn.Module, name: str, module: nn.Module) -> None:
    """Attach ``module`` to ``host``'s adapter as ``extras[name]``: a host-specific module that
    belongs to the multi-modal part (VAE-Var's modality operators). Its ``state_dict`` keys
    start with ``multimodal_adapter.extras.``, so a host checkpoint loads without it and
    ``train.freeze: [host]`` leaves it trainable.

    Raises
    ------
    DambenchInputError
        ``host`` has no adapter, or already has an extra of that name.
    """
    adapter = getattr(host, ADAPTER_ATTRIBUTE, None)
    if adapter is None or name in adapter.extras:
        problem = "has no adapter" if adapter is None else f"already has an adapter extra {name!r}"
        raise DambenchInputError(
            f"{type(host).__name__} {problem}; attach_adapter first, and each extra once."
        )
    adapter.extras[name] = module


def adapter_extra(host: nn.Module, name: str) -> nn.Module | None:
    """The module :func:`add_adapter_extra` attached to ``host``'s adapter as ``name``, or
    ``None`` (no adapter, or no such extra)."""
    adapter = getattr(host, ADAPTER_ATTRIBUTE, None)
    if adapter is None or name not in adapter.extras:
        return None
    return adapter.extras[name]


def adapter_context(host: nn.Module, batch: DABatch) -> AdapterContext:
    """The adapter context of ``batch`` for ``host``: :data:`NO_CONTEXT` unless an adapter is
    attached (:func:`attach_adapter`) and some sample has a token. Call it once per forward pass
    and add the context at the entry slots with :meth:`AdapterContext.add`."""
    adapter = getattr(host, ADAPTER_ATTRIBUTE, None)
    return NO_CONTEXT if adapter is None else adapter(batch)


# --- the adapter -------------------------------------------------------------------------------


class MultiModalAdapter(nn.Module):
    """Per-stream patch embedding and post-norm self-attention, a shared transformer encoder
    and zero-initialised projection heads into a host's entry slots.

    Parameters
    ----------
    modalities
        The loader's modality names, in ``batch.modalities`` order (e.g. ``["precip",
        "precip_gauges"]`` on era5-sample).
    slot_channels
        Channels of each host entry slot (the host's ``adapter_slots()``).
    embed_dim, num_heads
        Token width d and attention heads (per-stream layer and encoder).
    depth
        Blocks of the shared encoder (timm ``Block``, pre-norm, MLP ratio ``mlp_ratio``).
    patch_size
        ``p`` or ``(ph, pw)``.
    img_size
        Grid the learned position table is sized for (121 x 240).
    pos_embed
        ``"learned"`` (the paper) or ``"sincos"``.
    drop_rate
        Dropout of attention, projections and MLPs.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        slot_channels: Sequence[int],
        *,
        embed_dim: int = 128,
        num_heads: int = 4,
        depth: int = 2,
        patch_size: int | Sequence[int] = 8,
        img_size: Sequence[int] = CANONICAL_GRID,
        pos_embed: PosEmbedName = "learned",
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        patch = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        problems = {
            f"embed_dim={embed_dim} must be a positive multiple of num_heads={num_heads}": (
                embed_dim < 1 or num_heads < 1 or embed_dim % num_heads
            ),
            f"depth={depth} must be >= 0": depth < 0,
            f"patch_size={patch_size} must be positive": len(patch) != 2 or min(patch) < 1,
            f"pos_embed={pos_embed!r} must be one of {POS_EMBEDS}": pos_embed not in POS_EMBEDS,
            f"slot_channels={list(slot_channels)} must be positive": not slot_channels
            or min(slot_channels) < 1,
        }
        failed = [message for message, bad in problems.items() if bad]
        if failed:
            raise DambenchInputError("Invalid adapter settings: " + "; ".join(failed) + ".")
        self.modalities = tuple(str(n) for n in modalities)
        self.streams = modality_streams(self.modalities)
        self.patch_size = (int(patch[0]), int(patch[1]))
        grid = (int(img_size[0]), int(img_size[1]))
        self.embeds = nn.ModuleList(
            StreamEmbed(len(s.indices), embed_dim, self.patch_size, grid, pos_embed)
            for s in self.streams
        )
        self.stream_attn = nn.ModuleList(
            PostNormSelfAttention(embed_dim, num_heads, drop_rate=drop_rate) for _ in self.streams
        )
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, proj_drop=drop_rate,
                  attn_drop=drop_rate)
            for _ in range(depth)
        )  # fmt: skip
        self.norm = nn.LayerNorm(embed_dim)
        self.heads = nn.ModuleList(
            nn.Linear(embed_dim, int(c) * math.prod(self.patch_size)) for c in slot_channels
        )
        for head in self.heads:  # the host is unchanged at step 0
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.extras = nn.ModuleDict()  # a host's own adapter-side modules (add_adapter_extra)

    @property
    def slot_channels(self) -> tuple[int, ...]:
        return tuple(h.out_features // math.prod(self.patch_size) for h in self.heads)

    def _inputs(self, batch: DABatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(values (B, M, H, W), per-variable sample presence (B, M) bool, cells holding data
        (B, M, H, W) bool), or ``None`` when the batch carries no modalities (``None`` or
        M = 0)."""
        values = batch.modalities
        if values is None or (values.ndim == 4 and values.shape[1] == 0):
            return None
        expected = len(self.modalities)
        if values.ndim != 4 or values.shape[1] != expected:
            raise DambenchInputError(
                f"The adapter was built for {expected} modalities {list(self.modalities)} "
                f"(in that order); batch.modalities has shape {tuple(values.shape)}. Load the "
                "data with the same modalities (task.modalities / make_dataloader(modalities=))."
            )
        cells = batch.modality_cells()  # checks modality_present and modality_mask
        return values, batch.modality_present > 0, cells

    def stream_tokens(
        self, values: torch.Tensor, present: torch.Tensor, cells: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per stream: tokens (B, gh, gw, d) after the post-norm attention and their validity
        (B, gh, gw) bool (a patch holding a cell with data of the stream's primary variable,
        of any variable without one, in a sample where the stream is present).

        ``values`` (B, M, H, W), ``present`` (B, M) and ``cells`` (B, M, H, W) are
        :meth:`_inputs`'."""
        tokens, valid = [], []
        for stream, embed, attn in zip(self.streams, self.embeds, self.stream_attn, strict=True):
            index = list(stream.indices)
            use = present[:, index]  # (B, V)
            key = use[:, stream.primary] if stream.primary is not None else use.any(dim=1)  # (B,)
            data = cells[:, index] & key[:, None, None, None]  # (B, V, H, W)
            x = torch.cat([values[:, index] * data, data.to(values.dtype)], dim=1)  # (B,2V,H,W)
            e = embed(x)  # (B, gh, gw, d)
            b, gh, gw, d = e.shape
            decides = data[:, stream.primary] if stream.primary is not None else data.any(dim=1)
            ok = _patch_any(decides, self.patch_size)  # (B, gh, gw)
            flat = attn(e.reshape(b, gh * gw, d), _key_mask(ok.reshape(b, -1)))  # (B, gh gw, d)
            tokens.append(flat.reshape(b, gh, gw, d))
            valid.append(ok)
        return tokens, valid

    def fuse(self, tokens: list[torch.Tensor], valid: list[torch.Tensor]) -> torch.Tensor:
        """Shared encoder over the concatenated streams, split back and summed over the valid
        tokens of each patch position: (B, gh, gw, d), 0 where no stream has a token."""
        b, gh, gw, d = tokens[0].shape
        x = torch.cat([t.reshape(b, gh * gw, d) for t in tokens], dim=1)  # (B, S gh gw, d)
        ok = torch.cat([v.reshape(b, gh * gw) for v in valid], dim=1)  # (B, S gh gw)
        keys = _key_mask(ok)  # (B, 1, 1, S gh gw)
        for block in self.blocks:
            x = block(x, attn_mask=keys)
        x = self.norm(x) * ok[..., None].to(x.dtype)  # invalid tokens -> exactly 0
        return x.reshape(b, len(tokens), gh, gw, d).sum(dim=1)  # (B, gh, gw, d)

    def forward(self, batch: DABatch) -> AdapterContext:
        """The :class:`AdapterContext` of ``batch``; :data:`NO_CONTEXT` when no sample has a
        token (no modalities, all absent, or no present cell)."""
        inputs = self._inputs(batch)
        if inputs is None:
            return NO_CONTEXT
        values, present, cells = inputs
        tokens, valid = self.stream_tokens(values, present, cells)
        exists = torch.stack(valid).any(dim=0)  # (B, gh, gw)
        if not bool(exists.any()):
            return NO_CONTEXT
        return AdapterContext(
            tokens=self.fuse(tokens, valid),
            valid=exists[..., None].to(values.dtype),
            heads=self.heads,
            patch_size=self.patch_size,
            grid_shape=tuple(values.shape[-2:]),
        )

    def extra_repr(self) -> str:
        groups = [s.group for s in self.streams]
        return f"modalities={list(self.modalities)}, streams={groups}, patch={self.patch_size}"


# --- composition -------------------------------------------------------------------------------


def attach_adapter(host: nn.Module, modalities: Sequence[str], **adapter_kwargs) -> nn.Module:
    """Attach a :class:`MultiModalAdapter` to ``host`` (in place) and return it.

    The host must declare its entry: ``host.info.adapter_entry`` (its registered
    :class:`~baselines.interface.ModelInfo`) and ``host.adapter_slots()``; the adapter's heads
    get those channels. The adapter becomes the submodule :data:`ADAPTER_ATTRIBUTE`, so the
    host's ``forward``/``loss``/``analyse`` use it through :func:`adapter_context`.
    """
    name = type(host).__name__
    info = getattr(host, "info", None)
    slots = getattr(host, "adapter_slots", None)
    if info is None or info.adapter_entry is None or not callable(slots):
        raise DambenchInputError(
            f"{name} declares no adapter entry point (it needs ModelInfo.adapter_entry and an "
            "adapter_slots() method, and to call adapter_context(self, batch) at that entry)."
        )
    if has_adapter(host):
        raise DambenchInputError(f"{name} already has a multi-modal adapter.")
    host.add_module(ADAPTER_ATTRIBUTE, MultiModalAdapter(modalities, slots(), **adapter_kwargs))
    return host
