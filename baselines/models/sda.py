"""SDA: score-based data assimilation with an unconditional state prior and Gaussian guidance.

Paper
    Rozet & Louppe (2023), "Score-based Data Assimilation", NeurIPS 2023,
    https://arxiv.org/abs/2306.10574.
Upstream code
    ``francois-rozet/sda`` (MIT licence), read at ``c10dacb``. This file and
    :mod:`baselines.layers.diffusion` / :mod:`baselines.layers.unet` are written from the
    description in ``shared/reference/baselines.md`` section 6; no code was copied.

Method
    A noise predictor ``eps_phi(x_t, t)`` (:class:`~baselines.layers.unet.ScoreUNet`) learns the
    prior of the normalised state ``x*`` with the VP-SDE denoising loss (cosine schedule,
    ``eta = 1e-3``). Assimilation is zero-shot: the predictor-corrector sampler draws from
    ``p(x | y, x_b)`` by adding the Gaussian-guidance likelihood score of

    - the observations: ``y ~ N(x, sigma_o**2)`` at observed points, ``sigma_o`` the dataset's
      recorded observation noise in normalised units (floored at ``observation_std_floor``);
    - the background as a pseudo-observation (``background="guidance"``, the default, faithful
      to SDA's decoupled observation model): ``x_b ~ N(x, sigma_b**2)`` everywhere, ``sigma_b``
      the per-channel RMS of ``x_b - x*`` on the train split (:meth:`SDA.fit`);

    or, with ``background="context"``, the background enters as context channels of a
    conditional score ``eps_phi([x_t || x_b], t)`` (the option of section 6.5) and only the
    observations guide.

Multi-modal adapter (``multi_sda_*``)
    The adapter's context is added to the score network's conditioning: the context channels
    become ``x_b + context`` (one slot of ``in_chans`` channels, :meth:`SDA.adapter_slots`) in
    ``loss``, ``forward`` and ``analyse``. That needs ``background="context"``: the
    ``multi_sda_*`` models build their host with it (:data:`SDA.adapter_host_kwargs`), and an
    explicit ``background="guidance"`` is refused (the guidance model has no conditioning to
    enter). A ``multi_sda`` fine-tuned from a checkpoint therefore needs an SDA trained with
    ``background: context``, not the default ``sda_*`` configs' guidance model.

    ``analyse(batch, members=N, seed=S)`` returns ``N`` members drawn with independent noise
    (member ``k`` from a generator seeded by ``(S, k)``), ``member_batch`` at a time; without
    ``members`` it draws the model's default ``members`` (an ensemble model's analysis is the
    ensemble mean, never a single draw in disguise). Cost per member:
    ``steps * (1 + corrections)`` network evaluations, each with a backward pass
    (:meth:`SDA.sampling_cost`).

Training entry points
    ``loss(batch)`` is the denoising loss on ``batch.target`` (the training objective).
    ``forward(batch)`` is the training-time pass: the denoiser's estimate ``x0_hat`` of the
    target from ``x_t`` at one random time per sample (differentiable; not an analysis).

Deliberate deviations
    - Window 1 (the state at one time; no Markov-blanket trajectory score), as recommended in
      section 6.5 for the benchmark's single-time analyses.
    - The UNet pads on the sphere and pads 121 rows to a multiple of ``2 ** (levels - 1)`` (see
      :mod:`baselines.layers.unet`); upstream is periodic in both directions.
    - The network predicts a residual on the exact noise of a standard-normal prior,
      ``eps = sigma x_t / (mu**2 + sigma**2) + UNet(x_t, t)``, and the UNet's last layer starts
      at zero: an untrained model is the N(0, I) prior (on z-scored data) and its guided samples
      stay finite. Upstream predicts ``eps`` directly; measured here, an untrained ``sda_tiny``
      of that form diverged under guidance at 4 to 32 steps (the denoised estimate
      ``(x_t - sigma eps) / mu`` of a random network is off by up to ``1 / eta``).
    - No EMA inside the model: ``train.ema_decay`` in the config keeps one (the paper's code
      trains without; diffusion models are customarily evaluated with averaged weights).
    - The observation std has a floor (default 0.01 normalised units), and a run whose samples
      blow up raises :class:`~baselines.layers.diffusion.SamplerDivergedError` instead of
      returning them.

Stability (measured)
    Gaussian guidance is stiff: the predictor is stable only when ``sigma_o`` is large enough for
    the step count. Smallest stable ``sigma_o`` with an N(0, 1) prior, a background term
    (``sigma_b = 0.5``) everywhere and 5 % observed points:

    =========  ========  ========  ========  ========  =========
    gamma      8 steps   16 steps  32 steps  64 steps  128 steps
    =========  ========  ========  ========  ========  =========
    1e-3       0.3       0.15      0.1       0.07      0.05
    1e-2       0.2       0.15      0.1       0.05      0.03
    1e-1       0.15      0.05      <= 0.02   <= 0.02   <= 0.02
    =========  ========  ========  ========  ========  =========

    At the paper's 256 steps and ``gamma = 1e-2``, ``sigma_o = 0.01`` was stable in the tests'
    correlated linear-Gaussian problem. The CPU-sized ``*_small`` variants run 32 steps and so
    use ``gamma = 0.1`` (era5-sample's t2m has ``sigma_o = 0.045``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import xarray as xr

from baselines.interface import Analysis, BaselineModule, DABatch, LossAndDiagnostics, ModelInfo
from baselines.layers.adapter import adapter_context
from baselines.layers.covariance import check_train_split
from baselines.layers.diffusion import (
    GaussianObservation,
    background_error_std,
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

__all__ = ["SDA"]

BackgroundMode = Literal["guidance", "context"]
BACKGROUND_MODES: tuple[str, ...] = ("guidance", "context")


# --- model -------------------------------------------------------------------------------------


class SDA(ScoreEnsemble, BaselineModule):
    """Score-based data assimilation in state space (see the module docstring).

    Parameters
    ----------
    in_chans
        Channels C of the state.
    hidden_channels, hidden_blocks, embed_dim, kernel_size
        The noise predictor (:class:`~baselines.layers.unet.ScoreUNet`).
    eta
        Schedule constant of the VP-SDE.
    steps, corrections, tau, gamma
        Sampler settings (:class:`~baselines.layers.diffusion.SamplerSettings`).
    background
        ``"guidance"``: a Gaussian pseudo-observation with std ``sigma_b``; ``"context"``:
        context channels of a conditional score.
    members, member_batch
        Default ensemble size of :meth:`analyse` and members sampled at once.
    background_std, observation_std
        ``sigma_b`` and ``sigma_o`` per channel (normalised units); ``None`` until :meth:`fit`
        measures them (an unfitted model refuses to analyse).
    observation_std_floor
        Lower bound of ``sigma_o`` (normalised units).
    """

    adapter_host_kwargs: ClassVar[dict[str, Any]] = {"background": "context"}
    """Host settings a multi-modal adapter needs (the ``multi_sda_*`` models' defaults)."""
    fitted_buffers = statistic_buffers = ("background_std", "observation_std")

    def __init__(
        self,
        in_chans: int = 69,
        hidden_channels: Sequence[int] = (96, 192, 384),
        hidden_blocks: Sequence[int] = (3, 3, 3),
        embed_dim: int = 64,
        kernel_size: int = 3,
        eta: float = 1e-3,
        steps: int = 256,
        corrections: int = 1,
        tau: float = 0.5,
        gamma: float = 1e-2,
        background: BackgroundMode = "guidance",
        members: int = 8,
        member_batch: int = 8,
        background_std: float | Sequence[float] | None = None,
        observation_std: float | Sequence[float] | None = None,
        observation_std_floor: float = DEFAULT_OBSERVATION_STD_FLOOR,
    ) -> None:
        super().__init__()
        if background not in BACKGROUND_MODES:
            raise DambenchInputError(f"background={background!r}; choose from {BACKGROUND_MODES}.")
        if not observation_std_floor > 0:
            raise DambenchInputError(
                f"Need observation_std_floor > 0; got {observation_std_floor}."
            )
        self.in_chans, self.background = in_chans, background
        self.observation_std_floor = float(observation_std_floor)
        self.set_sampling(eta, steps, corrections, tau, gamma, members, member_batch)
        context = in_chans if background == "context" else 0
        self.unet = ScoreUNet(
            in_chans + context,
            in_chans,
            hidden_channels,
            hidden_blocks,
            embed_dim,
            kernel_size,
            zero_init_tail=True,
        )
        self.register_buffer("background_std", channel_vector(background_std, in_chans, "sigma_b"))
        floor = self.observation_std_floor
        obs = channel_vector(observation_std, in_chans, "observation_std", floor=floor)
        self.register_buffer("observation_std", obs)

    # - the multi-modal adapter's entry -

    def adapter_slots(self) -> tuple[int, ...]:
        """Channels of the adapter entry (``ModelInfo.adapter_entry``): the score network's
        context channels, (B, in_chans, H, W).

        Raises
        ------
        DambenchInputError
            In ``"guidance"`` mode: the network has no context channels.
        """
        if self.background != "context":
            raise DambenchInputError(
                f"The multi-modal adapter conditions SDA's score network through its context "
                f"channels, which need background='context'; this SDA has "
                f"background={self.background!r}. Leave model.kwargs.background out of a "
                "multi_sda_* config (it defaults to 'context') or set it to 'context'."
            )
        return (self.in_chans,)

    def conditioning(self, batch: DABatch) -> torch.Tensor:
        """The context channels (B, C, H, W): ``batch.background``, plus an attached
        adapter's context (read only in ``"context"`` mode)."""
        return adapter_context(self, batch).add(batch.background, slot=0)

    # - the prior -

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, background: torch.Tensor | None):
        """Predicted noise (N, C, H, W) for ``x_t`` at ``t``; ``background`` (B, C, H, W) is
        the context in ``"context"`` mode (tiled member-major when ``x_t`` stacks ``N / B``
        copies of the batch) and ignored otherwise."""
        if self.background == "context":
            copies = x_t.shape[0] // background.shape[0]
            context = background if copies == 1 else background.repeat(copies, 1, 1, 1)
            x_t = torch.cat([x_t, context], dim=1)  # (N, 2C, H, W)
        return standard_normal_eps(x_t[:, : self.in_chans], t, self.schedule) + self.unet(x_t, t)

    def loss(self, batch: DABatch) -> LossAndDiagnostics:
        """Denoising loss on ``batch.target``: in training mode at random times with noise from
        torch's global generator; in eval mode the deterministic estimate
        (:func:`~baselines.layers.diffusion.fixed_denoising_loss`), so validation losses of
        different epochs compare."""
        check_state_batch(batch, self.in_chans, type(self).__name__, target=True)
        context = self.conditioning(batch)
        loss = self.denoising_objective(lambda x, t: self.eps(x, t, context), batch.target)
        return LossAndDiagnostics(loss, {"denoising": float(loss.detach())})

    def forward(self, batch: DABatch) -> Analysis:
        """The training-time pass: ``x0_hat`` (B, C, H, W) of the target noised to one random
        time per sample (not an analysis; use :meth:`analyse`)."""
        check_state_batch(batch, self.in_chans, type(self).__name__, target=True)
        eps_fn = lambda x, t: self.eps(x, t, self.conditioning(batch))  # noqa: E731
        return Analysis(mean=denoised_at_random_time(eps_fn, batch.target, self.schedule))

    # - fitting -

    def fit(self, dataset: xr.Dataset, stats: xr.Dataset, *, verbose: bool = False) -> SDA:
        """Measure ``sigma_b`` (RMS of the normalised background error) and ``sigma_o`` (the
        recorded observation noise over ``stats.std``, floored) on the **train split**.

        Parameters
        ----------
        dataset
            ``open_dataset(..., split="train")`` (physical units); other splits are refused.
        stats
            Train-split ``mean``/``std`` per channel.
        verbose
            Unused (the fit is two reductions).
        """
        check_train_split(dataset, type(self).__name__, in_chans=self.in_chans)
        sigma_b = background_error_std(dataset, stats)
        sigma_o = observation_error_std(dataset, stats, self.observation_std_floor)
        self.background_std.copy_(torch.as_tensor(sigma_b, dtype=torch.float32))
        self.observation_std.copy_(torch.as_tensor(sigma_o, dtype=torch.float32))
        return self

    # - inference -

    def observation_terms(self, batch: DABatch) -> list[GaussianObservation]:
        """The guidance: observations (and, in ``"guidance"`` mode, the background)."""
        per_channel = (1, self.in_chans, 1, 1)
        terms = [
            GaussianObservation(
                batch.observation, self.observation_std.reshape(per_channel), batch.mask
            )
        ]
        if self.background == "guidance":
            std = self.background_std.reshape(per_channel)
            terms.append(GaussianObservation(batch.background, std))
        return terms

    def analyse(self, batch: DABatch, *, members: int | None = None, seed: int = 0) -> Analysis:
        """``members`` (default ``self.members``) posterior samples (B, N, C, H, W) from seed
        ``seed``, their mean and spread; gradients are enabled inside (guidance), whatever the
        caller's grad mode."""
        self.check_analysable(batch)
        terms = self.observation_terms(batch)
        with torch.no_grad():
            context = self.conditioning(batch)  # (B, C, H, W)
        return self.sample_ensemble(
            lambda x, t: self.eps(x, t, context),
            tuple(batch.background.shape),
            terms,
            batch.background,
            members=members,
            seed=seed,
        )


# --- registered variants (configs as data) ------------------------------------------------------


INFO = ModelInfo(
    output="ensemble",
    trainable=True,
    needs_fit=True,
    supports_patches=False,
    uses_modalities=False,
    adapter_entry="score_context",
    paper="Rozet & Louppe (2023), Score-based Data Assimilation, NeurIPS, "
    "https://arxiv.org/abs/2306.10574",
    code="https://github.com/francois-rozet/sda",
    code_licence="MIT",
)

register_variants(
    SDA,
    {
        "sda_tiny": (
            "CPU-test size: hidden (8, 16), 1 block per level, 8 steps, gamma 0.1, 2 members; "
            "placeholder sigma_b = 0.5 and sigma_o = 0.3 until fit() (C = 4).",
            dict(
                in_chans=4,
                hidden_channels=(8, 16),
                hidden_blocks=(1, 1),
                embed_dim=16,
                steps=8,
                gamma=0.1,
                members=2,
                member_batch=2,
                background_std=0.5,
                observation_std=0.3,
            ),
        ),
        "sda_small": (
            "CPU-training size: hidden (16, 32), 1 block per level, 32 steps, 1 corrector, "
            "gamma 0.1 (stable at 32 steps down to sigma_o = 0.02; see the module notes).",
            dict(
                in_chans=4,
                hidden_channels=(16, 32),
                hidden_blocks=(1, 1),
                embed_dim=32,
                steps=32,
                gamma=0.1,
            ),
        ),
        "sda_full": (
            "Paper size: hidden (96, 192, 384), 3 blocks per level (22.98 M parameters at "
            "C = 69), 256 steps, 1 corrector, tau 0.5, gamma 1e-2.",
            dict(in_chans=69, hidden_channels=(96, 192, 384), hidden_blocks=(3, 3, 3)),
        ),
    },
    info=INFO,
)
