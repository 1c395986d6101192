"""SLAMS: score-based latent assimilation in a multimodal setting.

Paper
    Qu, Nathaniel, Li, Gentine (2024), "Deep Generative Data Assimilation in Multimodal
    Setting", CVPR 2024 Workshops (EarthVision), https://arxiv.org/abs/2404.06665.
Upstream code
    ``yongquan-qu/SLAMS`` (no licence found). This file is written from the description in
    ``shared/reference/baselines.md`` sections 7 and 11.2 (the SDA prior and sampler are
    :mod:`baselines.layers.diffusion` and :mod:`baselines.layers.unet`); no code was copied.

Method
    1. A stride-1 convolutional autoencoder maps ``[state slot || observation slot || mask ||
       modalities || modality presence]`` (``3 C + 2 M`` channels at full resolution) to
       ``latent_chans`` latent channels and decodes them to a field of ``C`` channels. What the
       slots hold and what the decoding means is ``latent_space``:

       - ``"increment"`` (dambench's default; every shipped config): fields in background-error
         units, ``e = (x - x_b) / sigma_b`` with ``sigma_b`` the per-channel RMS of ``x* - x_b``
         on the train split. The **clean** input of a cycle is ``[e* || e* || 1 ||
         modalities]``, the **DA** input ``[0 || (y - x_b) / sigma_b || mask || modalities]``
         (the background's own increment is 0), and a latent decodes to the state ``x_b +
         sigma_b (D(z) - D(0))`` (standardised ``z``; :meth:`SLAMS.decode`): the zero latent is
         the background exactly.
       - ``"state"`` (the previous dambench version, as upstream: full states): clean input
         ``[x* || x* || 1 || modalities]``, DA input ``[x_b || y || mask || modalities]``,
         decoding ``D(z)``. The autoencoder must reproduce fields whose variance is mostly the
         pole-to-equator gradient: on era5-sample the decoding of the DA latent alone was worse
         than ``x_b`` for t2m (3.2-4.0 K against 2.29 K; issue 17).

       The autoencoder is trained by :meth:`SLAMS.fit` on the train split (MSE of both
       decodings to the clean field, AdamW, learning rate decaying linearly to 0 as upstream)
       and then frozen.
    2. A score prior (the SDA UNet, window 1) is trained by ``train.py`` on standardised clean
       latents ``(E(clean) - m) / s`` (``m``, ``s`` per latent channel from the train split).
    3. Assimilation samples latents with Gaussian guidance by the latent of (background +
       observations + modalities) as a pseudo-observation: ``y_z = (E(DA) - m) / s ~ N(z,
       sigma_z**2)`` everywhere, ``sigma_z`` the per-channel RMS of the standardised ``E(DA) -
       E(clean)`` on **validation** cycles (:meth:`SLAMS.fit`; floored), which the autoencoder
       never saw. Each observation enters the posterior once, through ``y_z``. With
       ``latent_block = k > 1`` (``slams_small``, ``slams_full``: 8) the term observes the ``k x k`` block
       means of ``y_z`` instead, ``sigma_z`` measured on block means: the latent errors
       ``E(DA) - E(clean)`` are correlated over many cells (the background error the latent of
       the DA input cannot see), and a per-cell term treats each cell as independent evidence,
       which makes the ensemble over-confident (SDA's background term had the same fault;
       :mod:`baselines.models.sda`).
       ``pixel_guidance=True`` (the previous default) adds the observations again in pixel
       space, ``y ~ N(decode(z), sigma_o**2)`` at observed points, as if they were independent
       of ``y_z``: it counts every observation twice and is kept only to reproduce earlier
       numbers. Then each member is decoded. Members, seeds and the cost record are as in
       :mod:`baselines.models.sda`.

Modalities
    ``batch.modalities`` (B, M, H, W) in model space, with their per-cell presence
    (:meth:`~baselines.interface.DABatch.modality_cells`: the loader's ``modality_mask`` within
    the sample's ``modality_present``): a cell without data is multiplied by 0 **and** flagged
    absent by its presence channel, so the encoder can tell "absent" from "zero" (a present
    value equal to the train-split mean is 0 in model space). ``M`` must equal
    ``modality_chans``; a batch without modalities (``None`` or ``M = 0``, e.g. a dataset that
    has none) counts as all absent.

Multi-modal adapter (``multi_slams_*``)
    Its context is added to the encoder input (clean and DA alike). The autoencoder is frozen
    after stage 1, so ``loss`` adds stage 1's objective (diagnostic ``adapter_reconstruction``),
    which trains the adapter only; ``fit`` does not update an attached adapter (a host
    checkpoint loaded afterwards starts at the host, bit for bit). Not re-measured: ``m``,
    ``s`` and ``sigma_z`` are ``fit``'s, taken before the adapter learns.

Training entry points
    ``fit`` trains the autoencoder (stage 1) and measures ``sigma_o``, ``m``, ``s`` and
    ``sigma_z``; ``loss`` is the denoising loss on clean latents (stage 2; the frozen
    autoencoder's parameters have ``requires_grad=False`` and stay in eval mode);
    ``forward`` decodes the denoiser's estimate of the clean latent at a random time.

Deliberate deviations
    - Encoder inputs follow section 7.5 (background, observations and mask in slots, presence
      channels) instead of upstream's ``[state || modalities]`` with observations taken as
      latents of the true state, which a benchmark cannot use.
    - Decoder: sphere-padded stride-1 convolutions instead of stride-1 transposed convolutions
      (the same function class); all convolutions pad on the sphere.
    - Latents are standardised before the prior sees them (upstream uses them raw).
    - Window 1 (no trajectory score); the observation-std floor, the prior skip connection and
      the zero-initialised UNet tail as in :mod:`baselines.models.sda`.
    - Sampler: :func:`~baselines.layers.diffusion.sample` with ``corrector="preconditioned"``
      (dambench's default, as SDA; ``corrector="langevin"`` is the paper's). The guidance is
      stiff where ``sigma_z`` or ``sigma_o`` is small; the preconditioned corrector steps each
      element by a fraction of its own posterior variance. On the exact-prior Gaussian check
      (``tests/baselines/test_exact_prior_posterior.py``: an N(0, I) prior with era5-sample's
      stiffness, 32 members, 32 steps, 1 corrector) the RMS mean error at observed t2m points
      was 0.16 posterior stds at ``gamma = 0.1`` and 0.56 at ``gamma = 1`` (0.27 allowed; the
      member spread within 0.89-0.98 of the exact std at both), and the paper's corrector
      failed at every ``gamma`` in {0.01, 0.1, 1} (at 0.01 it reached 5.6e7). So the
      ``*_small`` variants sample with ``gamma = 0.1`` and the preconditioned corrector (the
      first dambench version used ``gamma = 1``: at 0.1 its sampler, the paper's corrector,
      had diverged on the trained prior of state latents). The pixel term's ``gamma (sigma / mu)**2`` is not scaled by
      the decoder's Jacobian (SDA's ``A A^T = I`` assumption, taken as is), and its curvature
      is unknown to the preconditioner.
    - ``sigma_z`` is measured on the validation split (section 7.5): the one passed to ``fit``,
      else the validation split of the dataset the train split names
      (``attrs["dambench_dataset"]``); a train split that names none (a synthetic one) has its
      last quarter of cycles held out of the autoencoder's training to measure it on
      (``fit_info["latent_std_cycles"]`` says which).
    - The increment latent space and the single count of the observations (Method) are
      dambench's; ``latent_space="state", pixel_guidance=True`` is the earlier version.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from baselines.interface import Analysis, BaselineModule, DABatch, LossAndDiagnostics, ModelInfo
from baselines.layers.adapter import adapter_context, has_adapter
from baselines.layers.conv import NormName, SphereConv2d, get_norm_layer
from baselines.layers.covariance import block_mean, check_train_split
from baselines.layers.diffusion import (
    GaussianObservation,
    background_error_std,
    block_observation,
    denoised_at_random_time,
    normalised_innovations,
    observation_error_std,
    standard_normal_eps,
)
from baselines.layers.ensemble import (
    DEFAULT_OBSERVATION_STD_FLOOR,
    ScoreEnsemble,
    channel_vector,
    check_state_batch,
)
from baselines.layers.unet import ScoreUNet
from baselines.registry import register_variants
from dambench import schema
from dambench.exceptions import DambenchInputError

__all__ = ["LATENT_SPACES", "SLAMS", "AutoencoderTraining", "ConvStack"]

logger = logging.getLogger(__name__)

LATENT_SPACES = ("increment", "state")
"""What the autoencoder encodes and decodes (module docstring); the first is the default."""
SHIPPED_LATENT_BLOCK = 8
"""``latent_block`` of ``slams_small`` and ``slams_full``: 8 x 8 latent cells, as SDA's
background term (:data:`baselines.models.sda.SHIPPED_BLOCK`)."""
HELD_OUT_FRACTION = 0.25
"""Share of the train cycles held out of the autoencoder's training to measure ``sigma_z`` on
when no validation split can be found (a synthetic train split)."""


# --- building blocks ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AutoencoderTraining:
    """How :meth:`SLAMS.fit` trains the autoencoder: AdamW at ``lr`` decaying linearly to 0
    over ``epochs`` (upstream: 64 epochs, lr 2e-4, weight decay 1e-3, batch 64), batches of
    ``batch_size`` cycles shuffled from ``seed`` with fresh observations every epoch."""

    epochs: int = 64
    lr: float = 2e-4
    weight_decay: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.seed < 0 or not self.lr > 0:
            raise DambenchInputError(
                f"Autoencoder training needs ae_epochs >= 1, ae_batch_size >= 1, ae_seed >= 0 "
                f"and ae_lr > 0; got {self}."
            )


class ConvStack(nn.Sequential):
    """Stride-1 sphere-padded convolutions ``channels[0] -> ... -> channels[-1]`` with a norm and
    ReLU between layers (none after the last): SLAMS' encoder and decoder."""

    def __init__(self, channels: Sequence[int], kernel_size: int, norm_layer: NormName):
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
            layers.append(SphereConv2d(c_in, c_out, kernel_size))
            if i < len(channels) - 2:
                layers += [get_norm_layer(norm_layer, c_out), nn.ReLU()]
        super().__init__(*layers)


def _modalities(batch: DABatch, modality_chans: int, model: str) -> torch.Tensor:
    """(B, 2 M, H, W): the modalities times their per-cell presence, then the presence
    channels (:meth:`~baselines.interface.DABatch.modality_cells`)."""
    b, _, h, w = batch.background.shape
    like = batch.background
    if batch.modalities is None or batch.modalities.shape[1] == 0:  # none given: all absent
        return like.new_zeros(b, 2 * modality_chans, h, w)
    found = tuple(batch.modalities.shape)
    present = batch.modality_present
    if found != (b, modality_chans, h, w) or present is None or present.shape != (b, found[1]):
        raise DambenchInputError(
            f"{model} was built for modality_chans={modality_chans}: it needs modalities "
            f"{(b, modality_chans, h, w)} and modality_present {(b, modality_chans)}; got "
            f"{found} and {None if present is None else tuple(present.shape)}. Set "
            f"model.kwargs.modality_chans to the loader's modality count."
        )
    cells = batch.modality_cells().to(like)  # (B, M, H, W): 1 where a cell holds data
    return torch.cat([batch.modalities.to(like) * cells, cells], dim=1)


def check_validation_split(dataset: xr.Dataset, model: str) -> None:
    """Refuse a dataset whose ``split`` coordinate (when present) is not all validation."""
    if "split" in dataset.coords:
        splits = sorted({str(s) for s in np.asarray(dataset["split"].values).ravel()})
        if splits != ["validation"]:
            raise DambenchInputError(
                f"{model}.fit measures sigma_z on validation cycles; the dataset passed as "
                f"validation has cycles of splits {splits}. Open it with "
                "open_dataset(..., split='validation')."
            )


def latent_std_cycles(
    dataset: xr.Dataset, validation: xr.Dataset | None
) -> tuple[xr.Dataset, xr.Dataset, str]:
    """The cycles to train the autoencoder on, those to measure ``sigma_z`` on, and a
    description of the latter (``SLAMS.fit``'s ``validation`` rules).

    Raises
    ------
    DambenchInputError
        A ``validation`` of another split, or a nameless train split of fewer than 2 cycles.
    """
    if validation is not None:
        check_validation_split(validation, "SLAMS")
        return dataset, validation, "validation split (given)"
    name = dataset.attrs.get("dambench_dataset")
    if name:
        from dambench import open_dataset

        return dataset, open_dataset(str(name), split="validation"), f"validation split of {name}"
    n = dataset.sizes[schema.TIME]
    held = max(1, math.ceil(n * HELD_OUT_FRACTION))
    if n - held < 1:
        raise DambenchInputError(
            f"SLAMS.fit needs a validation split for sigma_z: pass validation=, or a train split "
            f"of at least 2 cycles to hold some out of (got {n})."
        )
    times = {schema.TIME: slice(0, n - held)}, {schema.TIME: slice(n - held, None)}
    description = f"last {held} of {n} train cycles, held out of the autoencoder's training"
    return dataset.isel(times[0]), dataset.isel(times[1]), description


# --- model -------------------------------------------------------------------------------------


class SLAMS(ScoreEnsemble, BaselineModule):
    """Score-based latent assimilation (see the module docstring).

    Parameters
    ----------
    in_chans
        Channels C of the state.
    modality_chans
        Modalities M in ``batch.modalities``.
    latent_chans
        Latent channels at full resolution.
    encoder_channels, ae_kernel_size, norm_layer
        Hidden widths of the encoder (the decoder mirrors them), odd kernel and norm.
    hidden_channels, hidden_blocks, embed_dim, kernel_size, layer_norm
        The latent score UNet (upstream SLAMS: no layer norm).
    eta, steps, corrections, tau, gamma, corrector
        Schedule and sampler settings (:class:`~baselines.layers.diffusion.SamplerSettings`;
        ``corrector="langevin"`` is the paper's sampler).
    latent_space
        ``"increment"`` (default) or ``"state"`` (the module docstring's Method).
    pixel_guidance
        Also guide by the observations in pixel space through the decoder (counts each
        observation twice; default ``False``).
    members, member_batch
        Default ensemble size and members sampled at once.
    observation_std, latent_std, background_std
        ``sigma_o`` (C,), ``sigma_z`` (latent_chans,) and ``sigma_b`` (C,, the increment unit);
        ``None`` until :meth:`fit`.
    latent_block
        Side of the blocks whose means the latent pseudo-observation observes (1: every latent
        cell, the paper's).
    observation_std_floor, latent_std_floor
        Lower bounds of ``sigma_o`` and ``sigma_z``.
    ae_epochs, ae_lr, ae_weight_decay, ae_batch_size, ae_seed
        Autoencoder training in :meth:`fit`.
    """

    fitted_buffers = ("observation_std", "latent_std", "background_std")
    statistic_buffers = (
        "observation_std",
        "latent_std",
        "latent_mean",
        "latent_scale",
        "background_std",
    )

    def __init__(
        self,
        in_chans: int = 69,
        modality_chans: int = 3,
        latent_chans: int = 16,
        encoder_channels: Sequence[int] = (64, 48, 32, 24),
        ae_kernel_size: int = 5,
        norm_layer: NormName = "batch",
        hidden_channels: Sequence[int] = (64, 128, 256),
        hidden_blocks: Sequence[int] = (3, 3, 3),
        embed_dim: int = 64,
        kernel_size: int = 3,
        layer_norm: bool = False,
        eta: float = 1e-3,
        steps: int = 512,
        corrections: int = 1,
        tau: float = 0.5,
        gamma: float = 1e-2,
        corrector: str = "preconditioned",
        latent_space: str = "increment",
        pixel_guidance: bool = False,
        members: int = 8,
        member_batch: int = 8,
        observation_std: float | Sequence[float] | None = None,
        latent_std: float | Sequence[float] | None = None,
        background_std: float | Sequence[float] | None = None,
        latent_block: int = 1,
        observation_std_floor: float = DEFAULT_OBSERVATION_STD_FLOOR,
        latent_std_floor: float = DEFAULT_OBSERVATION_STD_FLOOR,
        ae_epochs: int = 64,
        ae_lr: float = 2e-4,
        ae_weight_decay: float = 1e-3,
        ae_batch_size: int = 64,
        ae_seed: int = 0,
    ) -> None:
        super().__init__()
        if latent_chans < 1 or modality_chans < 0:
            raise DambenchInputError(
                f"SLAMS needs latent_chans >= 1 and modality_chans >= 0; got {latent_chans=}, "
                f"{modality_chans=}."
            )
        if not (observation_std_floor > 0 and latent_std_floor > 0):
            raise DambenchInputError("observation_std_floor and latent_std_floor must be > 0.")
        if latent_space not in LATENT_SPACES:
            raise DambenchInputError(
                f"latent_space must be one of {LATENT_SPACES}; got {latent_space!r} "
                "('increment': x_b + sigma_b (D(z) - D(0)), the default; 'state': D(z))."
            )
        if int(latent_block) != latent_block or latent_block < 1:
            raise DambenchInputError(f"latent_block must be an integer >= 1; got {latent_block}.")
        self.latent_space, self.latent_block = latent_space, int(latent_block)
        self.fit_info: dict[str, Any] = {}
        self.in_chans, self.modality_chans = in_chans, modality_chans
        self.latent_chans, self.pixel_guidance = latent_chans, pixel_guidance
        self.floors = (float(observation_std_floor), float(latent_std_floor))
        self.ae_training = AutoencoderTraining(
            epochs=ae_epochs,
            lr=ae_lr,
            weight_decay=ae_weight_decay,
            batch_size=ae_batch_size,
            seed=ae_seed,
        )
        self.set_sampling(eta, steps, corrections, tau, gamma, members, member_batch)
        self.sampler = replace(self.sampler, corrector=corrector)
        self.innovations: dict[str, list[float]] = {}
        widths = [3 * in_chans + 2 * modality_chans, *encoder_channels, latent_chans]
        self.encoder = ConvStack(widths, ae_kernel_size, norm_layer).requires_grad_(False)
        decoder_widths = [latent_chans, *reversed(list(encoder_channels)), in_chans]
        self.decoder = ConvStack(decoder_widths, ae_kernel_size, norm_layer).requires_grad_(False)
        unet = (hidden_channels, hidden_blocks, embed_dim, kernel_size)
        self.unet = ScoreUNet(
            latent_chans, latent_chans, *unet, layer_norm=layer_norm, zero_init_tail=True
        )
        self._register_statistics(observation_std, latent_std)
        if latent_space == "state":  # no increment unit: states are decoded as they are
            background_std = 1.0 if background_std is None else background_std
        self.register_buffer(
            "background_std", channel_vector(background_std, in_chans, "background_std")
        )
        self.train()

    def _register_statistics(self, observation_std, latent_std) -> None:
        obs = channel_vector(
            observation_std, self.in_chans, "observation_std", floor=self.floors[0]
        )
        self.register_buffer("observation_std", obs)
        latent = channel_vector(latent_std, self.latent_chans, "latent_std", floor=self.floors[1])
        self.register_buffer("latent_std", latent)
        self.register_buffer("latent_mean", torch.zeros(self.latent_chans))
        self.register_buffer("latent_scale", torch.ones(self.latent_chans))

    def train(self, mode: bool = True) -> SLAMS:
        """Set the training mode of the score network; the frozen autoencoder stays in eval
        mode (its BatchNorm statistics never change after :meth:`fit`)."""
        super().train(mode)
        self.encoder.eval()
        self.decoder.eval()
        return self

    # - autoencoder -

    def adapter_slots(self) -> tuple[int, ...]:
        """Channels of the adapter entry (``ModelInfo.adapter_entry``): the encoder input,
        (B, 3 C + 2 M, H, W)."""
        return (3 * self.in_chans + 2 * self.modality_chans,)

    def encode(self, state, observation, mask, batch: DABatch) -> torch.Tensor:
        """Standardised latents (B, latent_chans, H, W) of the slots and the batch's
        modalities (with an attached adapter's context added to the encoder input)."""
        extra = _modalities(batch, self.modality_chans, type(self).__name__)
        x = torch.cat([state, observation, mask, extra], dim=1)  # (B, 3 C + 2 M, H, W)
        x = adapter_context(self, batch).add(x, slot=0)  # the identity without an adapter
        h = self.encoder(x)  # (B, Cz, H, W)
        return (h - self.latent_mean[:, None, None]) / self.latent_scale[:, None, None]

    def _unit(self) -> torch.Tensor:
        """``sigma_b`` as (1, C, 1, 1): the increment unit (1 in the state space)."""
        return self.background_std.reshape(1, -1, 1, 1)

    def clean_field(self, batch: DABatch) -> torch.Tensor:
        """What the autoencoder reproduces (B, C, H, W): ``(x* - x_b) / sigma_b`` (increment
        space) or ``x*`` (state space)."""
        if self.latent_space == "state":
            return batch.target
        return (batch.target - batch.background) / self._unit()

    def clean_latent(self, batch: DABatch) -> torch.Tensor:
        """Latent of the fully observed clean field ``f``, ``E([f || f || 1 || modalities])``."""
        field = self.clean_field(batch)
        return self.encode(field, field, torch.ones_like(field), batch)

    def da_latent(self, batch: DABatch) -> torch.Tensor:
        """Latent of background and observations: ``E([0 || (y - x_b) / sigma_b || mask ||
        modalities])`` (increment space) or ``E([x_b || y || mask || modalities])`` (state)."""
        if self.latent_space == "state":
            return self.encode(batch.background, batch.observation, batch.mask, batch)
        observed = batch.mask > 0
        innovation = torch.where(observed, batch.observation - batch.background, 0.0)
        innovation = innovation / self._unit()  # (B, C, H, W), 0 where unobserved
        return self.encode(torch.zeros_like(innovation), innovation, batch.mask, batch)

    def decode_field(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent_chans, H, W) standardised latents -> (N, C, H, W) decoded fields: the
        increment ``D(z) - D(0)`` in units of ``sigma_b`` (exactly 0 at ``z = 0``; ``D(0)`` is
        decoded at ``z``'s shape, so the subtraction is of bit-identical values) or the state
        ``D(z)``."""
        scale, mean = self.latent_scale[:, None, None], self.latent_mean[:, None, None]
        decoded = self.decoder(z * scale + mean)
        if self.latent_space == "state":
            return decoded
        return decoded - self.decoder(torch.zeros_like(z) * scale + mean)

    def decode(self, z: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        """(N, latent_chans, H, W) standardised latents -> (N, C, H, W) states: ``x_b + sigma_b
        decode_field(z)`` (increment space; the zero latent gives ``x_b`` exactly) or
        ``decode_field(z)``. ``background`` is (B, C, H, W) with N a multiple of B (member-major
        stacks of the batch)."""
        field = self.decode_field(z)
        if self.latent_space == "state":
            return field
        repeats = z.shape[0] // background.shape[0]
        stacked = background.repeat(repeats, 1, 1, 1)  # (N, C, H, W), member-major
        return stacked + field * self._unit().to(field)

    # - the prior -

    def eps(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise of standardised latents ``z_t`` (N, latent_chans, H, W) at ``t``."""
        return standard_normal_eps(z_t, t, self.schedule) + self.unet(z_t, t)

    def loss(self, batch: DABatch) -> LossAndDiagnostics:
        """Denoising loss on the clean latents (random in training mode; the deterministic
        estimate in eval mode, as :meth:`baselines.models.sda.SDA.loss`)."""
        check_state_batch(batch, self.in_chans, type(self).__name__, target=True)
        adapted = has_adapter(self)
        with torch.set_grad_enabled(adapted and torch.is_grad_enabled()):
            clean = self.clean_latent(batch)  # a graph only to an adapter (the AE is frozen)
        loss = self.denoising_objective(self.eps, clean.detach())
        diagnostics = {"denoising": float(loss.detach())}
        if adapted:  # after the denoising loss: its random draws stay the host's
            reconstruction = self._reconstruction_error(batch, clean)
            loss = loss + reconstruction
            diagnostics["adapter_reconstruction"] = float(reconstruction.detach())
        return LossAndDiagnostics(loss, diagnostics)

    def _reconstruction_error(self, batch: DABatch, clean: torch.Tensor) -> torch.Tensor:
        """Stage 1's objective, ``mean((decode_field(E(clean)) - f)^2) +
        mean((decode_field(E(DA)) - f)^2)`` with ``f`` the clean field
        (:meth:`clean_field`), from the clean latent ``clean`` (B, Cz, H, W). With the
        autoencoder frozen its gradient reaches only an adapter."""
        target = self.clean_field(batch).float()
        clean_error = (self.decode_field(clean).float() - target).square().mean()
        da_error = (self.decode_field(self.da_latent(batch)).float() - target).square().mean()
        return clean_error + da_error

    def forward(self, batch: DABatch) -> Analysis:
        """The training-time pass: the decoded denoiser estimate (B, C, H, W) of the clean
        latent noised to one random time per sample (not an analysis; use :meth:`analyse`)."""
        check_state_batch(batch, self.in_chans, type(self).__name__, target=True)
        with torch.no_grad():
            z = self.clean_latent(batch)
        estimate = denoised_at_random_time(self.eps, z, self.schedule)  # (B, Cz, H, W)
        return Analysis(mean=self.decode(estimate, batch.background))

    # - fitting (stage 1 and the error statistics) -

    def fit(
        self,
        dataset: xr.Dataset,
        stats: xr.Dataset,
        *,
        validation: xr.Dataset | None = None,
        verbose: bool = False,
    ) -> SLAMS:
        """Train the autoencoder on the **train split**, freeze it, and measure ``sigma_o``,
        ``sigma_b``, the latent standardisation (train split) and ``sigma_z`` (**validation**
        cycles; module docstring).

        Parameters
        ----------
        dataset
            ``open_dataset(..., split="train")`` (physical units); other splits are refused.
        stats
            Train-split ``mean``/``std`` per channel (the loader normalises with them).
        validation
            ``open_dataset(..., split="validation")``, where ``sigma_z`` is measured; ``None``:
            the validation split of the dataset ``dataset.attrs["dambench_dataset"]`` names,
            or (a train split that names none) its last cycles held out of the autoencoder's
            training (:data:`HELD_OUT_FRACTION`).
        verbose
            Show a progress bar over the autoencoder's epochs.
        """
        check_train_split(dataset, type(self).__name__, in_chans=self.in_chans)
        train, held_out, source = latent_std_cycles(dataset, validation)
        sigma_o = observation_error_std(dataset, stats, self.floors[0])
        if self.latent_space == "increment":
            sigma_b = background_error_std(train, stats)
            self.background_std.copy_(torch.as_tensor(sigma_b, dtype=torch.float32))
        loader = self._loader(train, stats, train=True)
        self._train_autoencoder(loader, verbose)
        self._fit_latent_standardisation(loader)
        self._fit_latent_std(self._loader(held_out, stats, train=False))
        self.observation_std.copy_(torch.as_tensor(sigma_o, dtype=torch.float32))
        self.fit_info = {
            "autoencoder_cycles": int(train.sizes[schema.TIME]),
            "latent_std_cycles": source,
            "n_latent_std_cycles": int(held_out.sizes[schema.TIME]),
        }
        logger.info("SLAMS fitted (%s): %s", source, self.fitted_statistics())
        return self

    def _loader(self, dataset: xr.Dataset, stats: xr.Dataset, *, train: bool):
        """Batches of ``ae_batch_size`` cycles: shuffled with fresh observations (``train``) or
        in order with the stored ones."""
        from dambench.batching import make_dataloader

        settings = self.ae_training
        return make_dataloader(
            dataset,
            stats=stats,
            train=train,
            shuffle=train,
            batch_size=settings.batch_size,
            seed=settings.seed,
        )

    def _batches(self, loader, epoch: int):
        device = self.latent_mean.device
        loader.set_epoch(epoch)
        for raw in loader:
            batch = DABatch.from_loader(raw).to(device)
            check_state_batch(batch, self.in_chans, type(self).__name__, target=True)
            yield batch

    def _train_autoencoder(self, loader, verbose: bool) -> None:
        settings = self.ae_training
        params = [*self.encoder.parameters(), *self.decoder.parameters()]
        autoencoder = {id(p) for p in params}
        others = [p for p in self.parameters() if p.requires_grad and id(p) not in autoencoder]
        for p in others:  # an attached adapter is not trained (nor given gradients) here
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        epochs = settings.epochs
        self.encoder.train()
        self.decoder.train()
        for epoch in tqdm(range(epochs), desc="SLAMS autoencoder", disable=not verbose):
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * (1.0 - epoch / epochs)
            for batch in self._batches(loader, epoch):
                loss = self._reconstruction_error(batch, self.clean_latent(batch))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        for p in others:
            p.requires_grad_(True)
        self.train(self.training)  # the autoencoder back to eval mode

    @torch.no_grad()
    def _fit_latent_standardisation(self, loader) -> None:
        """Per-channel mean ``m`` and std ``s`` of the clean latents (one pass over the train
        split, fresh observations)."""
        self.latent_mean.zero_()
        self.latent_scale.fill_(1.0)
        sums = torch.zeros(3, self.latent_chans, dtype=torch.float64)
        for batch in self._batches(loader, self.ae_training.epochs):
            z = self.clean_latent(batch).double().transpose(0, 1).flatten(1)  # (Cz, B H W)
            sums += torch.stack([torch.ones_like(z).sum(1), z.sum(1), z.square().sum(1)]).cpu()
        mean = sums[1] / sums[0]
        scale = (sums[2] / sums[0] - mean.square()).clamp(min=1e-12).sqrt()
        self.latent_mean.copy_(mean.float())
        self.latent_scale.copy_(scale.float())

    @torch.no_grad()
    def _fit_latent_std(self, loader) -> None:
        """``sigma_z``: the per-channel RMS of the standardised ``E(DA) - E(clean)`` (of its
        ``latent_block`` block means when > 1) over ``loader``'s cycles (validation, never seen
        by the autoencoder), floored."""
        square, count = torch.zeros(self.latent_chans, dtype=torch.float64), 0.0
        for batch in self._batches(loader, 0):
            diff = (self.da_latent(batch) - self.clean_latent(batch)).double()
            diff = block_mean(diff, self.latent_block)
            square += diff.square().sum(dim=(0, 2, 3)).cpu()
            count += diff[:, 0].numel()
        sigma_z = (square / count).sqrt().clamp(min=self.floors[1])
        self.latent_std.copy_(sigma_z.float())

    # - inference -

    def observation_terms(self, batch: DABatch) -> list[GaussianObservation]:
        """The guidance: the latent pseudo-observation ``y_z = E(DA)``, which carries every
        observation and modality once; with ``pixel_guidance`` also the observations in pixel
        space through :meth:`decode` (counting them a second time)."""
        with torch.no_grad():
            y_z = self.da_latent(batch)  # (B, Cz, H, W)
        terms = [self.latent_term(y_z)]
        if self.pixel_guidance:
            std = self.observation_std.reshape(1, -1, 1, 1)
            background = batch.background

            def decode(z: torch.Tensor) -> torch.Tensor:
                return self.decode(z, background)

            terms.append(GaussianObservation(batch.observation, std, batch.mask, decode))
        return terms

    def latent_term(self, y_z: torch.Tensor) -> GaussianObservation:
        """``y_z ~ N(z, sigma_z**2)`` per latent cell with ``latent_block = 1`` (the paper's),
        else ``block_mean_k(y_z) ~ N(block_mean_k(z), sigma_zk**2)`` over ``k x k`` blocks
        (module docstring, Method 3)."""
        return block_observation(y_z, self.latent_std.reshape(1, -1, 1, 1), self.latent_block)

    def analyse(self, batch: DABatch, *, members: int | None = None, seed: int = 0) -> Analysis:
        """``members`` (default ``self.members``) decoded posterior samples (B, N, C, H, W)
        from seed ``seed``, their mean and spread; gradients are enabled inside. The normalised
        innovations ``(member - y) / sigma_o`` of the decoded members are logged and kept in
        :attr:`innovations` (as :meth:`baselines.models.sda.SDA.analyse`)."""
        self.check_analysable(batch)
        terms = self.observation_terms(batch)
        b, _, h, w = batch.background.shape
        analysis = self.sample_ensemble(
            self.eps,
            (b, self.latent_chans, h, w),
            terms,
            batch.background,
            members=members,
            seed=seed,
            decode=lambda z: self.decode(z, batch.background),
        )
        self.innovations = normalised_innovations(
            analysis.members, batch.observation, batch.mask, self.observation_std
        )
        logger.info("SLAMS normalised innovations (member - y) / sigma_o per channel: %s",
                    self.innovations)  # fmt: skip
        return analysis

    def sampling_cost(self) -> dict[str, Any]:
        """Per member as :meth:`ScoreEnsemble.sampling_cost`, plus decoder passes (pixel
        guidance: one forward and backward per network evaluation, plus the final decoding; two
        passes per decoding in the increment space, ``D(z)`` and ``D(0)``) and encoder passes
        per analysis."""
        evaluations = self.sampler.network_evaluations()
        per_decoding = 2 if self.latent_space == "increment" else 1
        return {
            **super().sampling_cost(),
            "decoder_evaluations_per_member": (evaluations * self.pixel_guidance + 1)
            * per_decoding,
            "encoder_evaluations_per_analysis": 1,
            "latent_space": self.latent_space,
            "pixel_guidance": self.pixel_guidance,
        }


# --- registered variants (configs as data) ------------------------------------------------------


INFO = ModelInfo(
    output="ensemble",
    trainable=True,
    needs_fit=True,
    supports_patches=False,
    uses_modalities=True,
    adapter_entry="encoder_input",
    paper="Qu, Nathaniel, Li, Gentine (2024), Deep Generative Data Assimilation in Multimodal "
    "Setting, CVPR Workshops (EarthVision), https://arxiv.org/abs/2404.06665",
    code="https://github.com/yongquan-qu/SLAMS",
    code_licence="none (no licence file)",
)

register_variants(
    SLAMS,
    {
        "slams_tiny": (
            "CPU-test size: 4 latent channels, encoder width 8, UNet (8, 16) x 1 block, 8 steps, "
            "gamma 0.1, 2 members; before fit(), sigma_o = 0.3, sigma_z = 0.5 and sigma_b = 1 "
            "until fit() (C = 4, M = 1).",
            dict(
                in_chans=4,
                modality_chans=1,
                latent_chans=4,
                encoder_channels=(8,),
                norm_layer="group",
                hidden_channels=(8, 16),
                hidden_blocks=(1, 1),
                embed_dim=16,
                steps=8,
                gamma=0.1,
                members=2,
                member_batch=2,
                observation_std=0.3,
                latent_std=0.5,
                background_std=1.0,
                ae_epochs=1,
                ae_batch_size=2,
            ),
        ),
        "slams_small": (
            "CPU-training size: 8 latent channels, encoder (16, 12), UNet (16, 32) x 1 block, "
            "32 steps, 1 preconditioned corrector, gamma 0.1 (module notes: gamma 1 biased the "
            "exact-prior check's t2m mean), latent term over 8 x 8 blocks (C = 4, M = 2).",
            dict(
                in_chans=4,
                modality_chans=2,
                latent_chans=8,
                encoder_channels=(16, 12),
                norm_layer="group",
                hidden_channels=(16, 32),
                hidden_blocks=(1, 1),
                embed_dim=32,
                steps=32,
                gamma=0.1,
                corrector="preconditioned",
                ae_epochs=30,
                ae_lr=1e-3,
                ae_batch_size=1,
                latent_block=SHIPPED_LATENT_BLOCK,
            ),
        ),
        "slams_full": (
            "Section 7.5 size: 16 latent channels, encoder (64, 48, 32, 24) with kernel 5, UNet "
            "(64, 128, 256) x 3 blocks (10.25 M), 512 steps, 1 preconditioned corrector, tau 0.5, "
            "gamma 1e-2, latent term over 8 x 8 blocks (C = 69, M = 3).",
            dict(in_chans=69, modality_chans=3, latent_block=SHIPPED_LATENT_BLOCK),
        ),
    },
    info=INFO,
)
