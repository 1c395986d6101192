"""What the score-based ensemble baselines share: members, objective, guided draw, statistics.

SDA (:mod:`baselines.models.sda`, state space) and SLAMS (:mod:`baselines.models.slams`, latent
space) differ in what they sample and how the guidance reaches it; the plumbing around the
sampler of :mod:`baselines.layers.diffusion` is the same and lives here:

- :func:`channel_vector` and :func:`check_state_batch`, their constructor and input checks;
- :class:`ScoreEnsemble`, a mixin for their modules: the sampler settings and ensemble size
  (:meth:`~ScoreEnsemble.set_sampling`), the training objective in training and eval mode
  (:meth:`~ScoreEnsemble.denoising_objective`), the guided ensemble draw with its divergence
  checks (:meth:`~ScoreEnsemble.sample_ensemble`), whether the error statistics are set
  (:attr:`~ScoreEnsemble.fitted`, :meth:`~ScoreEnsemble.fitted_statistics`) and the cost record
  (:meth:`~ScoreEnsemble.sampling_cost`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from baselines.interface import Analysis, DABatch
from baselines.layers.diffusion import (
    EpsFn,
    GaussianObservation,
    SamplerSettings,
    VPSchedule,
    check_samples,
    denoising_loss,
    fixed_denoising_loss,
    sample,
    sample_members,
)
from dambench.exceptions import DambenchInputError

__all__ = [
    "DEFAULT_OBSERVATION_STD_FLOOR",
    "VALIDATION_TIMES",
    "ScoreEnsemble",
    "channel_vector",
    "check_state_batch",
]

DEFAULT_OBSERVATION_STD_FLOOR = 0.01
"""Default lower bound of an observation-error std (normalised units)."""
VALIDATION_TIMES = 4
"""Stratified times of the deterministic validation loss (eval mode)."""


def channel_vector(
    values: float | Sequence[float] | None, n: int, name: str, *, floor: float | None = None
) -> torch.Tensor:
    """(n,) float32 from one value or n positive values, at least ``floor`` when given; all NaN
    (unfitted) when ``values`` is None."""
    if values is None:
        return torch.full((n,), float("nan"))
    out = torch.as_tensor(values, dtype=torch.float32).flatten()
    if out.numel() == 1:
        out = out.expand(n).clone()
    if out.numel() != n or not bool(torch.all(out > 0)):
        raise DambenchInputError(
            f"{name} needs one positive value or {n} positive values (one per channel); got "
            f"{out.tolist()}."
        )
    return out if floor is None else out.clamp(min=floor)


def check_state_batch(batch: DABatch, in_chans: int, model: str, *, target: bool) -> None:
    """Refuse a batch whose fields are not (B, in_chans, H, W) alike (and without a target when
    ``target``)."""
    shape = tuple(batch.background.shape)
    if len(shape) != 4 or shape[1] != in_chans:
        raise DambenchInputError(f"{model} expects (B, {in_chans}, H, W) fields; got {shape}.")
    for name in ("observation", "mask", *(["target"] if target else [])):
        value = getattr(batch, name)
        if value is None or tuple(value.shape) != shape:
            found = None if value is None else tuple(value.shape)
            raise DambenchInputError(f"{model} needs batch.{name} of shape {shape}; got {found}.")


class ScoreEnsemble:
    """Mixin for a :class:`~baselines.interface.BaselineModule` whose analysis is an ensemble of
    guided diffusion samples (SDA, SLAMS).

    A class names the buffers that must be finite before it can analyse (``fitted_buffers``,
    NaN until ``fit``) and those :meth:`fitted_statistics` reports (``statistic_buffers``); its
    ``__init__`` calls :meth:`set_sampling`.
    """

    fitted_buffers: ClassVar[tuple[str, ...]] = ()
    statistic_buffers: ClassVar[tuple[str, ...]] = ()
    in_chans: int
    training: bool

    def set_sampling(
        self,
        eta: float,
        steps: int,
        corrections: int,
        tau: float,
        gamma: float,
        members: int,
        member_batch: int,
    ) -> None:
        """Set the schedule (:class:`~baselines.layers.diffusion.VPSchedule` ``eta``), the
        sampler settings (:class:`~baselines.layers.diffusion.SamplerSettings`) and the default
        ensemble size (``members`` drawn ``member_batch`` at a time), in the models'
        constructor order."""
        if members < 1 or member_batch < 1:
            raise DambenchInputError(
                f"{type(self).__name__} needs members >= 1 and member_batch >= 1; got "
                f"{members=}, {member_batch=}."
            )
        self.members, self.member_batch = members, member_batch
        self.schedule = VPSchedule(eta)
        self.sampler = SamplerSettings(steps=steps, corrections=corrections, tau=tau, gamma=gamma)

    # - training -

    def denoising_objective(self, eps_fn: EpsFn, x: torch.Tensor) -> torch.Tensor:
        """The denoising loss of ``eps_fn`` on clean samples ``x`` (N, ...): at random times with
        noise from torch's global generator in training mode; in eval mode the deterministic
        estimate (:func:`~baselines.layers.diffusion.fixed_denoising_loss` at
        :data:`VALIDATION_TIMES` times), so validation losses of different epochs compare."""
        if self.training:
            return denoising_loss(eps_fn, x, self.schedule)
        return fixed_denoising_loss(eps_fn, x, self.schedule, times=VALIDATION_TIMES)

    # - the error statistics -

    @property
    def fitted(self) -> bool:
        """Whether every buffer of ``fitted_buffers`` is set (by ``fit`` or the constructor)."""
        return all(bool(torch.isfinite(getattr(self, name)).all()) for name in self.fitted_buffers)

    def fitted_statistics(self) -> dict[str, list[float]]:
        """The buffers of ``statistic_buffers`` per channel (normalised units)."""
        return {
            name: [float(v) for v in getattr(self, name).tolist()]
            for name in self.statistic_buffers
        }

    # - inference -

    def check_analysable(self, batch: DABatch) -> None:
        """Refuse a batch of the wrong shape, or any batch while the model is not fitted."""
        name = type(self).__name__
        check_state_batch(batch, self.in_chans, name, target=False)
        if not self.fitted:
            raise DambenchInputError(
                f"{name} is not fitted: call fit(train_dataset, stats) (train.py does) or pass "
                f"{' and '.join(self.fitted_buffers)}."
            )

    def sample_ensemble(
        self,
        eps_fn: EpsFn,
        shape: Sequence[int],
        terms: Sequence[GaussianObservation],
        like: torch.Tensor,
        *,
        members: int | None,
        seed: int,
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Analysis:
        """``members`` (default ``self.members``) guided samples (B, N, ...) from seed ``seed``,
        their mean and spread.

        Parameters
        ----------
        eps_fn
            The noise predictor of the sampled space; it takes member-major stacks of
            ``n * B`` rows.
        shape
            (B, ...) of one member's block in the sampled space.
        terms
            The guidance for one block (each repeated for the stacked members).
        like
            A batch field: the device and dtype of the samples.
        members, seed
            Ensemble size and seed (member ``k`` draws from
            :func:`~baselines.layers.diffusion.member_generator` ``(seed, k)``).
        decode
            Maps the samples to the state (no gradients), after checking them; ``None``: the
            samples are states.

        Raises
        ------
        SamplerDivergedError
            When samples (or latents before ``decode``) are not finite or huge.
        """
        name = type(self).__name__

        def draw(generators: list[torch.Generator]) -> torch.Tensor:
            n = len(generators)
            samples = sample(
                eps_fn,
                shape,
                generators,
                self.schedule,
                self.sampler,
                [term.repeat(n) for term in terms],
                device=like.device,
                dtype=like.dtype,
            )
            if decode is None:
                return samples  # (n B, ...)
            check_samples(samples, self.sampler, f"{name} (latents)")
            with torch.no_grad():
                return decode(samples)  # (n B, C, H, W)

        count = self.members if members is None else int(members)
        out = sample_members(draw, count, self.member_batch, seed, like.device)
        check_samples(out, self.sampler, name)
        return Analysis.from_members(out)

    def sampling_cost(self) -> dict[str, Any]:
        """What one member costs: sampler steps, corrector steps and score-network evaluations
        (each with a backward pass through the network for the guidance), and the ensemble
        settings."""
        evaluations = self.sampler.network_evaluations()
        return {
            "steps": self.sampler.steps,
            "corrections": self.sampler.corrections,
            "network_evaluations_per_member": evaluations,
            "backward_passes_per_member": evaluations,
            "default_members": self.members,
            "member_batch": self.member_batch,
        }
