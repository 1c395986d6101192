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
       ``latent_chans`` latent channels and decodes them to the state (``C`` channels). The
       **clean** input of a cycle is ``[x* || x* || 1 || modalities]`` (the state fully
       observed); the **DA** input is ``[x_b || y || mask || modalities]``. The autoencoder is
       trained by :meth:`SLAMS.fit` on the train split (MSE of both decodings to ``x*``, AdamW,
       learning rate decaying linearly to 0 as upstream) and then frozen.
    2. A score prior (the SDA UNet, window 1) is trained by ``train.py`` on standardised clean
       latents ``(E(clean) - m) / s`` (``m``, ``s`` per latent channel from the train split).
    3. Assimilation samples latents with Gaussian guidance by

       - the latent of (background + observations) as a pseudo-observation: ``y_z =
         (E(DA) - m) / s ~ N(z, sigma_z**2)`` everywhere, ``sigma_z`` the per-channel RMS of
         the standardised ``E(DA) - E(clean)`` on the train split (floored);
       - and (``pixel_guidance``, the default) the observations in pixel space,
         ``y ~ N(D(z), sigma_o**2)`` at observed points, with the decoder in the graph;

       then decodes each member. Members, seeds and the cost record are as in
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
    - Stability: as for SDA (its module notes) the guidance is stiff. A trained latent prior is
      stiffer than N(0, 1): at 32 steps and ``gamma = 0.1`` the guided sampling of
      ``slams_small`` diverged on era5-sample's test split (with and without the pixel term),
      so ``slams_small`` uses ``gamma = 1``. The pixel term's ``gamma (sigma / mu)**2`` is not
      scaled by the decoder's Jacobian (SDA's ``A A^T = I`` assumption, taken as is).
    - ``sigma_z`` is measured on the train split (``fit`` sees only it; section 7.5 suggests
      validation data), which makes it optimistic: the autoencoder was trained on these cycles.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from baselines.interface import Analysis, BaselineModule, DABatch, LossAndDiagnostics, ModelInfo
from baselines.layers.adapter import adapter_context, has_adapter
from baselines.layers.conv import NormName, SphereConv2d, get_norm_layer
from baselines.layers.covariance import check_train_split
from baselines.layers.diffusion import (
    GaussianObservation,
    denoised_at_random_time,
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
from dambench.exceptions import DambenchInputError

__all__ = ["SLAMS", "AutoencoderTraining", "ConvStack"]

logger = logging.getLogger(__name__)


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
    eta, steps, corrections, tau, gamma
        Schedule and sampler settings.
    pixel_guidance
        Also guide by the observations in pixel space through the decoder.
    members, member_batch
        Default ensemble size and members sampled at once.
    observation_std, latent_std
        ``sigma_o`` (C,) and ``sigma_z`` (latent_chans,); ``None`` until :meth:`fit`.
    observation_std_floor, latent_std_floor
        Lower bounds of ``sigma_o`` and ``sigma_z``.
    ae_epochs, ae_lr, ae_weight_decay, ae_batch_size, ae_seed
        Autoencoder training in :meth:`fit`.
    """

    fitted_buffers = ("observation_std", "latent_std")
    statistic_buffers = ("observation_std", "latent_std", "latent_mean", "latent_scale")

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
        pixel_guidance: bool = True,
        members: int = 8,
        member_batch: int = 8,
        observation_std: float | Sequence[float] | None = None,
        latent_std: float | Sequence[float] | None = None,
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
        widths = [3 * in_chans + 2 * modality_chans, *encoder_channels, latent_chans]
        self.encoder = ConvStack(widths, ae_kernel_size, norm_layer).requires_grad_(False)
        decoder_widths = [latent_chans, *reversed(list(encoder_channels)), in_chans]
        self.decoder = ConvStack(decoder_widths, ae_kernel_size, norm_layer).requires_grad_(False)
        unet = (hidden_channels, hidden_blocks, embed_dim, kernel_size)
        self.unet = ScoreUNet(
            latent_chans, latent_chans, *unet, layer_norm=layer_norm, zero_init_tail=True
        )
        self._register_statistics(observation_std, latent_std)
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

    def clean_latent(self, batch: DABatch) -> torch.Tensor:
        """Latent of the fully observed target, ``E([x* || x* || 1 || modalities])``."""
        target = batch.target
        return self.encode(target, target, torch.ones_like(target), batch)

    def da_latent(self, batch: DABatch) -> torch.Tensor:
        """Latent of background and observations, ``E([x_b || y || mask || modalities])``."""
        return self.encode(batch.background, batch.observation, batch.mask, batch)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent_chans, H, W) standardised latents -> (N, C, H, W) states."""
        return self.decoder(z * self.latent_scale[:, None, None] + self.latent_mean[:, None, None])

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
        """Stage 1's objective on the frozen autoencoder, ``mean((D(E(clean)) - x*)^2) +
        mean((D(E(DA)) - x*)^2)``, from the clean latent ``clean`` (B, Cz, H, W): its gradient
        reaches only the adapter."""
        target = batch.target.float()
        clean_error = (self.decode(clean).float() - target).square().mean()
        da_error = (self.decode(self.da_latent(batch)).float() - target).square().mean()
        return clean_error + da_error

    def forward(self, batch: DABatch) -> Analysis:
        """The training-time pass: the decoded denoiser estimate (B, C, H, W) of the clean
        latent noised to one random time per sample (not an analysis; use :meth:`analyse`)."""
        check_state_batch(batch, self.in_chans, type(self).__name__, target=True)
        with torch.no_grad():
            z = self.clean_latent(batch)
        return Analysis(mean=self.decode(denoised_at_random_time(self.eps, z, self.schedule)))

    # - fitting (stage 1 and the error statistics) -

    def fit(self, dataset: xr.Dataset, stats: xr.Dataset, *, verbose: bool = False) -> SLAMS:
        """Train the autoencoder on the **train split**, freeze it, and measure ``sigma_o``,
        the latent standardisation and ``sigma_z`` (module docstring).

        Parameters
        ----------
        dataset
            ``open_dataset(..., split="train")`` (physical units); other splits are refused.
        stats
            Train-split ``mean``/``std`` per channel (the loader normalises with them).
        verbose
            Show a progress bar over the autoencoder's epochs.
        """
        from dambench.batching import make_dataloader

        check_train_split(dataset, type(self).__name__, in_chans=self.in_chans)
        sigma_o = observation_error_std(dataset, stats, self.floors[0])
        settings = self.ae_training
        loader = make_dataloader(
            dataset,
            stats=stats,
            train=True,
            shuffle=True,
            batch_size=settings.batch_size,
            seed=settings.seed,
        )
        self._train_autoencoder(loader, verbose)
        self._fit_latent_statistics(loader)
        self.observation_std.copy_(torch.as_tensor(sigma_o, dtype=torch.float32))
        logger.info("SLAMS fitted: %s", self.fitted_statistics())
        return self

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
                clean = self.decode(self.clean_latent(batch))
                da = self.decode(self.da_latent(batch))
                loss = (clean - batch.target).square().mean() + (da - batch.target).square().mean()
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
    def _fit_latent_statistics(self, loader) -> None:
        """Per-channel mean and std of the clean latents, then the RMS of the standardised
        ``E(DA) - E(clean)`` (one pass each over the train split, fresh observations)."""
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
        square, count = torch.zeros(self.latent_chans, dtype=torch.float64), 0.0
        for batch in self._batches(loader, self.ae_training.epochs + 1):
            diff = (self.da_latent(batch) - self.clean_latent(batch)).double()
            square += diff.square().sum(dim=(0, 2, 3)).cpu()
            count += diff[:, 0].numel()
        sigma_z = (square / count).sqrt().clamp(min=self.floors[1])
        self.latent_std.copy_(sigma_z.float())

    # - inference -

    def observation_terms(self, batch: DABatch) -> list[GaussianObservation]:
        """The latent pseudo-observation and (``pixel_guidance``) the pixel observations."""
        with torch.no_grad():
            y_z = self.da_latent(batch)  # (B, Cz, H, W)
        terms = [GaussianObservation(y_z, self.latent_std.reshape(1, -1, 1, 1))]
        if self.pixel_guidance:
            std = self.observation_std.reshape(1, -1, 1, 1)
            terms.append(GaussianObservation(batch.observation, std, batch.mask, self.decode))
        return terms

    def analyse(self, batch: DABatch, *, members: int | None = None, seed: int = 0) -> Analysis:
        """``members`` (default ``self.members``) decoded posterior samples (B, N, C, H, W)
        from seed ``seed``, their mean and spread; gradients are enabled inside."""
        self.check_analysable(batch)
        terms = self.observation_terms(batch)
        b, _, h, w = batch.background.shape
        return self.sample_ensemble(
            self.eps,
            (b, self.latent_chans, h, w),
            terms,
            batch.background,
            members=members,
            seed=seed,
            decode=self.decode,
        )

    def sampling_cost(self) -> dict[str, Any]:
        """Per member as :meth:`ScoreEnsemble.sampling_cost`, plus decoder passes (pixel
        guidance: one forward and backward per network evaluation, plus the final decoding) and
        encoder passes per analysis."""
        evaluations = self.sampler.network_evaluations()
        return {
            **super().sampling_cost(),
            "decoder_evaluations_per_member": evaluations * self.pixel_guidance + 1,
            "encoder_evaluations_per_analysis": 1,
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
            "gamma 0.1, 2 members; placeholder sigma_o = 0.3 and sigma_z = 0.5 until fit() "
            "(C = 4, M = 1).",
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
                ae_epochs=1,
                ae_batch_size=2,
            ),
        ),
        "slams_small": (
            "CPU-training size: 8 latent channels, encoder (16, 12), UNet (16, 32) x 1 block, "
            "32 steps, 1 corrector, gamma 1 (at gamma 0.1 the trained latent prior's guidance "
            "diverged on era5-sample at 32 steps) (C = 4, M = 2).",
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
                gamma=1.0,
                ae_epochs=30,
                ae_lr=1e-3,
                ae_batch_size=1,
            ),
        ),
        "slams_full": (
            "Section 7.5 size: 16 latent channels, encoder (64, 48, 32, 24) with kernel 5, UNet "
            "(64, 128, 256) x 3 blocks (10.25 M), 512 steps, 1 corrector, tau 0.5, gamma 1e-2 "
            "(C = 69, M = 3).",
            dict(in_chans=69, modality_chans=3),
        ),
    },
    info=INFO,
)
