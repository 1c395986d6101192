"""A classical 3D-Var reference with a homogeneous, isotropic background-error covariance.

Paper
    DAMBench (Wang et al. 2025, https://arxiv.org/abs/2511.01468), eq. (5) and appendix B give
    the variational cost that every classical method minimises,
    ``J(x) = 1/2 (x - x_b)^T B^-1 (x - x_b) + 1/2 (y - H x)^T R^-1 (y - H x)``. The 3D-Var here is
    the textbook one of Courtier et al. (1998, QJRMS 124, 1783-1807, the paper's ref. [9]) and Daley
    (1991, "Atmospheric Data Analysis", ch. 4-5) with a homogeneous, isotropic B.
Upstream code
    None: the DAMBench repository has no 3D-Var; this file is written from the equations.

What is computed
    With H selecting the observed grid points (a linear, exact observation operator), the
    minimiser of J is ``x_a = x_b + B H^T (H B H^T + R)^-1 (y - H x_b)``, solved in observation
    space, independently for every (sample, channel):

    - ``B = sigma_b[c]**2 * rho_c(r)``: a per-channel variance times a correlation of the chordal
      distance between grid points (:func:`baselines.layers.covariance.correlation_from_cos`),
      SOAR ``(1 + r/L) exp(-r/L)`` or Gaussian ``exp(-r^2 / (2 L^2))``.
    - ``R = diag(max(sigma_o[c], floor)**2)``, ``sigma_o`` in normalised units
      (``OBSERVATION_ERROR_STD[c] / std[c]``).
    - ``(H B H^T + R) w = y - H x_b`` is solved by Cholesky (about 1,450 observations per channel
      at 5 % of 121 x 240), and the increment ``B H^T w`` is spread back to every grid point
      exactly with FFTs in longitude (:func:`baselines.layers.covariance.spread_on_grid`).
    - ``sigma_b`` and ``L`` are estimated from the **train split** only (:meth:`ThreeDVar.fit`,
      :func:`baselines.layers.covariance.fit_background_error`) from the errors ``x_b - x*``.

Deliberate deviations
    - Distances are chordal, not great-circle (see :mod:`baselines.layers.covariance`); the two
      agree to 1 % below 28 degrees (about 3,100 km).
    - B is homogeneous and isotropic with one variance and one length scale per channel, and
      channels are uncorrelated (no balance operator): the simplest B that the benchmark's
      per-channel masks and normalised units allow.
    - The background-error statistics are second moments of ``x_b - x*`` (no bias removal).
    - Not trainable: ``loss`` returns the analysis MSE against the target without a gradient
      (an evaluation score for validation loops), ``ModelInfo.trainable`` is ``False``.
    - The whole globe only (``supports_patches`` is ``False``): the FFT spread needs the full
      circle of longitudes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from baselines.interface import Analysis, BaselineModule, DABatch, LossAndDiagnostics, ModelInfo
from baselines.layers.covariance import (
    Correlation,
    channel_std,
    check_correlation,
    check_longitude,
    check_train_split,
    correlation_from_cos,
    cycle_indices,
    equiangular_grid,
    fit_background_error,
    normalised_errors,
    normalised_observation_error_std,
    observation_noise_of,
    spread_on_grid,
    unit_vectors,
    zonal_kernel_spectrum,
)
from baselines.models.background import evaluation_loss
from baselines.registry import register_model
from dambench import schema
from dambench.exceptions import DambenchInputError

DEFAULT_OBS_ERROR_FLOOR = 1e-3
"""Smallest observation-error std used in R (normalised units), so R stays positive definite."""
PARAMS_FORMAT_VERSION = 1


# --- building blocks ---------------------------------------------------------------------------


def _as_channel_vector(values: float | Sequence[float] | torch.Tensor, n: int, name: str):
    out = torch.as_tensor(values, dtype=torch.float64).flatten()
    if out.numel() == 1:
        out = out.expand(n).clone()
    if out.numel() != n:
        raise DambenchInputError(f"{name} needs one value per channel ({n}); got {out.numel()}.")
    if not torch.all(torch.isfinite(out)):
        raise DambenchInputError(f"{name} must be finite; got {out.tolist()}.")
    return out


# --- model -------------------------------------------------------------------------------------


class ThreeDVar(BaselineModule):
    """Classical 3D-Var with a homogeneous, isotropic, per-channel B, solved in observation space.

    For every sample and channel ``c`` (normalised units):
    ``x_a = x_b + B H^T (H B H^T + R)^-1 (y - H x_b)`` with
    ``B = sigma_b[c]^2 rho(r; L[c])`` (:func:`~baselines.layers.covariance.correlation_from_cos`,
    chordal distance ``r``), ``R = max(sigma_o[c], obs_error_floor)^2 I`` and ``H`` selecting the
    points where ``batch.mask > 0.5``. This is the exact minimiser of the paper's eq. (5).

    Parameters
    ----------
    sigma_b
        Background-error std per channel (C,) (or one value), normalised units.
    length_scale_km
        Correlation length scale ``L`` per channel (C,) (or one value), km.
    obs_error_std
        Observation-error std per channel (C,) (or one value), normalised units
        (:func:`~baselines.layers.covariance.normalised_observation_error_std`); 0 is allowed
        (floored).
    correlation
        ``"soar"`` (default) or ``"gaussian"``.
    obs_error_floor
        Lower bound on the observation-error std used in R.
    compute_std
        Also return the analysis-error std ``sqrt(diag(B - B H^T (H B H^T + R)^-1 H B))``.
        It costs ``n_obs^2 * H * W`` flops per (sample, channel), about 1 s each at 121 x 240 with
        2 CPU cores, so it is off by default (``std=None``).
    latitude, longitude
        Grid coordinates in degrees; default: the equiangular grid with both poles of the batch's
        shape (:func:`~baselines.layers.covariance.equiangular_grid`). :meth:`fit` sets them to
        the dataset's grid, so a batch on another grid is refused.
    channels
        Channel names (set by :meth:`fit`; metadata for :meth:`save`).
    fit_info
        Provenance of the fitted parameters (metadata for :meth:`save`).
    max_distance_km, max_cycles, cycles_per_chunk
        Settings of :meth:`fit`: pairs farther apart than ``max_distance_km`` do not enter the
        length-scale fit; at most ``max_cycles`` evenly spaced train cycles (default: all),
        read ``cycles_per_chunk`` at a time (memory ``cycles_per_chunk * C * H * W`` float64).

    Notes
    -----
    Per (sample, channel) the cost is one Cholesky of the ``(n_obs, n_obs)`` matrix
    (``n_obs^3 / 3`` flops, ~1e9 at 1,450 observations), plus, per channel, the correlation table
    ``(H, H, W)`` and its FFT; the spread back to the grid costs ``H^2 (W/2 + 1)`` per sample.
    Masks may differ per channel and per sample. Computation is in float64; the analysis has
    the background's dtype.
    """

    def __init__(
        self,
        sigma_b: float | Sequence[float] | torch.Tensor,
        length_scale_km: float | Sequence[float] | torch.Tensor,
        obs_error_std: float | Sequence[float] | torch.Tensor,
        *,
        correlation: Correlation = "soar",
        obs_error_floor: float = DEFAULT_OBS_ERROR_FLOOR,
        compute_std: bool = False,
        latitude: np.ndarray | None = None,
        longitude: np.ndarray | None = None,
        channels: Sequence[str] | None = None,
        fit_info: dict | None = None,
        max_distance_km: float = 3000.0,
        max_cycles: int | None = None,
        cycles_per_chunk: int = 8,
    ) -> None:
        super().__init__()
        check_correlation(correlation)
        if not obs_error_floor > 0:
            raise DambenchInputError(f"obs_error_floor must be > 0, got {obs_error_floor}.")
        if not (max_distance_km > 0 and cycles_per_chunk >= 1):
            raise DambenchInputError(
                f"Need max_distance_km > 0 and cycles_per_chunk >= 1; got {max_distance_km=}, "
                f"{cycles_per_chunk=}."
            )
        self.correlation = correlation
        self.obs_error_floor = float(obs_error_floor)
        self.compute_std = compute_std
        self.max_distance_km = float(max_distance_km)
        self.max_cycles = max_cycles
        self.cycles_per_chunk = int(cycles_per_chunk)
        n = len(channels) if channels is not None else torch.as_tensor(sigma_b).numel()
        n = max(n, torch.as_tensor(length_scale_km).numel(), torch.as_tensor(obs_error_std).numel())
        self.register_buffer("sigma_b", torch.ones(n, dtype=torch.float64))
        self.register_buffer("length_scale_km", torch.ones(n, dtype=torch.float64))
        self.register_buffer("obs_error_std", torch.ones(n, dtype=torch.float64))
        self._set_parameters(sigma_b, length_scale_km, obs_error_std, n)
        self._set_grid(latitude, longitude)
        self.channels = None if channels is None else list(channels)
        self.fit_info = dict(fit_info or {})

    def _set_parameters(self, sigma_b: Any, length_scale_km: Any, obs_error_std: Any, n: int):
        """Validate and store the per-channel parameters (float64 buffers of ``n`` values)."""
        sigma = _as_channel_vector(sigma_b, n, "sigma_b")
        length = _as_channel_vector(length_scale_km, n, "length_scale_km")
        obs = _as_channel_vector(obs_error_std, n, "obs_error_std")
        if torch.any(sigma <= 0) or torch.any(length <= 0) or torch.any(obs < 0):
            raise DambenchInputError(
                "Need sigma_b > 0, length_scale_km > 0 and obs_error_std >= 0 per channel; got "
                f"{sigma.tolist()=}, {length.tolist()=}, {obs.tolist()=}."
            )
        device = self.sigma_b.device
        self.sigma_b, self.length_scale_km = sigma.to(device), length.to(device)
        self.obs_error_std = obs.to(device)

    def _set_grid(self, latitude: np.ndarray | None, longitude: np.ndarray | None) -> None:
        if (latitude is None) != (longitude is None):
            raise DambenchInputError("Pass both latitude and longitude, or neither.")
        if longitude is not None:
            check_longitude(np.asarray(longitude, np.float64))
        self.latitude = None if latitude is None else np.asarray(latitude, np.float64)
        self.longitude = None if longitude is None else np.asarray(longitude, np.float64)

    @property
    def in_chans(self) -> int:
        return int(self.sigma_b.numel())

    # - fitting and persistence -

    def fit(
        self,
        dataset: xr.Dataset,
        stats: xr.Dataset,
        *,
        verbose: bool = False,
        obs_error_std: Sequence[float] | None = None,
    ) -> ThreeDVar:
        """Fit ``sigma_b`` and ``L`` per channel on the train split's background errors.

        Parameters
        ----------
        dataset
            ``open_dataset(..., split="train")``: ``background`` and ``target``
            (time, channel, latitude, longitude), physical units. Any cycle whose ``split`` is
            not ``"train"`` is an error: B must never see validation or test data.
        stats
            Train-split mean/std per channel (:func:`dambench.load.stats_from_attrs`).
        verbose
            A progress bar over the chunks of cycles.
        obs_error_std
            R's std per channel in normalised units; default: the dataset's recorded observation
            noise (:func:`~baselines.layers.covariance.observation_noise_of`, an unreadable
            record is an error) divided by ``stats.std``.

        Returns
        -------
        ``self``, refitted: its parameters (and channel count) now follow ``dataset``, its grid
        is the dataset's, and ``fit_info`` records the provenance.
        """
        channels = check_train_split(dataset, type(self).__name__)
        noise = "explicit obs_error_std"
        if obs_error_std is None:
            noise = observation_noise_of(dataset)
            obs_error_std = normalised_observation_error_std(channels, stats, noise)
        std = channel_std(stats, channels)
        latitude = dataset[schema.LATITUDE].values.astype(np.float64)
        longitude = dataset[schema.LONGITUDE].values.astype(np.float64)
        times = cycle_indices(dataset.sizes[schema.TIME], self.max_cycles)
        errors = normalised_errors(
            dataset, std, times, self.cycles_per_chunk, desc="3D-Var fit", verbose=verbose
        )
        result = fit_background_error(
            errors,
            latitude,
            longitude,
            correlation=self.correlation,
            max_distance_km=self.max_distance_km,
        )
        self._set_parameters(result.sigma_b, result.length_scale_km, obs_error_std, len(channels))
        self._set_grid(latitude, longitude)
        self.channels = channels
        self.fit_info = {
            "split": "train",
            "dataset": str(dataset.attrs.get("dambench_dataset", "")),
            "n_cycles": int(result.n_samples),
            "max_distance_km": self.max_distance_km,
            "correlation_misfit": [float(m) for m in result.misfit],
            "observation_noise": str(noise),
        }
        return self

    def to_dict(self) -> dict:
        """The fitted parameters as plain JSON types."""
        return {
            "model": "threedvar",
            "format_version": PARAMS_FORMAT_VERSION,
            "units": {
                "sigma_b": "1 (normalised)",
                "obs_error_std": "1 (normalised)",
                "length_scale_km": "km",
            },
            "correlation": self.correlation,
            "channels": self.channels,
            "sigma_b": self.sigma_b.tolist(),
            "length_scale_km": self.length_scale_km.tolist(),
            "obs_error_std": self.obs_error_std.tolist(),
            "obs_error_floor": self.obs_error_floor,
            "fit": self.fit_info,
        }

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> ThreeDVar:
        """A ThreeDVar from a JSON file written by :meth:`save`; ``kwargs`` override fields
        (e.g. ``compute_std=True``)."""
        try:
            params = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DambenchInputError(f"Cannot read 3D-Var parameters from {path}: {err}") from err
        if not isinstance(params, dict) or params.get("model") != "threedvar":
            raise DambenchInputError(f"{path} holds no 3D-Var parameters (no model='threedvar').")
        config = {
            "sigma_b": params["sigma_b"],
            "length_scale_km": params["length_scale_km"],
            "obs_error_std": params["obs_error_std"],
            "correlation": params["correlation"],
            "obs_error_floor": params["obs_error_floor"],
            "channels": params.get("channels"),
            "fit_info": params.get("fit", {}),
        }
        config.update(kwargs)
        return cls(**config)

    # - analysis -

    def _grid(self, n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
        if self.latitude is None:
            return equiangular_grid(n_lat, n_lon)
        if (self.latitude.size, self.longitude.size) != (n_lat, n_lon):
            raise DambenchInputError(
                f"The model's grid is {self.latitude.size} x {self.longitude.size}; the batch is "
                f"{n_lat} x {n_lon}."
            )
        return self.latitude, self.longitude

    def _check_batch(self, batch: DABatch) -> None:
        background = batch.background
        if background.shape[1] != self.in_chans:
            raise DambenchInputError(
                f"3D-Var has parameters for {self.in_chans} channels; the batch has "
                f"{background.shape[1]}."
            )
        for name in ("observation", "mask"):
            if getattr(batch, name).shape != background.shape:
                raise DambenchInputError(
                    f"batch.{name} is {tuple(getattr(batch, name).shape)}; expected "
                    f"{tuple(background.shape)} like the background."
                )

    def forward(self, batch: DABatch) -> Analysis:
        """The 3D-Var analysis of a batch.

        Parameters
        ----------
        batch
            ``background``, ``observation`` (0 where unobserved) and ``mask`` (1 where observed),
            (B, C, H, W), normalised units.

        Returns
        -------
        Analysis with ``mean`` (B, C, H, W) in the background's dtype and, when
        ``compute_std``, ``std`` (B, C, H, W).
        """
        self._check_batch(batch)
        background = batch.background
        n_batch, n_chan, n_lat, n_lon = background.shape
        latitude, longitude = self._grid(n_lat, n_lon)
        xyz = torch.as_tensor(unit_vectors(latitude, longitude), device=background.device)
        x_b = background.detach().to(torch.float64).reshape(n_batch, n_chan, -1)  # (B, C, H*W)
        y = batch.observation.detach().to(torch.float64).reshape(n_batch, n_chan, -1)
        observed = batch.mask.detach().reshape(n_batch, n_chan, -1) > 0.5  # (B, C, H*W)
        increment = torch.zeros_like(x_b)
        variance = torch.zeros_like(x_b) if self.compute_std else None
        for c in range(n_chan):
            innovation = y[:, c] - x_b[:, c]  # (B, H*W)
            weights = self._solve_channel(c, xyz, innovation, observed[:, c], variance)
            if not torch.any(weights != 0):
                continue
            kernel_hat = zonal_kernel_spectrum(
                latitude, n_lon, float(self.length_scale_km[c]), self.correlation, device=xyz.device
            )
            spread = spread_on_grid(weights.reshape(n_batch, n_lat, n_lon), kernel_hat)
            increment[:, c] = float(self.sigma_b[c]) ** 2 * spread.reshape(n_batch, -1)
        mean = (x_b + increment).reshape(background.shape).to(background.dtype)
        std = None
        if variance is not None:
            std = variance.clamp(min=0.0).sqrt().reshape(background.shape).to(background.dtype)
        return Analysis(mean=mean, std=std)

    def _solve_channel(
        self,
        c: int,
        xyz: torch.Tensor,
        innovation: torch.Tensor,
        observed: torch.Tensor,
        variance: torch.Tensor | None,
    ) -> torch.Tensor:
        """Weights ``w = (H B H^T + R)^-1 (y - H x_b)`` on the grid (B, H*W), zero where
        unobserved, for channel ``c``; fills ``variance[:, c]`` when given."""
        length = float(self.length_scale_km[c])
        var_b = float(self.sigma_b[c]) ** 2
        var_o = max(float(self.obs_error_std[c]), self.obs_error_floor) ** 2
        weights = torch.zeros_like(innovation)  # (B, H*W)
        for b in range(innovation.shape[0]):
            index = torch.nonzero(observed[b]).flatten()  # (n_obs,)
            if variance is not None:
                variance[b, c] = var_b
            if index.numel() == 0:
                continue
            points = xyz[index]  # (n_obs, 3)
            # H B H^T + R: (n_obs, n_obs)
            hbh = var_b * correlation_from_cos(points @ points.T, length, self.correlation)
            system = hbh + var_o * torch.eye(index.numel(), dtype=hbh.dtype, device=hbh.device)
            chol = torch.linalg.cholesky(system)
            rhs = innovation[b, index].unsqueeze(-1)  # (n_obs, 1)
            weights[b, index] = torch.cholesky_solve(rhs, chol).squeeze(-1)
            if variance is not None:
                variance[b, c] -= self._variance_reduction(xyz, points, chol, length, var_b)
        return weights

    def _variance_reduction(
        self,
        xyz: torch.Tensor,
        points: torch.Tensor,
        chol: torch.Tensor,
        length: float,
        var_b: float,
        chunk: int = 4096,
    ) -> torch.Tensor:
        """``diag(B H^T (H B H^T + R)^-1 H B)`` at every grid point, (H*W,), in chunks."""
        out = torch.empty(xyz.shape[0], dtype=torch.float64, device=xyz.device)
        for start in range(0, xyz.shape[0], chunk):
            block = xyz[start : start + chunk]  # (G, 3)
            cross = var_b * correlation_from_cos(points @ block.T, length, self.correlation)
            solved = torch.linalg.solve_triangular(chol, cross, upper=False)  # (n_obs, G)
            out[start : start + chunk] = (solved**2).sum(0)
        return out

    def loss(self, batch: DABatch) -> LossAndDiagnostics:
        """The analysis MSE (normalised units) against ``batch.target``, without a gradient:
        3D-Var has nothing to train (``trainable = False``)."""
        return evaluation_loss(self, batch)


# --- factory and registered variants -----------------------------------------------------------


def _create_threedvar(
    *,
    params: str | Path | None = None,
    in_chans: int = len(schema.CHANNELS),
    img_size: tuple[int, int] | None = None,
    sigma_b: float | Sequence[float] = 1.0,
    length_scale_km: float | Sequence[float] = 1000.0,
    obs_error_std: float | Sequence[float] = 0.1,
    **kwargs: Any,
) -> ThreeDVar:
    """From a saved parameter file (``params``), or from explicit values broadcast to
    ``in_chans`` channels (unfitted placeholders by default: fit with :meth:`ThreeDVar.fit`).
    ``img_size`` (H, W) fixes the grid to :func:`equiangular_grid` of that size."""
    if img_size is not None:
        kwargs["latitude"], kwargs["longitude"] = equiangular_grid(*img_size)
    if params is not None:
        return ThreeDVar.load(params, **kwargs)
    return ThreeDVar(
        _as_channel_vector(sigma_b, in_chans, "sigma_b"),
        _as_channel_vector(length_scale_km, in_chans, "length_scale_km"),
        _as_channel_vector(obs_error_std, in_chans, "obs_error_std"),
        **kwargs,
    )


THREEDVAR_INFO = ModelInfo(
    output="deterministic",
    trainable=False,
    needs_fit=True,
    paper="Courtier et al. (1998), QJRMS 124, 1783-1807; DAMBench appendix B, "
    "https://arxiv.org/abs/2511.01468",
    code="none",
    code_licence="none (no upstream code)",
)


@register_model(info=THREEDVAR_INFO)
def threedvar(**kwargs: Any) -> ThreeDVar:
    """3D-Var with SOAR correlations (fit on the train split with :meth:`ThreeDVar.fit`, or pass
    ``params=`` a JSON file from :meth:`ThreeDVar.save`)."""
    return _create_threedvar(**kwargs)


@register_model(info=THREEDVAR_INFO)
def threedvar_tiny(**kwargs: Any) -> ThreeDVar:
    """3D-Var on 4 channels with placeholder parameters (L = 2000 km), for CPU tests."""
    kwargs.setdefault("in_chans", 4)
    kwargs.setdefault("length_scale_km", 2000.0)
    return _create_threedvar(**kwargs)


@register_model(info=THREEDVAR_INFO)
def threedvar_small(**kwargs: Any) -> ThreeDVar:
    """Identical to :func:`threedvar`; registered so every size lists the reference."""
    return _create_threedvar(**kwargs)


@register_model(info=THREEDVAR_INFO)
def threedvar_full(**kwargs: Any) -> ThreeDVar:
    """Identical to :func:`threedvar`; registered so every size lists the reference."""
    return _create_threedvar(**kwargs)
