"""Reference analyses: the background itself and a classical 3D-Var.

Paper
    DAMBench (Wang et al. 2025, https://arxiv.org/abs/2511.01468): Table 3 starts from the
    "Background" row (the analysis is the background, no assimilation); eq. (5) and appendix B give
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
      distance ``r = 2 a sin(gamma / 2)`` between grid points (``gamma`` the great-circle angle,
      ``a`` the Earth's radius), either SOAR ``(1 + r/L) exp(-r/L)`` or Gaussian
      ``exp(-r^2 / (2 L^2))``.
    - ``R = diag(max(sigma_o[c], floor)**2)``, ``sigma_o`` in normalised units
      (``OBSERVATION_ERROR_STD[c] / std[c]``).
    - ``(H B H^T + R) w = y - H x_b`` is solved by Cholesky (about 1,450 observations per channel
      at 5 % of 121 x 240), and the increment ``B H^T w`` is spread back to every grid point
      exactly with FFTs in longitude: on an equiangular grid the correlation between row ``i`` and
      row ``l`` depends only on the longitude difference, so the spread is, per wavenumber ``m``,
      a (H x H) matrix product ``K_hat[:, :, m] @ W_hat[:, m]``. No truncation is involved.
    - ``sigma_b`` and ``L`` are estimated from the **train split** only (:meth:`ThreeDVar.fit`,
      :func:`fit_background_error`) from the background errors ``x_b - x*``.

Deliberate deviations
    - Distances are chordal, not great-circle: a Gaussian or SOAR function of the chord is a
      valid (positive-definite) covariance on the sphere, because it is the restriction of one in
      3-D space; the same functions of the great-circle distance are not guaranteed to be
      (Gneiting 2013, Bernoulli 19, 1327-1349). The two distances agree to 1 % below 28 degrees
      (about 3,100 km).
    - B is homogeneous and isotropic with one variance and one length scale per channel, and
      channels are uncorrelated (no balance operator): the simplest B that the benchmark's
      per-channel masks and normalised units allow.
    - The background-error statistics are second moments of ``x_b - x*`` (no bias removal).
    - Neither model is trainable: ``loss`` returns the analysis MSE against the target without a
      gradient (an evaluation score for validation loops) and ``trainable`` is ``False``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr

from baselines.interface import Analysis, BaselineModule, DABatch, LossAndDiagnostics, ModelInfo
from baselines.registry import register_model
from dambench import schema
from dambench.exceptions import DambenchInputError
from dambench.grid import lat_weights

Correlation = Literal["soar", "gaussian"]
CORRELATIONS: tuple[str, ...] = ("soar", "gaussian")
EARTH_RADIUS_KM = schema.EARTH_RADIUS_M / 1000.0
DEFAULT_OBS_ERROR_FLOOR = 1e-3
"""Smallest observation-error std used in R (normalised units), so R stays positive definite."""
PARAMS_FORMAT_VERSION = 1


# --- building blocks ---------------------------------------------------------------------------


def _check_correlation(kind: str) -> None:
    if kind not in CORRELATIONS:
        raise DambenchInputError(f"Unknown correlation={kind!r}; choose from {CORRELATIONS}.")


def correlation_from_cos(cos_angle, length_scale_km: float, kind: Correlation = "soar"):
    """Correlation ``rho(r)`` of two points from the cosine of their great-circle angle.

    Parameters
    ----------
    cos_angle
        ``cos(gamma) = u_p . u_q`` for unit vectors ``u`` (numpy array or torch tensor, any shape).
    length_scale_km
        ``L`` in km.
    kind
        ``"soar"``: ``(1 + r/L) exp(-r/L)``; ``"gaussian"``: ``exp(-r^2 / (2 L^2))``, where
        ``r = a sqrt(2 - 2 cos(gamma)) = 2 a sin(gamma/2)`` is the chordal distance in km
        (``a = 6371 km``).

    Returns
    -------
    Same type and shape as ``cos_angle``, in [0, 1], 1 at zero distance.
    """
    _check_correlation(kind)
    if not length_scale_km > 0:
        raise DambenchInputError(f"length_scale_km must be > 0, got {length_scale_km}.")
    lib = torch if isinstance(cos_angle, torch.Tensor) else np
    chord2 = (2.0 - 2.0 * cos_angle).clip(min=0.0) * (EARTH_RADIUS_KM / length_scale_km) ** 2
    if kind == "gaussian":
        return lib.exp(-0.5 * chord2)
    x = lib.sqrt(chord2)
    return (1.0 + x) * lib.exp(-x)


def chordal_distance_km(cos_angle):
    """``r = a sqrt(2 - 2 cos(gamma))`` in km, from the cosine of the great-circle angle."""
    return EARTH_RADIUS_KM * ((2.0 - 2.0 * cos_angle).clip(min=0.0)) ** 0.5


def equiangular_grid(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    """Latitudes (90 -> -90, both poles) and longitudes (0, 360/n_lon, ...) in degrees, float64:
    the layout of :data:`dambench.grid.CANONICAL_GRID` at any size."""
    if n_lat < 2 or n_lon < 1:
        raise DambenchInputError(f"A grid needs n_lat >= 2 and n_lon >= 1, got {n_lat=}, {n_lon=}.")
    latitude = np.linspace(schema.LATITUDE_FIRST_DEG, -schema.LATITUDE_FIRST_DEG, n_lat)
    longitude = schema.LONGITUDE_FIRST_DEG + (360.0 / n_lon) * np.arange(n_lon)
    return latitude, longitude


def _check_longitude(longitude: np.ndarray) -> None:
    """The FFT spread and the zonal lags need equally spaced longitudes covering the circle."""
    n = longitude.size
    expected = longitude[0] + (360.0 / n) * np.arange(n)
    if not np.allclose(longitude, expected, atol=schema.GRID_ATOL_DEG, rtol=0):
        raise DambenchInputError(
            f"3D-Var needs {n} equally spaced longitudes covering 360 degrees (spacing "
            f"{360.0 / n:g}); got {longitude[:3]}... Regrid with dambench.regrid first."
        )


def unit_vectors(latitude_deg: np.ndarray, longitude_deg: np.ndarray) -> np.ndarray:
    """Unit vectors of every grid point, (n_lat * n_lon, 3) float64, row-major (lat, lon)."""
    lat = np.deg2rad(np.asarray(latitude_deg, np.float64))[:, None]
    lon = np.deg2rad(np.asarray(longitude_deg, np.float64))[None, :]
    xyz = np.stack(
        np.broadcast_arrays(np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)), -1
    )
    return xyz.reshape(-1, 3)


def zonal_kernel_spectrum(
    latitude_deg: np.ndarray,
    n_lon: int,
    length_scale_km: float,
    kind: Correlation,
    *,
    device: Any = None,
) -> torch.Tensor:
    """Fourier coefficients in longitude of the grid-to-grid correlation, (H, H, n_lon // 2 + 1).

    ``K[i, l, k] = rho(point (i, 0), point (l, k))`` depends on the rows ``i``, ``l`` and the
    longitude lag ``k`` only; ``K_hat = rfft(K, axis=-1)`` is real because ``K`` is even in ``k``.
    ``sum_l sum_k K[i, l, j - k] w[l, k] = irfft(sum_l K_hat[i, l] * rfft(w[l]))[j]``.
    """
    lat = torch.deg2rad(torch.as_tensor(latitude_deg, dtype=torch.float64, device=device))
    lag = torch.arange(n_lon, dtype=torch.float64, device=device) * (2.0 * math.pi / n_lon)
    sin, cos = torch.sin(lat), torch.cos(lat)
    # cos(gamma)[i, l, k] = sin(phi_i) sin(phi_l) + cos(phi_i) cos(phi_l) cos(k dlambda): (H, H, W)
    cos_angle = (sin[:, None] * sin[None, :])[..., None] + (cos[:, None] * cos[None, :])[
        ..., None
    ] * torch.cos(lag)
    kernel = correlation_from_cos(cos_angle.clamp(-1.0, 1.0), length_scale_km, kind)
    return torch.fft.rfft(kernel, dim=-1).real  # (H, H, W // 2 + 1)


def spread_on_grid(weights: torch.Tensor, kernel_hat: torch.Tensor) -> torch.Tensor:
    """``sum_q rho(p, q) w_q`` at every grid point ``p``: (B, H, W) weights -> (B, H, W).

    ``weights`` is zero away from the observed points; ``kernel_hat`` is
    :func:`zonal_kernel_spectrum` for the same grid. Exact (a circular convolution in longitude).
    """
    n_lon = weights.shape[-1]
    spectrum = torch.fft.rfft(weights, dim=-1)  # (B, H, M) complex
    out = torch.einsum("ilm,blm->bim", kernel_hat.to(spectrum.dtype), spectrum)  # (B, H, M)
    return torch.fft.irfft(out, n=n_lon, dim=-1)  # (B, H, W)


def normalised_observation_error_std(
    channels: Sequence[str], stats: xr.Dataset, noise: Any = "default"
) -> np.ndarray:
    """Per-channel observation-error std in normalised units, ``sigma_o[c] / std[c]``, (C,).

    Parameters
    ----------
    channels
        Channel names, e.g. ``["u10", "v10", "t2m", "msl"]``.
    stats
        The train-split statistics (:func:`dambench.load.stats_from_attrs`), physical units.
    noise
        As :func:`dambench.observe.observe`: ``"default"`` for
        :data:`dambench.schema.OBSERVATION_ERROR_STD`, one std for all channels, a mapping
        channel -> std, or ``0``/``None``; in physical units.
    """
    from dambench.observe import noise_std

    names = list(channels)
    field_ = xr.DataArray(np.zeros(len(names)), dims=schema.CHANNEL, coords={schema.CHANNEL: names})
    table = noise_std(field_, noise)
    std = stats["std"].sel({schema.CHANNEL: names}).values.astype(np.float64)
    return np.array([table[c] for c in names], dtype=np.float64) / std


def _observation_noise_of(ds: xr.Dataset) -> Any:
    """The ``noise`` setting recorded in a built dataset's ``observation`` attribute."""
    recorded = ds.attrs.get("observation")
    if isinstance(recorded, str):
        try:
            recorded = json.loads(recorded)
        except json.JSONDecodeError:
            recorded = None
    if isinstance(recorded, dict) and "noise" in recorded:
        noise = recorded["noise"]
        if isinstance(noise, str) and noise != "default":
            try:
                return float(noise)
            except ValueError:
                pass
        return noise
    return "default"


@dataclass(frozen=True)
class BackgroundErrorFit:
    """Fitted homogeneous, isotropic background-error statistics, one entry per channel.

    Attributes
    ----------
    sigma_b
        Background-error std (C,), in the errors' units (normalised for the benchmark).
    length_scale_km
        ``L`` (C,) of the correlation model, km.
    correlation
        ``"soar"`` or ``"gaussian"``.
    misfit
        Weighted RMS difference (C,) between the empirical and the fitted correlation.
    n_samples
        Number of error fields (cycles) used.
    max_distance_km
        Largest separation used in the fit.
    """

    sigma_b: np.ndarray
    length_scale_km: np.ndarray
    correlation: str
    misfit: np.ndarray
    n_samples: int
    max_distance_km: float
    empirical: dict = field(default_factory=dict, repr=False)


class _LagStatistics:
    """Running sums of error products at zonal and meridional lags over many error fields.

    Zonal products for every lag come from ``|rfft(e)|^2`` (circular autocovariance along each
    latitude row); meridional products from lags 1..``n_meridional`` rows in the same column.
    """

    def __init__(self, n_channels: int, n_lat: int, n_lon: int, n_meridional: int) -> None:
        self.n_lon = n_lon
        self.n_meridional = n_meridional
        self.power = np.zeros((n_channels, n_lat, n_lon // 2 + 1))
        self.meridional = np.zeros((n_channels, n_meridional, n_lat))
        self.n_samples = 0

    def update(self, errors: np.ndarray) -> None:
        """Add error fields (T, C, H, W) (NaN-free)."""
        errors = np.asarray(errors, dtype=np.float64)
        if not np.all(np.isfinite(errors)):
            raise DambenchInputError("Background errors contain NaN or inf; cannot fit B.")
        spectrum = np.fft.rfft(errors, axis=-1)  # (T, C, H, M)
        self.power += (spectrum.real**2 + spectrum.imag**2).sum(0)
        for k in range(1, self.n_meridional + 1):
            # sum over time and longitude of e[i, j] e[i + k, j]: (C, H - k)
            self.meridional[:, k - 1, :-k] += np.einsum(
                "tciw,tciw->ci", errors[:, :, :-k], errors[:, :, k:]
            )
        self.n_samples += errors.shape[0]


def _pair_samples(
    stats: _LagStatistics, latitude_deg: np.ndarray, max_distance_km: float
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """(distance, [corr per channel], weight) of every zonal and meridional lag within range,
    plus the row variances (C, H) and the area weights (H,)."""
    n = stats.n_samples * stats.n_lon
    autocov = np.fft.irfft(stats.power, n=stats.n_lon, axis=-1) / n  # (C, H, W), lag 0..W-1
    row_var = autocov[..., 0]  # (C, H)
    area = lat_weights(latitude_deg, method="area").values  # (H,)
    lat = np.deg2rad(latitude_deg)
    dlon = 2.0 * np.pi / stats.n_lon
    # zonal lags k = 1..W/2 within one row: r = 2 a cos(phi) sin(k dlon / 2)
    lags = np.arange(1, stats.n_lon // 2 + 1)
    r_zonal = 2.0 * EARTH_RADIUS_KM * np.cos(lat)[:, None] * np.sin(lags * dlon / 2.0)[None, :]
    w_zonal = np.broadcast_to((area**2)[:, None], r_zonal.shape)
    keep_z = (r_zonal > 1e-6) & (r_zonal <= max_distance_km)
    # meridional lags k = 1..K between rows i and i + k: r = 2 a sin(|phi_i - phi_i+k| / 2)
    n_lat = lat.size
    k_idx = np.arange(1, stats.n_meridional + 1)[:, None]  # (K, 1)
    i_idx = np.arange(n_lat)[None, :]  # (1, H)
    valid_m = i_idx + k_idx < n_lat
    j_idx = np.minimum(i_idx + k_idx, n_lat - 1)
    r_merid = 2.0 * EARTH_RADIUS_KM * np.abs(np.sin((lat[i_idx] - lat[j_idx]) / 2.0))
    w_merid = area[i_idx] * area[j_idx]
    keep_m = valid_m & (r_merid > 1e-6) & (r_merid <= max_distance_km)
    distance = np.concatenate([r_zonal[keep_z], r_merid[keep_m]])
    weight = np.concatenate([w_zonal[keep_z], w_merid[keep_m]])
    corrs = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for c in range(row_var.shape[0]):
            var = row_var[c]
            corr_z = autocov[c][:, lags] / var[:, None]  # (H, W/2)
            cov_m = stats.meridional[c] / n  # (K, H)
            corr_m = cov_m / np.sqrt(var[i_idx] * var[j_idx])
            corrs.append(np.concatenate([corr_z[keep_z], corr_m[keep_m]]))
    return distance, corrs, weight, row_var


def _fit_length_scale(
    distance: np.ndarray, corr: np.ndarray, weight: np.ndarray, kind: Correlation
) -> tuple[float, float]:
    """Weighted least-squares ``L`` (km) of ``rho(distance; L)`` to ``corr``; and the RMS misfit."""
    from scipy.optimize import minimize_scalar

    ok = np.isfinite(corr) & (weight > 0)
    d, c, w = distance[ok], corr[ok], weight[ok]
    if d.size == 0:
        raise DambenchInputError(
            "No usable error pairs to fit the length scale (constant errors, or max_distance_km "
            "below the grid spacing)."
        )
    cos_angle = 1.0 - 0.5 * (d / EARTH_RADIUS_KM) ** 2  # inverts r = a sqrt(2 - 2 cos(gamma))

    def cost(log_l: float) -> float:
        return float(np.sum(w * (correlation_from_cos(cos_angle, math.exp(log_l), kind) - c) ** 2))

    lo, hi = math.log(10.0), math.log(40_000.0)
    grid = np.linspace(lo, hi, 60)
    best = grid[int(np.argmin([cost(g) for g in grid]))]
    step = grid[1] - grid[0]
    res = minimize_scalar(
        cost, bounds=(max(lo, best - step), min(hi, best + step)), method="bounded"
    )
    misfit = math.sqrt(res.fun / w.sum())
    return math.exp(res.x), misfit


def fit_background_error(
    errors: np.ndarray | Iterable[np.ndarray],
    latitude: np.ndarray,
    longitude: np.ndarray,
    *,
    correlation: Correlation = "soar",
    max_distance_km: float = 3000.0,
) -> BackgroundErrorFit:
    """Estimate ``sigma_b`` and ``L`` per channel from background-error fields ``x_b - x*``.

    Parameters
    ----------
    errors
        One array (T, C, H, W) or an iterable of such chunks (streamed; only lag sums are kept),
        NaN-free, in the units B should have (normalised for the benchmark).
    latitude, longitude
        Grid coordinates in degrees (H,), (W,); longitudes equally spaced over 360 degrees.
    correlation
        The correlation model to fit (see :func:`correlation_from_cos`).
    max_distance_km
        Pairs farther apart than this are not used for ``L``.

    Returns
    -------
    BackgroundErrorFit

    Notes
    -----
    - ``sigma_b[c]**2`` is the area-weighted mean over the sphere of the second moment
      ``mean_t e^2`` (cell-area weights, :func:`dambench.grid.lat_weights` ``"area"``).
    - The empirical correlation at a lag is ``mean(e_p e_q) / sqrt(v_p v_q)`` with ``v`` the
      second moment of each latitude row (so a latitude-dependent variance does not bias it),
      taken over all pairs one to ``W/2`` columns apart in the same row and one to ``K`` rows
      apart in the same column (``K`` the rows within ``max_distance_km``). Each (row pair, lag)
      gets the weight ``area_p * area_q`` and ``L`` minimises
      ``sum w (rho(r; L) - corr)^2`` (a bounded 1-D search over ``log L``, 10 to 40,000 km).
    """
    latitude = np.asarray(latitude, dtype=np.float64)
    longitude = np.asarray(longitude, dtype=np.float64)
    _check_correlation(correlation)
    _check_longitude(longitude)
    if not max_distance_km > 0:
        raise DambenchInputError(f"max_distance_km must be > 0, got {max_distance_km}.")
    chunks = [errors] if isinstance(errors, np.ndarray) else errors
    spacing = np.deg2rad(np.abs(np.diff(latitude)).min()) * EARTH_RADIUS_KM
    n_meridional = int(min(latitude.size - 1, math.ceil(max_distance_km / spacing)))
    stats: _LagStatistics | None = None
    for chunk in chunks:
        chunk = np.asarray(chunk)
        if chunk.ndim != 4 or chunk.shape[-2:] != (latitude.size, longitude.size):
            raise DambenchInputError(
                f"errors must be (time, channel, {latitude.size}, {longitude.size}); "
                f"got {chunk.shape}."
            )
        if stats is None:
            stats = _LagStatistics(chunk.shape[1], latitude.size, longitude.size, n_meridional)
        stats.update(chunk)
    if stats is None or stats.n_samples == 0:
        raise DambenchInputError("No background-error fields were given to fit B.")
    distance, corrs, weight, row_var = _pair_samples(stats, latitude, max_distance_km)
    area = lat_weights(latitude, method="area").values
    variance = (row_var * area).sum(-1) / area.sum()  # (C,)
    lengths, misfits = [], []
    for corr in corrs:
        length, misfit = _fit_length_scale(distance, corr, weight, correlation)
        lengths.append(length)
        misfits.append(misfit)
    return BackgroundErrorFit(
        sigma_b=np.sqrt(variance),
        length_scale_km=np.array(lengths),
        correlation=correlation,
        misfit=np.array(misfits),
        n_samples=stats.n_samples,
        max_distance_km=float(max_distance_km),
        empirical={"distance_km": distance, "correlation": corrs, "weight": weight},
    )


def _as_channel_vector(values: float | Sequence[float] | torch.Tensor, n: int, name: str):
    out = torch.as_tensor(values, dtype=torch.float64).flatten()
    if out.numel() == 1:
        out = out.expand(n).clone()
    if out.numel() != n:
        raise DambenchInputError(f"{name} needs one value per channel ({n}); got {out.numel()}.")
    if not torch.all(torch.isfinite(out)):
        raise DambenchInputError(f"{name} must be finite; got {out.tolist()}.")
    return out


def _evaluation_loss(model: torch.nn.Module, batch: DABatch) -> LossAndDiagnostics:
    """MSE of the analysis against the target, without a gradient (nothing to train)."""
    if batch.target is None:
        raise DambenchInputError(
            f"{type(model).__name__}.loss needs batch.target; this model is not trainable "
            "(trainable=False) and its loss is only an evaluation score."
        )
    with torch.no_grad():
        analysis = model(batch).mean
        mse = torch.mean((analysis - batch.target) ** 2)
        mse_background = torch.mean((batch.background - batch.target) ** 2)
    diagnostics = {"mse": float(mse), "mse_background": float(mse_background), "trainable": 0.0}
    return LossAndDiagnostics(loss=mse.detach(), diagnostics=diagnostics)


# --- models ------------------------------------------------------------------------------------


class Background(BaselineModule):
    """The "no assimilation" reference of Table 3: the analysis is the background.

    Not trainable (``trainable = False``, no parameters); :meth:`loss` returns the background's
    MSE against the target without a gradient, for validation loops.

    Examples
    --------
    >>> batch = DABatch(background=torch.ones(1, 2, 3, 4), observation=torch.zeros(1, 2, 3, 4),
    ...                 mask=torch.zeros(1, 2, 3, 4))
    >>> bool(torch.equal(Background()(batch).mean, batch.background))
    True
    """

    trainable = False

    def __init__(
        self, in_chans: int | None = None, img_size: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.img_size = None if img_size is None else tuple(img_size)

    def forward(self, batch: DABatch) -> Analysis:
        """``Analysis(mean=x_b, std=None)``, the background tensor itself (B, C, H, W)."""
        if self.in_chans is not None and batch.background.shape[1] != self.in_chans:
            raise DambenchInputError(
                f"Background was built for in_chans={self.in_chans}; the batch has "
                f"{batch.background.shape[1]} channels."
            )
        if self.img_size is not None and tuple(batch.background.shape[-2:]) != self.img_size:
            raise DambenchInputError(
                f"Background was built for img_size={self.img_size}; the batch is "
                f"{tuple(batch.background.shape[-2:])}."
            )
        return Analysis(mean=batch.background, std=None)

    def loss(self, batch: DABatch) -> LossAndDiagnostics:
        """The background's MSE (normalised units) against ``batch.target``, no gradient."""
        return _evaluation_loss(self, batch)


class ThreeDVar(BaselineModule):
    """Classical 3D-Var with a homogeneous, isotropic, per-channel B, solved in observation space.

    For every sample and channel ``c`` (normalised units):
    ``x_a = x_b + B H^T (H B H^T + R)^-1 (y - H x_b)`` with
    ``B = sigma_b[c]^2 rho(r; L[c])`` (:func:`correlation_from_cos`, chordal distance ``r``),
    ``R = max(sigma_o[c], obs_error_floor)^2 I`` and ``H`` selecting the points where
    ``batch.mask > 0.5``. This is the exact minimiser of the paper's eq. (5).

    Parameters
    ----------
    sigma_b
        Background-error std per channel (C,) (or one value), normalised units.
    length_scale_km
        Correlation length scale ``L`` per channel (C,) (or one value), km.
    obs_error_std
        Observation-error std per channel (C,) (or one value), normalised units
        (:func:`normalised_observation_error_std`); 0 is allowed (floored).
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
        shape (:func:`equiangular_grid`, the canonical 121 x 240 layout).
    channels
        Channel names (metadata for :meth:`save`).
    fit_info
        Provenance of the fitted parameters (metadata for :meth:`save`).

    Notes
    -----
    Per (sample, channel) the cost is one Cholesky of the ``(n_obs, n_obs)`` matrix
    (``n_obs^3 / 3`` flops, ~1e9 at 1,450 observations), plus, per channel, the correlation table
    ``(H, H, W)`` and its FFT; the spread back to the grid costs ``H^2 (W/2 + 1)`` per sample.
    Masks may differ per channel and per sample. Computation is in float64; the analysis has
    the background's dtype.
    """

    trainable = False

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
    ) -> None:
        super().__init__()
        _check_correlation(correlation)
        n = torch.as_tensor(sigma_b).numel()
        if channels is not None:
            n = len(channels)
        n = max(n, torch.as_tensor(length_scale_km).numel(), torch.as_tensor(obs_error_std).numel())
        sigma = _as_channel_vector(sigma_b, n, "sigma_b")
        length = _as_channel_vector(length_scale_km, n, "length_scale_km")
        obs = _as_channel_vector(obs_error_std, n, "obs_error_std")
        if torch.any(sigma <= 0) or torch.any(length <= 0) or torch.any(obs < 0):
            raise DambenchInputError(
                "Need sigma_b > 0, length_scale_km > 0 and obs_error_std >= 0 per channel; got "
                f"{sigma.tolist()=}, {length.tolist()=}, {obs.tolist()=}."
            )
        if not obs_error_floor > 0:
            raise DambenchInputError(f"obs_error_floor must be > 0, got {obs_error_floor}.")
        if (latitude is None) != (longitude is None):
            raise DambenchInputError("Pass both latitude and longitude, or neither.")
        if longitude is not None:
            _check_longitude(np.asarray(longitude, np.float64))
        self.register_buffer("sigma_b", sigma)
        self.register_buffer("length_scale_km", length)
        self.register_buffer("obs_error_std", obs)
        self.correlation = correlation
        self.obs_error_floor = float(obs_error_floor)
        self.compute_std = compute_std
        self.latitude = None if latitude is None else np.asarray(latitude, np.float64)
        self.longitude = None if longitude is None else np.asarray(longitude, np.float64)
        self.channels = None if channels is None else list(channels)
        self.fit_info = dict(fit_info or {})

    @property
    def in_chans(self) -> int:
        return int(self.sigma_b.numel())

    # - fitting and persistence -

    @classmethod
    def fit(
        cls,
        train_ds: xr.Dataset,
        stats: xr.Dataset,
        *,
        obs_error_std: Sequence[float] | None = None,
        correlation: Correlation = "soar",
        max_distance_km: float = 3000.0,
        max_cycles: int | None = None,
        cycles_per_chunk: int = 8,
        **kwargs: Any,
    ) -> ThreeDVar:
        """Fit ``sigma_b`` and ``L`` per channel on the train split's background errors.

        Parameters
        ----------
        train_ds
            ``open_dataset(..., split="train")``: ``background`` and ``target``
            (time, channel, latitude, longitude), physical units. Any cycle whose ``split`` is not
            ``"train"`` is an error: B must never see validation or test data.
        stats
            Train-split mean/std per channel (:func:`dambench.load.stats_from_attrs`).
        obs_error_std
            R's std per channel in normalised units; default: the dataset's recorded observation
            noise (``attrs["observation"]["noise"]``, the schema's defaults when absent) divided
            by ``stats.std``.
        correlation, max_distance_km
            As :func:`fit_background_error`.
        max_cycles
            Use at most this many train cycles, evenly spaced (default: all).
        cycles_per_chunk
            Cycles read at a time (memory: ``cycles_per_chunk * C * H * W`` float64).
        **kwargs
            Passed to the constructor (``obs_error_floor``, ``compute_std``).

        Returns
        -------
        A ThreeDVar whose ``fit_info`` records the provenance.
        """
        if "split" in train_ds.coords:
            splits = sorted({str(s) for s in np.asarray(train_ds["split"].values).ravel()})
            if splits != ["train"]:
                raise DambenchInputError(
                    f"ThreeDVar.fit estimates B from the train split only; the dataset has cycles "
                    f"of splits {splits}. Open it with open_dataset(..., split='train')."
                )
        for name in ("background", "target"):
            if name not in train_ds:
                raise DambenchInputError(f"ThreeDVar.fit needs {name!r} in the dataset.")
        channels = [str(c) for c in train_ds[schema.CHANNEL].values]
        std = stats["std"].sel({schema.CHANNEL: channels}).values.astype(np.float64)
        n_time = train_ds.sizes[schema.TIME]
        times = np.arange(n_time)
        if max_cycles is not None and max_cycles < n_time:
            times = np.unique(np.linspace(0, n_time - 1, max_cycles).round().astype(int))
        latitude = train_ds[schema.LATITUDE].values.astype(np.float64)
        longitude = train_ds[schema.LONGITUDE].values.astype(np.float64)

        def chunks():
            for start in range(0, times.size, cycles_per_chunk):
                sel = {schema.TIME: times[start : start + cycles_per_chunk]}
                part = train_ds[["background", "target"]].isel(sel)
                background = part["background"].transpose(*schema.CANONICAL_DIMS).values
                target = part["target"].transpose(*schema.CANONICAL_DIMS).values
                # normalised error: ((x_b - mean) - (x* - mean)) / std = (x_b - x*) / std
                yield (background.astype(np.float64) - target) / std[None, :, None, None]

        result = fit_background_error(
            chunks(),
            latitude,
            longitude,
            correlation=correlation,
            max_distance_km=max_distance_km,
        )
        noise = _observation_noise_of(train_ds)
        if obs_error_std is None:
            obs_error_std = normalised_observation_error_std(channels, stats, noise)
        fit_info = {
            "split": "train",
            "dataset": str(train_ds.attrs.get("dambench_dataset", "")),
            "n_cycles": int(result.n_samples),
            "max_distance_km": float(max_distance_km),
            "correlation_misfit": [float(m) for m in result.misfit],
            "observation_noise": str(noise),
        }
        return cls(
            result.sigma_b,
            result.length_scale_km,
            obs_error_std,
            correlation=correlation,
            channels=channels,
            fit_info=fit_info,
            **kwargs,
        )

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
        if params.get("model") != "threedvar":
            raise DambenchInputError(f"{path} holds no 3D-Var parameters ({params.get('model')=}).")
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
        background = batch.background
        n_batch, n_chan, n_lat, n_lon = background.shape
        if n_chan != self.in_chans:
            raise DambenchInputError(
                f"3D-Var has parameters for {self.in_chans} channels; the batch has {n_chan}."
            )
        for name in ("observation", "mask"):
            if getattr(batch, name).shape != background.shape:
                raise DambenchInputError(
                    f"batch.{name} is {tuple(getattr(batch, name).shape)}; expected "
                    f"{tuple(background.shape)} like the background."
                )
        device = background.device
        latitude, longitude = self._grid(n_lat, n_lon)
        xyz = torch.as_tensor(unit_vectors(latitude, longitude), device=device)  # (H*W, 3)
        x_b = background.detach().to(torch.float64).reshape(n_batch, n_chan, -1)  # (B, C, H*W)
        y = batch.observation.detach().to(torch.float64).reshape(n_batch, n_chan, -1)
        observed = batch.mask.detach().reshape(n_batch, n_chan, -1) > 0.5  # (B, C, H*W)
        increment = torch.zeros_like(x_b)
        variance = torch.zeros_like(x_b) if self.compute_std else None
        for c in range(n_chan):
            length = float(self.length_scale_km[c])
            var_b = float(self.sigma_b[c]) ** 2
            var_o = max(float(self.obs_error_std[c]), self.obs_error_floor) ** 2
            weights = torch.zeros(n_batch, n_lat * n_lon, dtype=torch.float64, device=device)
            for b in range(n_batch):
                index = torch.nonzero(observed[b, c]).flatten()  # (n_obs,)
                if variance is not None:
                    variance[b, c] = var_b
                if index.numel() == 0:
                    continue
                points = xyz[index]  # (n_obs, 3)
                # H B H^T + R: (n_obs, n_obs)
                hbh = var_b * correlation_from_cos(points @ points.T, length, self.correlation)
                system = hbh + var_o * torch.eye(index.numel(), dtype=hbh.dtype, device=device)
                chol = torch.linalg.cholesky(system)
                innovation = (y[b, c, index] - x_b[b, c, index]).unsqueeze(-1)  # (n_obs, 1)
                weights[b, index] = torch.cholesky_solve(innovation, chol).squeeze(-1)
                if variance is not None:
                    variance[b, c] -= self._variance_reduction(xyz, points, chol, length, var_b)
            if not torch.any(weights != 0):
                continue
            kernel_hat = zonal_kernel_spectrum(
                latitude, n_lon, length, self.correlation, device=device
            )
            spread = spread_on_grid(weights.reshape(n_batch, n_lat, n_lon), kernel_hat)
            increment[:, c] = var_b * spread.reshape(n_batch, -1)  # (B, H*W)
        mean = (x_b + increment).reshape(background.shape).to(background.dtype)
        std = None
        if variance is not None:
            std = variance.clamp(min=0.0).sqrt().reshape(background.shape).to(background.dtype)
        return Analysis(mean=mean, std=std)

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
        return _evaluation_loss(self, batch)


# --- factories ---------------------------------------------------------------------------------


def _create_background(**kwargs: Any) -> Background:
    return Background(**kwargs)


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


BACKGROUND_INFO = ModelInfo(
    output="deterministic",
    trainable=False,
    supports_patches=True,
    paper="Wang et al. (2025), DAMBench, Table 3 'Background', https://arxiv.org/abs/2511.01468",
    code="none",
    code_licence="none (no upstream code)",
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


@register_model(info=BACKGROUND_INFO)
def background(**kwargs: Any) -> Background:
    """The background as the analysis (Table 3, first row)."""
    return _create_background(**kwargs)


@register_model(info=BACKGROUND_INFO)
def background_tiny(**kwargs: Any) -> Background:
    """Identical to :func:`background` (it has no size); registered for the tiny-model tests."""
    return _create_background(**kwargs)


@register_model(info=THREEDVAR_INFO)
def threedvar(**kwargs: Any) -> ThreeDVar:
    """3D-Var with SOAR correlations; pass ``params=`` a JSON file from :meth:`ThreeDVar.save`."""
    return _create_threedvar(**kwargs)


@register_model(info=THREEDVAR_INFO)
def threedvar_tiny(**kwargs: Any) -> ThreeDVar:
    """3D-Var on 4 channels with placeholder parameters (L = 2000 km), for CPU tests."""
    kwargs.setdefault("in_chans", 4)
    kwargs.setdefault("length_scale_km", 2000.0)
    return _create_threedvar(**kwargs)
