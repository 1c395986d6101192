"""The latent variational solve of VAE-Var: L-BFGS on ``J(z)`` through a differentiable decoder.

Written from ``shared/reference/baselines.md`` sections 5 and 11 (VAE-Var, Xiao et al. 2025,
https://arxiv.org/abs/2405.13711); no code was copied. Used by :mod:`baselines.models.vaevar`,
which documents the method and its settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dambench.exceptions import DambenchInputError

__all__ = ["Misfit", "VariationalSolution", "latent_cost", "variational_solve"]


@dataclass(frozen=True)
class VariationalSolution:
    """The result of :func:`variational_solve` for one sample.

    Attributes
    ----------
    analysis
        ``x(z*)`` (1, C, H, W), normalised units, no gradient.
    latent
        ``z*`` (1, L, H, W).
    costs
        ``J`` at the starting point (``z = 0`` or ``z0``) and after each outer step
        (``outer_steps + 1`` values).
    evaluations
        Number of cost-and-gradient evaluations (decoder forward + backward passes).
    """

    analysis: torch.Tensor
    latent: torch.Tensor
    costs: list[float]
    evaluations: int


Misfit = Callable[[torch.Tensor], torch.Tensor]
"""``analysis (1, C, H, W) -> scalar``: a further observation term's ``1/2 sum r^2 / R``
(before the division by ``lambda``), differentiable in the analysis."""


def latent_cost(
    decode: Callable[[torch.Tensor], torch.Tensor],
    background: torch.Tensor,
    observation: torch.Tensor,
    mask: torch.Tensor,
    sigma_err: torch.Tensor,
    obs_variance: torch.Tensor,
    *,
    bg_lambda: float = 400.0,
    modality_misfit: Misfit | None = None,
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``z -> (J(z), x(z))`` with ``x(z) = x_b + d(z) sigma`` and

    ``J(z) = 1/2 ||z||^2 + (1/2 sum mask (x(z) - y)^2 / R + M(x(z))) / lambda``,

    ``M`` the ``modality_misfit`` (0 when ``None``): the observation terms of other
    instruments, weighted by ``1/lambda`` as the state's own. Arguments as
    :func:`variational_solve`'s; ``J`` is differentiable in ``z``.
    """
    sigma = sigma_err.view(1, -1, 1, 1).to(background)
    weight = mask / obs_variance.view(1, -1, 1, 1).to(background) / bg_lambda  # (1, C, H, W)

    def cost(latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        analysis = background + decode(latent) * sigma
        value = 0.5 * (latent**2).sum() + 0.5 * (weight * (analysis - observation) ** 2).sum()
        if modality_misfit is not None:
            value = value + modality_misfit(analysis) / bg_lambda
        return value, analysis

    return cost


def variational_solve(
    decode: Callable[[torch.Tensor], torch.Tensor],
    background: torch.Tensor,
    observation: torch.Tensor,
    mask: torch.Tensor,
    sigma_err: torch.Tensor,
    obs_variance: torch.Tensor,
    latent_shape: Sequence[int],
    *,
    bg_lambda: float = 400.0,
    outer_steps: int = 2,
    max_iter: int = 10,
    history_size: int = 10,
    z0: torch.Tensor | None = None,
    modality_misfit: Misfit | None = None,
) -> VariationalSolution:
    """Minimise ``J(z) = 1/2 ||z||^2 + (1/2 sum mask (x_b + d(z) sigma - y)^2 / R + M) / lambda``
    (:func:`latent_cost`; ``M`` = 0 without ``modality_misfit``).

    Parameters
    ----------
    decode
        ``d``: ``z`` (1, *latent_shape) -> increment in error units (1, C, H, W);
        differentiable. With ``d(0) = 0`` (VAE-Var's centred increment) the solve starts from
        the background, ``x(0) = x_b``.
    background, observation, mask
        (1, C, H, W): ``x_b``, ``y`` (any value where unobserved) and 1 where observed.
    sigma_err, obs_variance
        (C,): the error scale and ``R`` (normalised units, > 0).
    latent_shape
        (L, H, W) of ``z``.
    bg_lambda, outer_steps, max_iter, history_size
        ``lambda``; L-BFGS steps and each step's iterations and history (strong-Wolfe line
        search, as upstream).
    z0
        (1, *latent_shape) first guess to start from (a multi-modal adapter's); ``None``: 0.
    modality_misfit
        ``M(x)``: further observations' misfit of the analysis (:data:`Misfit`), e.g. the
        learned modality operators of Multi-VAE-Var; ``None``: none.

    Returns
    -------
    VariationalSolution
        Starting from ``z0`` (default 0). With no observations and ``z0 = 0``, ``z* = 0`` (the
        gradient vanishes there).
    """
    shape = (1, *latent_shape)
    if z0 is not None and tuple(z0.shape) != shape:
        raise DambenchInputError(f"z0 must be {shape}; got {tuple(z0.shape)}.")
    cost = latent_cost(
        decode, background, observation, mask, sigma_err, obs_variance,
        bg_lambda=bg_lambda, modality_misfit=modality_misfit,
    )  # fmt: skip
    start = torch.zeros(shape, dtype=background.dtype, device=background.device)
    z = (start if z0 is None else z0.detach().to(background).clone()).requires_grad_(True)
    evaluations = 0

    def closure() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        value, _ = cost(z)
        z.grad = torch.autograd.grad(value, z)[0]
        return value.detach()

    with torch.no_grad():
        costs = [float(cost(z)[0])]
    optimizer = torch.optim.LBFGS(
        [z],
        lr=1.0,
        max_iter=max_iter,
        history_size=history_size,
        line_search_fn="strong_wolfe",
    )
    for _ in range(outer_steps):
        optimizer.step(closure)
        with torch.no_grad():
            costs.append(float(cost(z)[0]))
    with torch.no_grad():
        analysis = cost(z)[1]
    return VariationalSolution(analysis.detach(), z.detach(), costs, evaluations)
