"""A score-based prior and its guided sampler, shared by SDA and SLAMS.

Written from the description of Rozet & Louppe (2023), "Score-based Data Assimilation",
NeurIPS, https://arxiv.org/abs/2306.10574 (``shared/reference/baselines.md`` sections 6.2-6.4);
no code was copied.

Diffusion (VP-SDE, cosine schedule)
    ``x_t = mu(t) x_0 + sigma(t) eps`` with ``eps ~ N(0, I)``, ``t`` in [0, 1],
    ``mu(t) = cos(arccos(sqrt(eta)) t)**2`` and ``sigma(t) = sqrt(1 - mu(t)**2 + eta**2)``
    (:class:`VPSchedule`, ``eta = 1e-3``). A network ``eps_phi(x_t, t)`` is trained with the
    denoising loss ``E_{t ~ U(0, 1), eps} ||eps_phi(x_t, t) - eps||**2`` (:func:`denoising_loss`,
    the mean over all elements); the prior's score is ``-eps_phi / sigma``.

Gaussian guidance (:func:`guided_eps`)
    With the denoised estimate ``x0_hat = (x_t - sigma eps_phi) / mu`` and Gaussian observations
    ``y ~ N(A(x_0), sigma_y**2)`` (:class:`GaussianObservation`, any number of terms),
    ``log p(y | x_t) ~ -1/2 sum (y - A(x0_hat))**2 / (sigma_y**2 + gamma (sigma / mu)**2)``; the
    ``gamma (sigma / mu)**2`` term stands for ``Cov[x_0 | x_t]``. The guided ``eps`` is
    ``eps_phi - sigma grad_{x_t} log p(y | x_t)`` (gradients flow through the network).

Sampler (:func:`sample`, predictor-corrector)
    ``x ~ N(0, I)`` at ``t = 1``; for ``steps`` equal steps down to ``t = 0``:

    - predictor (exponential integrator): ``r = mu(t') / mu(t)``,
      ``x <- r x + (sigma(t') - r sigma(t)) eps(x, t)``;
    - ``corrections`` corrector steps at ``t'``.

    ``corrector="langevin"`` (the paper's): Langevin steps ``delta = tau / mean(eps**2)`` (the
    mean over each sample's elements), ``x <- x - sigma(t') (delta eps + sqrt(2 delta) z)``.
    One step size per sample is set by the average score: it over-steps elements far stiffer
    than the average (era5-sample's t2m, ``sigma_o = 0.045``: the table in
    :mod:`baselines.models.sda`).

    ``corrector="preconditioned"`` (dambench's default) uses, per element, ``v`` =
    :func:`posterior_variance`, the variance of ``x_t`` given the Gaussian terms' diagonal
    curvature (:meth:`GaussianObservation.precision`) if the prior were N(0, I):

    - in the predictor the guidance part ``h s_y`` (``h = (r sigma - sigma') sigma``, ``s_y``
      the guidance score) becomes ``h s_y / (1 + h kappa)``, ``kappa`` the element's
      likelihood curvature (:func:`likelihood_curvature`): a semi-implicit step, stable for any
      stiffness;
    - the corrector's step is the paper's global step capped per element at ``tau v``:
      ``step = min(tau sigma'**2 / mean(eps**2), tau v)``, ``x <- x + step s + sqrt(step (2 -
      step / v)) z`` (``s`` the guided score; the noise is the Ornstein-Uhlenbeck one, exact for
      a Gaussian of variance ``v``).

    Without observations both correctors are the paper's. Each step costs ``1 + corrections``
    network evaluations, each with a backward pass when there are observations
    (:meth:`SamplerSettings.network_evaluations`). Paper defaults: 256 steps, 1 corrector,
    ``tau = 0.5``, ``gamma = 1e-2``.

Members and seeds
    Ensemble member ``k`` of a sampling run with seed ``S`` draws all its noise from its own
    ``torch.Generator`` seeded from ``(S, k)`` (:func:`member_generator`), so a member does not
    depend on how many members are sampled at once.

Divergence
    Guidance is stiff (the paper's sampler needs more steps as ``sigma_y`` falls; measured
    table in :mod:`baselines.models.sda`): :func:`check_samples` raises
    :class:`SamplerDivergedError` for samples that are not finite or exceed
    :data:`DIVERGENCE_LIMIT`, never returning them.

Error statistics
    :func:`background_error_std` and :func:`observation_error_std` give the Gaussian terms' stds
    per channel, in normalised units, from the train split and the dataset's recorded noise.

Deliberate deviations
    - No exponential moving average here: the training loop keeps one (``train.ema_decay``).
    - The trajectory (Markov-blanket) score of SDA is not implemented: window 1 only.
    - :func:`standard_normal_eps` (the exact noise of an N(0, I) prior) is the skip connection
      the models add to their network's output (see :mod:`baselines.models.sda`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from baselines.layers.covariance import (
    block_curvature,
    block_mean,
    channel_std,
    normalised_observation_error_std,
    observation_noise_of,
)
from dambench import schema
from dambench.exceptions import DambenchInputError, DambenchSamplingError

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``eps_fn(x_t, t)``: the noise predicted for ``x_t`` (N, ...) at time ``t`` (() or (N,))."""
Operator = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_ETA = 1e-3
DIVERGENCE_LIMIT = 1e3
"""Largest magnitude a sample may reach (normalised units) before the run counts as diverged."""


class SamplerDivergedError(DambenchSamplingError):
    """Guided sampling blew up (non-finite or huge values): too few steps for the guidance (a
    :class:`~dambench.exceptions.DambenchSamplingError`, so a ``RuntimeError``)."""


@dataclass(frozen=True)
class VPSchedule:
    """The variance-preserving cosine schedule ``mu(t)``, ``sigma(t)`` for ``t`` in [0, 1].

    Parameters
    ----------
    eta
        ``mu(1) = eta`` and ``sigma(0) = eta``: the smallest signal and noise scales.
    """

    eta: float = DEFAULT_ETA

    def __post_init__(self) -> None:
        if not 0.0 < self.eta < 1.0:
            raise DambenchInputError(f"VPSchedule needs 0 < eta < 1; got eta={self.eta}.")

    def mu(self, t: torch.Tensor | float) -> torch.Tensor:
        """Signal scale ``cos(arccos(sqrt(eta)) t)**2`` (same shape as ``t``)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.cos(math.acos(math.sqrt(self.eta)) * t) ** 2

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """Noise scale ``sqrt(1 - mu(t)**2 + eta**2)`` (same shape as ``t``)."""
        return torch.sqrt(1.0 - self.mu(t) ** 2 + self.eta**2)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, ..., 1) in ``like``'s dtype and device, to broadcast over one sample."""
    return values.to(like).reshape(-1, *([1] * (like.ndim - 1)))


def standard_normal_eps(x_t: torch.Tensor, t: torch.Tensor, schedule: VPSchedule) -> torch.Tensor:
    """The exact noise of the standard-normal prior ``x_0 ~ N(0, I)``:
    ``sigma(t) x_t / (mu(t)**2 + sigma(t)**2)`` (``x_t ~ N(0, (mu**2 + sigma**2) I)``).

    SDA and SLAMS predict a residual on it (a skip connection): an untrained network with a
    zero-initialised last layer is then exactly this prior.
    """
    t = torch.as_tensor(t).expand(x_t.shape[0])
    mu, sigma = schedule.mu(t), schedule.sigma(t)
    return _per_sample(sigma / (mu.square() + sigma.square()), x_t) * x_t


def denoising_loss(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: VPSchedule,
    *,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """The denoising score-matching loss of ``eps_fn`` on clean samples ``x`` (N, ...).

    ``mean((eps_fn(mu x + sigma eps, t) - eps)**2)`` over every element, with ``t`` (N,) drawn
    uniformly in [0, 1) and ``eps`` standard normal (from torch's global generator) unless given.
    """
    if t is None:
        t = torch.rand(x.shape[0], device=x.device)
    if noise is None:
        noise = torch.randn_like(x)
    mu = _per_sample(schedule.mu(t), x)
    sigma = _per_sample(schedule.sigma(t), x)
    predicted = eps_fn(mu * x + sigma * noise, t.to(x))
    return (predicted.float() - noise.float()).square().mean()


def fixed_denoising_loss(
    eps_fn: EpsFn, x: torch.Tensor, schedule: VPSchedule, *, times: int = 8, seed: int = 0
) -> torch.Tensor:
    """A low-variance, deterministic estimate of :func:`denoising_loss` for validation.

    Every sample is noised at the ``times`` stratified times ``(k + 1/2) / times`` with noise
    from a generator seeded by ``seed`` (on ``x``'s device), so that the same weights and data
    always give the same value and epochs can be compared.
    """
    if times < 1:
        raise DambenchInputError(f"times must be >= 1; got {times=}.")
    n = x.shape[0]
    t = ((torch.arange(times, device=x.device) + 0.5) / times).repeat_interleave(n)  # (K N,)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    stacked = x.repeat(times, *([1] * (x.ndim - 1)))  # (K N, ...)
    noise = torch.randn(stacked.shape, generator=generator, device=x.device, dtype=x.dtype)
    return denoising_loss(eps_fn, stacked, schedule, t=t, noise=noise)


def denoised(
    x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: VPSchedule
) -> torch.Tensor:
    """The estimate ``x0_hat = (x_t - sigma(t) eps) / mu(t)``; ``t`` is () or (N,)."""
    t = torch.as_tensor(t).expand(x_t.shape[0])
    return (x_t - _per_sample(schedule.sigma(t), x_t) * eps) / _per_sample(schedule.mu(t), x_t)


def denoised_at_random_time(eps_fn: EpsFn, x: torch.Tensor, schedule: VPSchedule) -> torch.Tensor:
    """The estimate ``x0_hat`` (N, ...) of clean samples ``x`` (N, ...) noised to one time per
    sample, ``t ~ U(0, 1)``, with noise from torch's global generator (differentiable): the
    training-time pass of SDA and SLAMS, not an analysis."""
    t = torch.rand(x.shape[0], device=x.device)
    noise = torch.randn_like(x)
    x_t = _per_sample(schedule.mu(t), x) * x + _per_sample(schedule.sigma(t), x) * noise
    return denoised(x_t, eps_fn(x_t, t), t, schedule)


@dataclass(frozen=True)
class GaussianObservation:
    """One Gaussian likelihood term ``y ~ N(A(x_0), std**2)`` at the points where ``mask`` is 1.

    Attributes
    ----------
    value
        ``y``, shaped like ``A(x_0)`` (N, ...); any value where ``mask`` is 0.
    std
        Observation-error std, broadcastable to ``value`` (e.g. (1, C, 1, 1) per channel), > 0.
    mask
        1 where observed, 0 elsewhere (broadcastable to ``value``); ``None``: everywhere.
    operator
        ``A``, differentiable, from the sampled space to ``value``'s; ``None``: the identity.
    curvature
        For an ``operator`` term: the row sums of ``|A^T A|`` (``A``'s rows weighted by
        ``mask``), broadcastable to the sampled space (a Gershgorin bound of the curvature that a
        unit ``std`` gives each element), used by the preconditioned sampler only (``std`` must
        then broadcast to the sampled space too); ``None``: unknown (the term adds nothing to
        the preconditioner). Ignored without an operator, where it is ``mask`` (or 1).
    """

    value: torch.Tensor
    std: torch.Tensor | float
    mask: torch.Tensor | None = None
    operator: Operator | None = None
    curvature: torch.Tensor | float | None = None

    def log_likelihood(self, x0: torch.Tensor, extra_variance: torch.Tensor) -> torch.Tensor:
        """``-1/2 sum mask (y - A(x0))**2 / (std**2 + extra_variance)``, a scalar (the sum
        over every sample; samples do not interact, so its gradient is per sample)."""
        predicted = x0 if self.operator is None else self.operator(x0)
        residual = self.value - predicted
        dtype = torch.promote_types(residual.dtype, torch.float32)  # at least float32
        residual = residual.to(dtype)
        if self.mask is not None:
            residual = residual * self.mask
        std = torch.as_tensor(self.std, device=residual.device, dtype=dtype)
        variance = std.square() + _per_sample(extra_variance, residual)
        return -0.5 * (residual.square() / variance).sum()

    def precision(self, like: torch.Tensor, extra_variance: torch.Tensor) -> torch.Tensor:
        """The term's diagonal curvature bound in the sampled space, ``curvature / (std**2 +
        extra_variance)`` shaped like ``like`` (N, ...): ``mask / (std**2 + extra)`` without an
        operator, zeros for an operator term of unknown ``curvature``. ``extra_variance`` is
        (N,)."""
        if self.operator is None:
            weight = 1.0 if self.mask is None else self.mask
        elif self.curvature is None:
            return torch.zeros_like(like)
        else:
            weight = self.curvature
        std = torch.as_tensor(self.std, device=like.device, dtype=like.dtype)
        variance = std.square() + _per_sample(extra_variance, like)
        weight = torch.as_tensor(weight, device=like.device, dtype=like.dtype)
        return torch.broadcast_to(weight / variance, like.shape)

    def repeat(self, times: int) -> GaussianObservation:
        """The same term for ``times`` stacked copies of the batch (member-major)."""

        def tile(tensor):
            if not torch.is_tensor(tensor) or tensor.ndim == 0 or tensor.shape[0] == 1:
                return tensor
            return tensor.repeat(times, *([1] * (tensor.ndim - 1)))

        tiled = (tile(self.value), tile(self.std), tile(self.mask))
        return GaussianObservation(*tiled, self.operator, tile(self.curvature))


def block_observation(
    value: torch.Tensor, std: torch.Tensor | float, block: int
) -> GaussianObservation:
    """``value ~ N(x, std**2)`` per cell (``block = 1``), else its ``block x block`` block means
    ``block_mean(value) ~ N(block_mean(x), std**2)`` (``std`` then measured on block means):
    SDA's coarsened background term and SLAMS' latent pseudo-observation. ``value`` is
    (B, C, H, W)."""
    if block == 1:
        return GaussianObservation(value, std)
    height, width = value.shape[-2:]
    return GaussianObservation(
        block_mean(value, block),
        std,
        operator=lambda x: block_mean(x, block),
        curvature=block_curvature(height, width, block).to(value)[None, None],
    )


def guidance_variance(t: torch.Tensor, schedule: VPSchedule, gamma: float) -> torch.Tensor:
    """The guidance's stand-in for ``Var[x_0 | x_t]``: ``gamma (sigma(t) / mu(t))**2`` (a scalar
    tensor for a scalar ``t``)."""
    return gamma * (schedule.sigma(t) / schedule.mu(t)) ** 2


def _guided(
    eps_fn: EpsFn,
    x: torch.Tensor,
    t: torch.Tensor,
    schedule: VPSchedule,
    observations: Sequence[GaussianObservation],
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eps_fn(x, t), guided eps)``, both detached (one network evaluation)."""
    if not observations:
        with torch.no_grad():
            eps = eps_fn(x, t)
        return eps, eps
    sigma = schedule.sigma(t)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        eps = eps_fn(x, t)
        x0 = denoised(x, eps, t, schedule)
        extra = guidance_variance(t, schedule, gamma).expand(x.shape[0])
        log_p = sum(term.log_likelihood(x0, extra) for term in observations)
        (score,) = torch.autograd.grad(log_p, x)
    eps = eps.detach()
    return eps, eps - sigma.to(eps) * score


def guided_eps(
    eps_fn: EpsFn,
    x: torch.Tensor,
    t: torch.Tensor,
    schedule: VPSchedule,
    observations: Sequence[GaussianObservation] = (),
    gamma: float = 1e-2,
) -> torch.Tensor:
    """``eps_fn(x, t) - sigma(t) grad_x log p(y | x)`` under Gaussian guidance, detached.

    ``t`` is a scalar tensor (one time for the whole batch ``x`` (N, ...)). Without
    ``observations`` this is ``eps_fn(x, t)`` without gradients.
    """
    return _guided(eps_fn, x, t, schedule, observations, gamma)[1]


def likelihood_curvature(
    x: torch.Tensor,
    t: torch.Tensor,
    schedule: VPSchedule,
    observations: Sequence[GaussianObservation],
    gamma: float,
) -> torch.Tensor:
    """Diagonal curvature bound (N, ...) of ``-log p(y | x_t)`` in ``x_t`` under guidance:
    ``J**2 sum_terms precision`` with ``J = mu / (mu**2 + sigma**2)``, the Jacobian of the
    denoised estimate of the standard-normal prior (:func:`standard_normal_eps`)."""
    mu, sigma = schedule.mu(t), schedule.sigma(t)
    extra = guidance_variance(t, schedule, gamma).expand(x.shape[0])
    total = torch.zeros_like(x)
    for term in observations:
        total = total + term.precision(x, extra)
    return total * float(mu / (mu.square() + sigma.square())) ** 2


def posterior_variance(
    x: torch.Tensor,
    t: torch.Tensor,
    schedule: VPSchedule,
    observations: Sequence[GaussianObservation],
    gamma: float,
) -> torch.Tensor:
    """The preconditioner (N, ...): the per-element variance of ``x_t`` given the guidance when
    ``x_0 ~ N(0, I)`` (the prior the models' networks start from),
    ``1 / (1 / (mu**2 + sigma**2) + likelihood_curvature)``."""
    mu, sigma = schedule.mu(t), schedule.sigma(t)
    prior = float(mu.square() + sigma.square())
    return 1.0 / (1.0 / prior + likelihood_curvature(x, t, schedule, observations, gamma))


CORRECTORS: tuple[str, ...] = ("preconditioned", "langevin")


@dataclass(frozen=True, kw_only=True)
class SamplerSettings:
    """Settings of the predictor-corrector sampler (the paper's counts and ``gamma``).

    Attributes
    ----------
    steps
        Predictor steps from ``t = 1`` to ``t = 0``.
    corrections
        Corrector steps after each predictor step.
    tau
        Corrector step size: a signal-to-noise ratio (``"langevin"``) or the fraction of the
        preconditioner (``"preconditioned"``, in (0, 2)).
    gamma
        Weight of ``(sigma / mu)**2`` in the guidance variance.
    corrector
        ``"preconditioned"`` (dambench's default; module docstring) or ``"langevin"`` (the
        paper's: one global step size per sample, explicit guidance in the predictor).
    """

    steps: int = 256
    corrections: int = 1
    tau: float = 0.5
    gamma: float = 1e-2
    corrector: str = "preconditioned"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.corrections < 0 or not self.tau > 0 or self.gamma < 0:
            raise DambenchInputError(
                "Sampler settings need steps >= 1, corrections >= 0, tau > 0, gamma >= 0; got "
                f"steps={self.steps}, corrections={self.corrections}, tau={self.tau}, "
                f"gamma={self.gamma}."
            )
        if self.corrector not in CORRECTORS:
            raise DambenchInputError(
                f"corrector={self.corrector!r}; choose from {CORRECTORS}."
            )
        if self.corrector == "preconditioned" and not self.tau < 2:
            raise DambenchInputError(
                f"The preconditioned corrector needs 0 < tau < 2 (a fraction of the posterior "
                f"variance); got tau={self.tau}. Use tau=0.5."
            )

    def network_evaluations(self) -> int:
        """Network evaluations per sample: ``steps * (1 + corrections)``."""
        return self.steps * (1 + self.corrections)


def member_generator(seed: int, member: int, device: torch.device | str = "cpu"):
    """The ``torch.Generator`` of ensemble member ``member`` of a run with seed ``seed``.

    Seeded with a 63-bit integer derived from ``(seed, member)`` by numpy's ``SeedSequence``,
    stable across runs and machines (CPU and CUDA generators give different streams).
    """
    if seed < 0 or member < 0:
        raise DambenchInputError(f"seed and member must be >= 0; got {seed=}, {member=}.")
    state = np.random.SeedSequence([0x5DA, int(seed), int(member)]).generate_state(2, np.uint32)
    generator = torch.Generator(device=device)
    generator.manual_seed((int(state[0]) << 31) ^ int(state[1]))
    return generator


def _noise(shape, generators, like: torch.Tensor | None = None, *, device=None, dtype=None):
    """Standard normal (len(generators) * shape[0], ...), block k from ``generators[k]``."""
    if like is not None:
        device, dtype = like.device, like.dtype
    return torch.cat(
        [torch.randn(shape, generator=g, device=device, dtype=dtype) for g in generators]
    )


def _predictor(eps_fn, x, t, t_next, schedule, observations, settings) -> torch.Tensor:
    """One exponential-integrator step from ``t`` to ``t_next``; the guidance part damped by
    ``1 / (1 + h kappa)`` (semi-implicit) with the ``"preconditioned"`` corrector."""
    eps_prior, eps = _guided(eps_fn, x, t, schedule, observations, settings.gamma)
    ratio = schedule.mu(t_next) / schedule.mu(t)
    sigma, sigma_next = schedule.sigma(t), schedule.sigma(t_next)
    if settings.corrector == "langevin" or not observations:
        return ratio.to(x) * x + (sigma_next - ratio * sigma).to(x) * eps
    h = float((ratio * sigma - sigma_next) * sigma)  # the step length along the guidance score
    score = (eps_prior - eps) / float(sigma)  # grad_x log p(y | x_t)
    kappa = likelihood_curvature(x, t, schedule, observations, settings.gamma)
    drift = ratio.to(x) * x + (sigma_next - ratio * sigma).to(x) * eps_prior
    return drift + h * score / (1.0 + h * kappa)


def _corrector(eps_fn, x, t, noise, schedule, observations, settings) -> torch.Tensor:
    """One corrector step at ``t`` with standard-normal ``noise`` (module docstring)."""
    sigma = schedule.sigma(t)
    eps = _guided(eps_fn, x, t, schedule, observations, settings.gamma)[1]
    if settings.corrector == "langevin" or not observations:
        dims = tuple(range(1, x.ndim))
        delta = settings.tau / eps.square().mean(dim=dims, keepdim=True)
        return x - sigma.to(x) * (delta * eps + torch.sqrt(2.0 * delta) * noise)
    score = -eps / sigma.to(eps)  # (N, ...)
    variance = posterior_variance(x, t, schedule, observations, settings.gamma)
    dims = tuple(range(1, x.ndim))
    # the paper's global step (a signal-to-noise ratio), capped per element at a fraction tau of
    # the element's posterior variance, with the Ornstein-Uhlenbeck noise of that fraction
    glob = settings.tau * sigma.to(x).square() / eps.square().mean(dim=dims, keepdim=True)
    step = torch.minimum(glob, settings.tau * variance)
    return x + step * score + torch.sqrt(step * (2.0 - step / variance)) * noise


def sample(
    eps_fn: EpsFn,
    shape: Sequence[int],
    generators: Sequence[torch.Generator],
    schedule: VPSchedule,
    settings: SamplerSettings,
    observations: Sequence[GaussianObservation] = (),
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw one sample per generator with the predictor-corrector sampler (module docstring).

    Parameters
    ----------
    eps_fn
        The noise predictor (in eval mode; samples must not interact).
    shape
        (N, ...) of one member's block (e.g. (B, C, H, W)).
    generators
        One generator per member (:func:`member_generator`), on ``device``.
    schedule, settings
        Diffusion schedule and sampler settings.
    observations
        Likelihood terms for the stacked blocks (``len(generators) * N`` rows, member-major);
        none: unconditional samples from the prior.

    Returns
    -------
    (len(generators) * N, ...) samples at ``t = 0``, member-major.
    """
    shape = tuple(shape)
    x = _noise(shape, generators, device=device, dtype=dtype)
    times = torch.linspace(1.0, 0.0, settings.steps + 1, dtype=torch.float64)
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        x = _predictor(eps_fn, x, t, t_next, schedule, observations, settings)
        for _ in range(settings.corrections):
            z = _noise(shape, generators, x)
            x = _corrector(eps_fn, x, t_next, z, schedule, observations, settings)
    return x


def check_samples(samples: torch.Tensor, settings: SamplerSettings, context: str) -> None:
    """Raise :class:`SamplerDivergedError` when ``samples`` hold non-finite values or values
    beyond :data:`DIVERGENCE_LIMIT` (normalised units: no state is thousands of stds away)."""
    finite = bool(torch.isfinite(samples).all())
    largest = float(samples.abs().max()) if finite else math.inf
    if largest > DIVERGENCE_LIMIT:
        raise SamplerDivergedError(
            f"{context}: guided sampling diverged (largest |value| {largest:.3g} > "
            f"{DIVERGENCE_LIMIT:g} normalised units) with steps={settings.steps}, "
            f"gamma={settings.gamma}. Use more steps, a larger gamma or a larger observation-std "
            "floor (the guidance is stiff when sigma_y**2 + gamma (sigma/mu)**2 is small)."
        )


def sample_members(
    draw: Callable[[list[torch.Generator]], torch.Tensor],
    members: int,
    member_batch: int,
    seed: int,
    device: torch.device | str,
) -> torch.Tensor:
    """Ensemble members (B, N, ...) sampled ``member_batch`` members at a time.

    ``draw(generators)`` returns ``len(generators) * B`` samples, member-major (as
    :func:`sample`); member ``k`` uses :func:`member_generator` ``(seed, k)``.
    """
    if members < 1 or member_batch < 1:
        raise DambenchInputError(
            f"Need members >= 1 and member_batch >= 1; got {members=}, {member_batch=}."
        )
    chunks = []
    for start in range(0, members, member_batch):
        ids = range(start, min(start + member_batch, members))
        stacked = draw([member_generator(seed, k, device) for k in ids])  # (n B, ...)
        chunks.append(stacked.reshape(len(ids), -1, *stacked.shape[1:]))  # (n, B, ...)
    return torch.cat(chunks).transpose(0, 1)  # (B, N, ...)


# --- error statistics measured on the train split ------------------------------------------------


def background_error_std(dataset: xr.Dataset, stats: xr.Dataset) -> np.ndarray:
    """Per-channel RMS of the normalised background error ``(x_b - x*) / std``, (C,).

    The plain mean over every cycle and grid point (each grid point is one pixel of the
    Gaussian pseudo-observation, so no area weights); lazy inputs are reduced chunk by chunk.
    """
    channels = [str(c) for c in dataset[schema.CHANNEL].values]
    std = xr.DataArray(channel_std(stats, channels), dims=schema.CHANNEL)
    error = (dataset["background"] - dataset["target"]) / std.values[:, None, None]
    msd = (error.astype(np.float64) ** 2).mean(dim=(schema.TIME, *schema.SPATIAL_DIMS))
    values = np.sqrt(np.asarray(msd.transpose(schema.CHANNEL).values, dtype=np.float64))
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise DambenchInputError(
            f"Background-error std must be finite and > 0 per channel; got {values.tolist()} "
            "(NaN in background/target, or a background equal to the target)."
        )
    return values


def observation_error_std(dataset: xr.Dataset, stats: xr.Dataset, floor: float) -> np.ndarray:
    """Per-channel observation-error std in normalised units, ``max(sigma_o / std, floor)``, (C,).

    ``sigma_o`` is the noise recorded in ``dataset.attrs["observation"]``
    (:func:`~baselines.layers.covariance.observation_noise_of`: a missing or unreadable record is
    refused, never replaced by the default noise).
    """
    channels = [str(c) for c in dataset[schema.CHANNEL].values]
    noise = observation_noise_of(dataset)
    return np.maximum(normalised_observation_error_std(channels, stats, noise), floor)


def normalised_innovations(
    members: torch.Tensor, observation: torch.Tensor, mask: torch.Tensor, std: torch.Tensor
) -> dict[str, list[float]]:
    """Per-channel statistics of ``(member - y) / sigma_o`` at the observed points.

    Parameters
    ----------
    members
        (B, N, C, H, W) ensemble members.
    observation, mask
        (B, C, H, W) observations and their 0/1 mask.
    std
        (C,) observation-error std, in the members' units.

    Returns
    -------
    ``{"rms": [...], "beyond_5": [...], "count": [...]}``, one value per channel: the RMS of
    the normalised innovations over members and observed points, the share of them beyond 5 in
    magnitude, and the observed points (NaN statistics for a channel without observations). A
    sampler that samples the posterior gives an RMS near ``sqrt(1 - P / sigma_o**2 + d**2)``
    (``P`` the posterior variance, ``d`` the normalised analysis departure): below about 1.5 and
    no values beyond 5 when it works.
    """
    z = (members - observation[:, None]) / std.reshape(1, 1, -1, 1, 1).to(members)
    weight = mask[:, None].expand_as(z).to(members)
    dims = (0, 1, 3, 4)
    count = weight.sum(dims)
    rms = ((z.square() * weight).sum(dims) / count).sqrt()
    beyond = ((z.abs() > 5).to(members) * weight).sum(dims) / count
    points = mask.to(members).sum((0, 2, 3))
    return {
        "rms": [float(v) for v in rms],
        "beyond_5": [float(v) for v in beyond],
        "count": [float(v) for v in points],
    }
