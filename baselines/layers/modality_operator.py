"""Learned observation operators of the multi-modal observations (Multi-VAE-Var's modality term).

What it is
    For each *observed* modality ``m`` of a batch (the primary variable of each stream,
    :func:`~baselines.layers.adapter.modality_streams`: ``precip``, ``olr``; a gauge count
    describes the instruments and observes nothing) a small network ``H_m`` maps the analysis
    state ``x`` (B, C, H, W, normalised units) to that modality's field on the model grid
    (B, 1, H, W, in the loader's units: transformed and z-scored), with a learned error std
    ``sigma_m = exp(log_sigma_m)``. ``H_m`` is a 3 x 3 convolution on the sphere (longitude
    wraps, rows beyond a pole continue on the other side: :func:`~baselines.layers.sphere_pad.
    pad_sphere`) from C channels to ``hidden``, a GELU, and a 1 x 1 convolution to one channel.
    The last layer starts at zero: ``H_m = 0``, so the term is constant in the state and the
    analysis is the host's until the operator is trained.

Training (:meth:`ModalityOperator.nll`)
    ``-log N(y_m; H_m(x*), sigma_m^2)`` (without its constant ``log sqrt(2 pi)``) averaged over
    the cells where modality ``m`` has data, summed over the modalities, with ``x*`` the
    **target** of a training pair: ``H_m`` is the regression of the modality on the true state,
    ``sigma_m^2`` the variance of what the regression leaves (the minimiser over ``sigma_m`` is
    the RMS residual). What an observation operator is; it is fitted on the pairs the trainer
    hands it (the train split), never at analysis time.

Analysis (:meth:`ModalityOperator.misfit`)
    ``M(x) = sum_m sum_cells (H_m(x) - y_m)^2 / (2 sigma_m^2)`` over the cells with data
    (``batch.modality_cells()``: a present sample and the loader's per-cell mask); a missing
    cell's value (0, NaN or anything) never enters ``M`` or its gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from baselines.interface import DABatch
from baselines.layers.adapter import modality_streams
from baselines.layers.sphere_pad import pad_sphere
from dambench import schema
from dambench.exceptions import DambenchInputError

__all__ = ["ModalityData", "ModalityOperator", "observed_modalities"]


def observed_modalities(names: Sequence[str]) -> tuple[int, ...]:
    """Positions in ``names`` (the loader's modality order) of the observed modalities: each
    stream's primary variable (``precip``, ``olr``), not a gauge count.

    Raises
    ------
    DambenchInputError
        ``names`` holds no observed modality (nothing for an operator to predict).
    """
    positions = tuple(
        s.indices[s.primary] for s in modality_streams(names) if s.primary is not None
    )
    if not positions:
        observed = [n for n in schema.MODALITIES if n == schema.MODALITIES[n].group]
        raise DambenchInputError(
            f"A modality observation term needs an observed modality (one of {observed}) among "
            f"the modalities {list(names)}; load one (task.modalities) or set "
            "modality_term: false."
        )
    return positions


@dataclass(frozen=True)
class ModalityData:
    """The observed modalities of a batch: ``values`` (B, M, H, W), 0 where a cell has no data,
    and ``cells`` (B, M, H, W) bool, True where it has."""

    values: torch.Tensor
    cells: torch.Tensor

    def sample(self, index: int) -> ModalityData:
        """The sample ``index`` as a batch of one."""
        return ModalityData(self.values[index : index + 1], self.cells[index : index + 1])


class ModalityOperator(nn.Module):
    """``H_m`` and ``sigma_m`` for each observed modality (see the module docstring).

    Parameters
    ----------
    state_chans
        Channels C of the analysis state.
    modalities
        The loader's modality names, in ``batch.modalities`` order.
    hidden
        Width of each operator's hidden layer.
    """

    def __init__(self, state_chans: int, modalities: Sequence[str], *, hidden: int = 8) -> None:
        super().__init__()
        self.modalities = tuple(str(n) for n in modalities)
        self.observed = observed_modalities(self.modalities)
        self.operators = nn.ModuleList(
            nn.Sequential(nn.Conv2d(state_chans, hidden, 3), nn.GELU(), nn.Conv2d(hidden, 1, 1))
            for _ in self.observed
        )
        for operator in self.operators:  # H_m = 0: the host's analysis until trained
            nn.init.zeros_(operator[-1].weight)
            nn.init.zeros_(operator[-1].bias)
        self.log_sigma = nn.Parameter(torch.zeros(len(self.observed)))

    @property
    def observed_names(self) -> tuple[str, ...]:
        return tuple(self.modalities[i] for i in self.observed)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """``H_m(x)`` for every observed modality: (B, C, H, W) -> (B, M, H, W)."""
        padded = pad_sphere(state, 1, 1)
        return torch.cat([operator(padded) for operator in self.operators], dim=1)

    def data(self, batch: DABatch) -> ModalityData | None:
        """The batch's observed modalities, ``None`` when it carries no modalities.

        Raises
        ------
        DambenchInputError
            ``batch.modalities`` does not hold the operator's modalities.
        """
        cells = batch.modality_cells()  # checks modality_present and modality_mask
        if cells is None:
            return None
        if cells.shape[1] != len(self.modalities):
            raise DambenchInputError(
                f"The modality operator was built for {len(self.modalities)} modalities "
                f"{list(self.modalities)} (in that order); batch.modalities has shape "
                f"{tuple(batch.modalities.shape)}. Load the data with the same modalities."
            )
        index = list(self.observed)
        cells = cells[:, index]
        values = torch.where(cells, batch.modalities[:, index], 0.0)
        return ModalityData(values, cells)

    def _half_squares(self, state: torch.Tensor, data: ModalityData) -> torch.Tensor:
        """``(H_m(x) - y_m)^2 / (2 sigma_m^2)`` (B, M, H, W), exactly 0 where no data."""
        residual = torch.where(data.cells, self(state) - data.values, 0.0)
        inverse_variance = torch.exp(-2.0 * self.log_sigma).view(1, -1, 1, 1)
        return 0.5 * residual.square() * inverse_variance

    def misfit(self, data: ModalityData) -> Callable[[torch.Tensor], torch.Tensor]:
        """``x -> M(x)``, the modalities' observation term of an analysis (a scalar summed
        over the batch), for :func:`~baselines.layers.variational.variational_solve`."""

        def term(state: torch.Tensor) -> torch.Tensor:
            return self._half_squares(state, data).sum()

        return term

    def nll(self, target: torch.Tensor, data: ModalityData) -> torch.Tensor:
        """``sum_m mean_cells [(H_m(x*) - y_m)^2 / (2 sigma_m^2) + log sigma_m]`` over the
        cells with data (a modality without any adds 0): the training loss of ``H_m`` and
        ``sigma_m`` on the pairs' target state ``x*`` (B, C, H, W)."""
        counts = data.cells.sum(dim=(0, 2, 3))  # (M,)
        squares = self._half_squares(target, data).sum(dim=(0, 2, 3))  # (M,)
        per_modality = (squares + counts * self.log_sigma) / counts.clamp(min=1)
        return per_modality.sum()

    def extra_repr(self) -> str:
        return f"observed={list(self.observed_names)}"
