"""FNP: Fourier Neural Processes for data assimilation at arbitrary resolution.

Paper
    K. Chen, P. Ye, H. Chen, K. Chen, T. Han, W. Ouyang, T. Chen, L. Bai (2024), "FNP: Fourier
    Neural Processes for Arbitrary-Resolution Data Assimilation", NeurIPS 2024,
    https://arxiv.org/abs/2406.01645.
Upstream code
    ``OpenEarthLab/FNP`` (``models/FNP.py``) and the copy in ``figerhaowang/DAMBench``. This file is
    written from the description in ``shared/reference/baselines.md`` section 4; no code was copied
    (the upstream repositories carry no licence).

Architecture
    The encoder / fusion / decoder pattern of :mod:`baselines.layers.np_blocks` (shared with
    ConvCNP), once per branch. The channels are split into variable groups (``channel_groups``;
    for the 69-channel layout the surface block and one group per upper-air variable,
    ``[4, 13, 13, 13, 13, 13]``) plus one all-variable branch. Every branch has an observation
    encoder (mask = observation mask) and a background encoder (mask = ones) with the same
    structure and separate weights:

    - a positive SetConv (:class:`~baselines.layers.conv.SetConvEmbed`): depthwise for a group, a
      full C -> C positive convolution for the all-variable branch; density channel and
      normalised signal mapped pointwise to ``embed_dim`` = r channels;
    - ``depth`` neural Fourier layers (:class:`NeuralFourierBlock`):
      ``x <- x + ResConvBlock(x) + SpectralConv(x)``, the spectral convolution keeping ``modes``
      Fourier modes (FNO-style, :class:`SpectralConv2d`).

    The two representations of a branch are fused pointwise (2r -> r), then the dynamic alignment
    and merge (DAM): ``d_o = |R - R_obs|``, ``d_b = |R - R_bg|`` per pixel over channels; the less
    similar of ``R_obs``/``R_bg`` is picked per pixel, concatenated with ``R`` and merged by a
    ``kernel_size`` convolution (2r -> r). Each group's decoder is a pointwise MLP on
    ``[R_group, R_all]`` (2r -> ``decoder_depth`` hidden layers of width r -> 2 c_g): the mean is
    ``background + output`` and ``std = 0.01 + 0.99 softplus(raw)``. Loss: Gaussian NLL.

    ``fnp_full`` (r = 128, 4 blocks, 12 modes, kernel 9, SetConv 11) has 552,100,198 parameters
    at 69 channels (the 552.1 M measured for the upstream model), 528 M of them spectral weights
    (14 encoders x 4 blocks x 2 x 2 x r^2 x 12^2). ``fnp_full(embed_dim=64)`` is the authors'
    smaller setting (139 M).

Deliberate deviations
    - Padding: every spatial convolution pads on the sphere (:mod:`baselines.layers.sphere_pad`)
      instead of zero padding; the model is exactly equivariant to rolls in longitude.
    - Spectral convolution: by default (``fourier_domain="sphere"``) the field is first extended
      across the poles to a doubly periodic field (the double Fourier sphere: rows
      ``0..H-1`` followed by rows ``H-2..1`` shifted by 180 degrees of longitude, 2H - 2 rows), so
      the latitude FFT sees the sphere's true periodicity instead of wrapping the south pole onto
      the north pole. Latitude modes then count waves around a whole meridian circle, like the
      longitude modes. ``fourier_domain="torus"`` is upstream's plain ``rfft2`` on (H, W).
    - Training of the CPU-sized ``*_small`` configs: ``nll_beta=1`` and ``detach_std=True``.
      Measured on era5-sample: with the plain NLL the shared features learn the std first (small
      next to observations) and the mean stays at the background for 100+ steps; with beta-NLL
      (beta = 1) and a std decoder on detached features the mean learns as fast as under an MSE
      loss while the model still predicts a std. The ``*_full`` configs keep the upstream NLL.
    - ``modes`` is configurable (upstream hard-codes 12) and clipped to what a grid holds, so any
      (H, W) works.
    - Layout: channels-first (B, C, H, W) on the dataset's grid; observations share the
      background's grid, so the upstream bilinear resize of the observation representation is the
      identity and is left out.
    - Loss: the NLL is averaged over elements instead of summed over pixels and channels.
    - The decoders' mean outputs start at exactly 0 (zero-initialised last layer), so the
      untrained model returns the background and training starts from it.
    - ``channel_groups`` is an argument; its default follows the schema layout when C = 4 + 13 k
      (the surface block, then one group per upper-air variable) and is one group otherwise.
    - ``batch.modalities`` are ignored by FNP itself. The multi-modal adapter (``multi_fnp_*``,
      :mod:`baselines.models.multi`) adds its context to the observation representation of every
      branch before its fusion (one slot of ``embed_dim`` channels per group branch, then one
      for the all-variable branch, :meth:`FNP.adapter_slots`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from baselines.interface import Analysis, BaselineModule, DABatch, ModelInfo
from baselines.layers.adapter import adapter_context
from baselines.layers.conv import ActName, NormName, ResConvBlock, SphereConv2d
from baselines.layers.gaussian import (
    MIN_STD,
    GaussianHead,
    GaussianPredictive,
    check_batch,
)
from baselines.layers.np_blocks import GaussianDecoder, ObservationBackgroundFusion, SetConvEncoder
from baselines.registry import register_variants
from dambench import schema

__all__ = [
    "FNP",
    "FNPBranch",
    "NeuralFourierBlock",
    "SpectralConv2d",
    "default_channel_groups",
    "double_fourier_sphere",
    "fnp_encoder",
]

FourierDomain = Literal["sphere", "torus"]
FOURIER_DOMAINS: tuple[str, ...] = ("sphere", "torus")
_N_SURFACE = len(schema.SURFACE_VARIABLES)
_N_LEVELS = len(schema.LEVELS_HPA)


# --- building blocks ---------------------------------------------------------------------------


def default_channel_groups(in_chans: int) -> list[int]:
    """Variable groups of the schema's channel layout for ``in_chans`` channels.

    ``[4, 13, ..., 13]`` (the surface block, then one group per upper-air variable over its 13
    levels) when ``in_chans = 4 + 13 k``, e.g. ``[4, 13, 13, 13, 13, 13]`` for the 69 channels and
    ``[4]`` for the 4 surface channels; a single group ``[in_chans]`` otherwise.
    """
    if in_chans >= _N_SURFACE and (in_chans - _N_SURFACE) % _N_LEVELS == 0:
        return [_N_SURFACE] + [_N_LEVELS] * ((in_chans - _N_SURFACE) // _N_LEVELS)
    return [in_chans]


def double_fourier_sphere(x: torch.Tensor) -> torch.Tensor:
    """Extend (..., H, W) pole-to-pole rows to a field periodic in latitude, (..., 2H - 2, W).

    Rows ``0..H-1`` are followed by rows ``H-2, ..., 1`` rolled by ``W // 2`` columns: walking
    past the south pole along a meridian continues up the opposite meridian, and past row
    ``2H - 3`` the walk is back at the north pole (row 0). Assumes rows 0 and H-1 lie on the poles.
    """
    back = torch.roll(torch.flip(x[..., 1:-1, :], dims=[-2]), x.shape[-1] // 2, dims=-1)
    return torch.cat([x, back], dim=-2)  # (..., 2H - 2, W)


class SpectralConv2d(nn.Module):
    """FNO-style spectral convolution: FFT, a learned complex linear map per kept mode, inverse.

    Keeps latitude frequencies ``[0, m_lat)`` and ``[-m_lat, 0)`` and longitude frequencies
    ``[0, m_lon)`` of ``rfft2``; two complex weight sets (in, out, m_lat, m_lon) for the positive
    and negative latitude frequencies. Computed in float32 with autocast off (cuFFT in half
    precision needs power-of-two sizes).

    Parameters
    ----------
    in_channels, out_channels
        Channel counts.
    modes
        ``m`` or ``(m_lat, m_lon)``; clipped at run time to ``(n_lat // 2, W // 2 + 1)``.
    fourier_domain
        ``"sphere"``: FFT of :func:`double_fourier_sphere` of the input, cropped back to H rows;
        ``"torus"``: FFT of the input as it is (upstream).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        modes: int | Sequence[int] = 12,
        *,
        fourier_domain: FourierDomain = "sphere",
    ) -> None:
        super().__init__()
        if fourier_domain not in FOURIER_DOMAINS:
            raise ValueError(f"Unknown {fourier_domain=}; choose from {FOURIER_DOMAINS}.")
        m_lat, m_lon = (modes, modes) if isinstance(modes, int) else tuple(modes)
        if m_lat < 1 or m_lon < 1:
            raise ValueError(f"modes must be >= 1; got {modes=}.")
        self.modes = (int(m_lat), int(m_lon))
        self.fourier_domain = fourier_domain
        scale = 1.0 / (in_channels * out_channels)
        # (2 latitude halves, in, out, m_lat, m_lon, [real, imag]), FNO's uniform initialisation
        self.weight = nn.Parameter(
            scale * torch.rand(2, in_channels, out_channels, m_lat, m_lon, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W), in the input's dtype."""
        dtype = x.dtype
        n_rows, n_lon = x.shape[-2:]
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if self.fourier_domain == "sphere":
                x = double_fourier_sphere(x)  # (B, C_in, 2H - 2, W)
            n_lat = x.shape[-2]
            spectrum = torch.fft.rfft2(x)  # (B, C_in, n_lat, W // 2 + 1) complex
            m_lat = min(self.modes[0], n_lat // 2)
            m_lon = min(self.modes[1], n_lon // 2 + 1)
            weight = torch.view_as_complex(self.weight)  # (2, C_in, C_out, M_lat, M_lon)
            out = spectrum.new_zeros(
                (x.shape[0], weight.shape[2], n_lat, n_lon // 2 + 1)
            )  # (B, C_out, n_lat, W // 2 + 1)
            out[..., :m_lat, :m_lon] = torch.einsum(
                "bixy,ioxy->boxy", spectrum[..., :m_lat, :m_lon], weight[0, :, :, :m_lat, :m_lon]
            )
            out[..., n_lat - m_lat :, :m_lon] = torch.einsum(
                "bixy,ioxy->boxy",
                spectrum[..., n_lat - m_lat :, :m_lon],
                weight[1, :, :, :m_lat, :m_lon],
            )
            y = torch.fft.irfft2(out, s=(n_lat, n_lon))  # (B, C_out, n_lat, W)
        return y[..., :n_rows, :].to(dtype)  # (B, C_out, H, W)

    def extra_repr(self) -> str:
        return (
            f"{self.weight.shape[1]}, {self.weight.shape[2]}, modes={self.modes}, "
            f"fourier_domain={self.fourier_domain!r}"
        )


class NeuralFourierBlock(nn.Module):
    """Neural Fourier layer: ``x + ResConvBlock(x) + SpectralConv2d(x)``, (B, r, H, W) -> same."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 9,
        modes: int | Sequence[int] = 12,
        *,
        act_layer: ActName = "silu",
        norm_layer: NormName = "batch",
        fourier_domain: FourierDomain = "sphere",
    ) -> None:
        super().__init__()
        self.conv = ResConvBlock(dim, kernel_size, act_layer=act_layer, norm_layer=norm_layer)
        self.spectral = SpectralConv2d(dim, dim, modes, fourier_domain=fourier_domain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, r, H, W) -> (B, r, H, W)."""
        return x + self.conv(x) + self.spectral(x)


def fnp_encoder(
    in_chans: int,
    embed_dim: int,
    depth: int,
    kernel_size: int,
    setconv_kernel_size: int,
    modes: int | Sequence[int],
    *,
    depthwise: bool = True,
    act_layer: ActName = "silu",
    norm_layer: NormName = "batch",
    fourier_domain: FourierDomain = "sphere",
) -> SetConvEncoder:
    """SetConv embedding followed by ``depth`` :class:`NeuralFourierBlock`.

    (B, c, H, W) values and mask -> (B, embed_dim, H, W). ``depthwise=False`` makes the SetConv a
    full c -> c positive convolution (the all-variable branch).
    """

    def block() -> nn.Module:
        return NeuralFourierBlock(
            embed_dim,
            kernel_size,
            modes,
            act_layer=act_layer,
            norm_layer=norm_layer,
            fourier_domain=fourier_domain,
        )

    return SetConvEncoder(
        in_chans, embed_dim, setconv_kernel_size, block, depth, depthwise=depthwise
    )


class FNPBranch(ObservationBackgroundFusion):
    """One variable group (or the all-variable branch): two encoders, fusion and DAM.

    Parameters
    ----------
    in_chans
        Channels c of the group.
    embed_dim, kernel_size, encoder_args
        Width r, the DAM convolution's kernel and the remaining :func:`fnp_encoder` arguments.
    use_dam
        Apply the dynamic alignment and merge after the pointwise fusion.
    """

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        kernel_size: int,
        *,
        use_dam: bool = True,
        **encoder_args: Any,
    ) -> None:
        super().__init__(
            lambda: fnp_encoder(in_chans, embed_dim, kernel_size=kernel_size, **encoder_args),
            embed_dim,
        )
        self.merge = SphereConv2d(2 * embed_dim, embed_dim, kernel_size) if use_dam else None

    def forward(
        self,
        observation: torch.Tensor,
        mask: torch.Tensor,
        background: torch.Tensor,
        obs_context: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B, c, H, W) observation, mask and background -> (B, r, H, W) representation
        (``obs_context``: the adapter entry on the observation representation, see
        :meth:`~baselines.layers.np_blocks.ObservationBackgroundFusion.encode`)."""
        fused, r_obs, r_bg = self.encode(observation, mask, background, obs_context)
        if self.merge is None:
            return fused
        with torch.no_grad():
            d_obs = torch.linalg.vector_norm(fused - r_obs, dim=1, keepdim=True)  # (B, 1, H, W)
            d_bg = torch.linalg.vector_norm(fused - r_bg, dim=1, keepdim=True)  # (B, 1, H, W)
        aligned = torch.where(d_obs > d_bg, r_obs, r_bg)  # (B, r, H, W), the less similar one
        return self.merge(torch.cat([fused, aligned], dim=1))  # (B, r, H, W)


# --- model -------------------------------------------------------------------------------------


class FNP(GaussianPredictive, BaselineModule):
    """Fourier Neural Process: per-group and all-variable branches, group decoders on the
    background.

    Parameters
    ----------
    in_chans
        Number of channels C.
    embed_dim
        Representation width r of every branch (upstream: 128; 64 at 0.25 deg).
    depth
        Neural Fourier blocks per encoder (upstream: 4).
    kernel_size
        Odd kernel of the residual blocks' depthwise convolutions and of the DAM merge (9).
    setconv_kernel_size
        Odd kernel of the positive SetConvs (11).
    modes
        Kept Fourier modes ``m`` or ``(m_lat, m_lon)`` (upstream: 12).
    channel_groups
        Sizes of consecutive channel groups, summing to ``in_chans``; ``None`` for
        :func:`default_channel_groups`.
    decoder_depth
        Hidden layers (width r) of each group's pointwise decoder MLP (4).
    act_layer, norm_layer
        Activation and normalisation of the residual blocks (upstream: SiLU, BatchNorm).
    use_dam
        Dynamic alignment and merge after the fusion (upstream default True).
    fourier_domain
        ``"sphere"`` (double Fourier sphere, default) or ``"torus"`` (upstream), see
        :class:`SpectralConv2d`.
    min_std
        Lower bound of the predicted std (normalised units).
    nll_beta
        beta of the beta-NLL training loss (0: the plain Gaussian NLL, upstream; see
        :func:`~baselines.layers.gaussian.gaussian_loss`).
    detach_std
        Predict the std with separate pointwise decoders on detached features, so that only the
        mean's loss trains the encoders (False: one decoder per group for both, upstream).
    """

    def __init__(
        self,
        in_chans: int = 69,
        embed_dim: int = 128,
        depth: int = 4,
        kernel_size: int = 9,
        setconv_kernel_size: int = 11,
        modes: int | Sequence[int] = 12,
        channel_groups: Sequence[int] | None = None,
        decoder_depth: int = 4,
        act_layer: ActName = "silu",
        norm_layer: NormName = "batch",
        use_dam: bool = True,
        fourier_domain: FourierDomain = "sphere",
        min_std: float = MIN_STD,
        nll_beta: float = 0.0,
        detach_std: bool = False,
    ) -> None:
        super().__init__()
        groups = (
            default_channel_groups(in_chans) if channel_groups is None else list(channel_groups)
        )
        if any(int(g) < 1 for g in groups) or sum(groups) != in_chans:
            raise ValueError(
                f"channel_groups must be positive sizes summing to in_chans={in_chans}; got "
                f"{groups} (sum {sum(groups)})."
            )
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.channel_groups = [int(g) for g in groups]
        encoder_args: dict[str, Any] = {
            "embed_dim": embed_dim,
            "kernel_size": kernel_size,
            "use_dam": use_dam,
            "depth": depth,
            "setconv_kernel_size": setconv_kernel_size,
            "modes": modes,
            "act_layer": act_layer,
            "norm_layer": norm_layer,
            "fourier_domain": fourier_domain,
        }
        self.group_branches = nn.ModuleList(
            FNPBranch(g, depthwise=True, **encoder_args) for g in self.channel_groups
        )
        self.all_branch = FNPBranch(in_chans, depthwise=False, **encoder_args)
        self.decoders = nn.ModuleList(
            GaussianDecoder(
                2 * embed_dim,
                embed_dim,
                g,
                decoder_depth,
                detach_std=detach_std,
                zero_mean=True,  # untrained: analysis = background
            )
            for g in self.channel_groups
        )
        self.head = GaussianHead(min_std)
        self.nll_beta = nll_beta

    def _group_slices(self) -> list[slice]:
        bounds = torch.tensor([0, *self.channel_groups]).cumsum(0).tolist()
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def adapter_slots(self) -> tuple[int, ...]:
        """Channels of the adapter entries (``ModelInfo.adapter_entry``): the observation
        representation (B, embed_dim, H, W) of each group branch, then of the all-variable
        branch."""
        return (self.embed_dim,) * (len(self.channel_groups) + 1)

    def forward_features(self, batch: DABatch) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-group representations [(B, r, H, W)] and the all-variable one (B, r, H, W) (with
        an attached adapter's context added to each branch's observation representation)."""
        check_batch(batch, self.in_chans, type(self).__name__)
        obs, mask, bg = batch.observation, batch.mask, batch.background
        context = adapter_context(self, batch)  # NO_CONTEXT without an adapter: adds nothing
        groups = [
            branch(obs[:, s], mask[:, s], bg[:, s], obs_context=context.entry(k))  # (B, r, H, W)
            for k, (branch, s) in enumerate(
                zip(self.group_branches, self._group_slices(), strict=True)
            )
        ]
        r_all = self.all_branch(obs, mask, bg, obs_context=context.entry(len(groups)))
        return groups, r_all

    def forward_head(
        self, groups: list[torch.Tensor], r_all: torch.Tensor, background: torch.Tensor
    ) -> Analysis:
        """Group representations and the all-variable one -> Analysis (B, C, H, W)."""
        raw_means, raw_stds = [], []
        for decoder, r_group in zip(self.decoders, groups, strict=True):
            features = torch.cat([r_group, r_all], dim=1)  # (B, 2r, H, W)
            raw_mean, raw_std = decoder(features)  # 2 x (B, c_g, H, W)
            raw_means.append(raw_mean)
            raw_stds.append(raw_std)
        increment = torch.cat(raw_means, dim=1)  # (B, C, H, W), groups in channel order
        mean, std = self.head(background + increment, torch.cat(raw_stds, dim=1))
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
            ``mean`` (background + learned increment) and ``std``, (B, C, H, W).
        """
        groups, r_all = self.forward_features(batch)
        return self.forward_head(groups, r_all, batch.background)


# --- registered variants (configs as data) ------------------------------------------------------

INFO = ModelInfo(
    output="gaussian",
    trainable=True,
    adapter_entry="observation_representation",
    paper="Chen et al. (2024), Fourier Neural Processes for arbitrary-resolution data "
    "assimilation, NeurIPS, https://arxiv.org/abs/2406.01645",
    code="https://github.com/OpenEarthLab/FNP",
    code_licence="none (no licence file)",
)

register_variants(
    FNP,
    {
        "fnp_tiny": (
            "CPU-test size: r = 8, 1 block, 4 modes, kernels 5, 2-layer decoders.",
            dict(
                in_chans=4,
                embed_dim=8,
                depth=1,
                kernel_size=5,
                setconv_kernel_size=5,
                modes=4,
                decoder_depth=2,
            ),
        ),
        "fnp_small": (
            "CPU-training size: r = 16, 1 block, 8 modes, kernel 9, SetConv 11.",
            dict(
                in_chans=4,
                embed_dim=16,
                depth=1,
                kernel_size=9,
                setconv_kernel_size=11,
                modes=8,
                decoder_depth=4,
            ),
        ),
        "fnp_full": (
            "Published size: r = 128, 4 blocks, 12 modes, kernel 9, SetConv 11, groups "
            "[4, 13, 13, 13, 13, 13]; 552.10 M parameters at 69 channels (528.48 M spectral).",
            dict(
                in_chans=69,
                embed_dim=128,
                depth=4,
                kernel_size=9,
                setconv_kernel_size=11,
                modes=12,
                decoder_depth=4,
            ),
        ),
    },
    info=INFO,
)
