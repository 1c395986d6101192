"""The background-error library: homogeneous, isotropic covariances on the sphere.

Shared by the variational baselines (3D-Var, :mod:`baselines.models.threedvar`; VAE-Var's error
scale and observation-error std) and the score-based ones (SDA, SLAMS: their fits' checks and
observation-error std).

References
    Daley (1991), "Atmospheric Data Analysis", ch. 4-5 (isotropic correlation models, SOAR);
    Gaspari & Cohn (1999, QJRMS 125, 723-757); Gneiting (2013, Bernoulli 19, 1327-1349) for
    positive definiteness on the sphere.

What is here
    - correlation functions of the chordal distance ``r = 2 a sin(gamma / 2)`` (SOAR and
      Gaussian; a function of the chord is positive definite on the sphere because it is the
      restriction of one in 3-D space), :func:`chordal_distance_km`, :func:`unit_vectors`;
    - the equiangular grid (:func:`equiangular_grid`, :func:`check_longitude`);
    - exact zonal spectra of the grid-to-grid correlation and the FFT spread of weights back to
      the grid (:func:`zonal_kernel_spectrum`, :func:`spread_on_grid`);
    - :func:`fit_background_error`: per-channel ``sigma_b`` and length scale from error fields;
    - observation errors: :func:`observation_noise_of` (the noise recorded in a built dataset,
      refused loudly when unreadable) and :func:`normalised_observation_error_std`;
    - the block-mean coarsening of SDA's background term: :func:`block_mean`,
      :func:`block_counts`, :func:`block_curvature` (its Gershgorin curvature per cell) and
      :func:`block_error_std` (the block-mean error's std on the train split);
    - what every fit reads: :func:`check_train_split` (the train split only),
      :func:`channel_std`, :func:`cycle_indices` and :func:`normalised_errors` (``x_b - x*``
      over ``std``, streamed by chunks of cycles).
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from dambench import schema
from dambench.exceptions import DambenchInputError
from dambench.grid import lat_weights

Correlation = Literal["soar", "gaussian"]
CORRELATIONS: tuple[str, ...] = ("soar", "gaussian")
EARTH_RADIUS_KM = schema.EARTH_RADIUS_M / 1000.0


def check_correlation(kind: str) -> None:
    """Refuse a correlation model other than :data:`CORRELATIONS`."""
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
    check_correlation(kind)
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


def check_longitude(longitude: np.ndarray) -> None:
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
    return np.array([table[c] for c in names], dtype=np.float64) / channel_std(stats, names)


def _observe_keywords() -> set[str]:
    """The keyword arguments :func:`dambench.observe.observe` takes (what a build records)."""
    from dambench.observe import observe

    parameters = inspect.signature(observe).parameters.values()
    return {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def observation_noise_of(ds: xr.Dataset) -> Any:
    """The ``noise`` setting recorded in a built dataset's ``attrs["observation"]``.

    Parameters
    ----------
    ds
        A dataset from :func:`dambench.open_dataset` (or any with the same attribute): a JSON
        object of :func:`dambench.observe.observe` keyword arguments.

    Returns
    -------
    ``"default"`` (also when the recorded settings have no ``noise`` key: it is ``observe``'s
    default), a float std in physical units, a mapping channel -> std, or ``None``.

    Raises
    ------
    DambenchInputError
        When the attribute is missing, is not a JSON object, holds keys ``observe`` does not
        take, or records a noise value that is none of the forms above. An unreadable record is
        never replaced by the default noise: R would be silently wrong.
    """
    raw = ds.attrs.get("observation")
    if raw is None or raw == "":
        raise DambenchInputError(
            "The dataset records no observation settings (ds.attrs['observation'] is missing), "
            "so its observation-error std is unknown; pass obs_error_std= explicitly."
        )
    try:
        settings = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError) as err:
        raise DambenchInputError(
            f"ds.attrs['observation'] is not a JSON object: {raw!r}. Rebuild the dataset or pass "
            "obs_error_std= explicitly."
        ) from err
    if not isinstance(settings, dict):
        raise DambenchInputError(f"ds.attrs['observation'] is not a JSON object: {raw!r}.")
    unknown = set(settings) - _observe_keywords()
    if unknown:
        raise DambenchInputError(
            f"ds.attrs['observation'] has keys {sorted(unknown)} that observe() does not take; "
            f"expected some of {sorted(_observe_keywords())}."
        )
    noise = settings.get("noise", "default")
    if noise is None or noise == "default" or isinstance(noise, Mapping):
        return noise
    try:
        return float(noise)
    except (TypeError, ValueError) as err:
        raise DambenchInputError(
            f"ds.attrs['observation'] records noise={noise!r}; expected 'default', a number, "
            "a mapping channel -> std or null. Rebuild the dataset or pass obs_error_std=."
        ) from err


# --- what a fit may read: the train split -----------------------------------------------------


def check_train_split(dataset: xr.Dataset, model: str, *, in_chans: int | None = None) -> list[str]:
    """Refuse a dataset a fit must not read; return its channel names (dataset order).

    Parameters
    ----------
    dataset
        ``open_dataset(..., split="train")``: every cycle in the train split (its ``split``
        coordinate, when present), with ``background`` and ``target``.
    model
        The model's name, for the messages (``"SDA"`` gives ``"SDA.fit ..."``).
    in_chans
        The channel count the model was built for; ``None``: any.

    Raises
    ------
    DambenchInputError
        Cycles of another split, a missing ``background``/``target``, or another channel count.
    """
    if "split" in dataset.coords:
        splits = sorted({str(s) for s in np.asarray(dataset["split"].values).ravel()})
        if splits != ["train"]:
            raise DambenchInputError(
                f"{model}.fit estimates its statistics on the train split only; the dataset has "
                f"cycles of splits {splits}. Open it with open_dataset(..., split='train')."
            )
    for name in ("background", "target"):
        if name not in dataset:
            raise DambenchInputError(f"{model}.fit needs {name!r} in the dataset.")
    channels = [str(c) for c in dataset[schema.CHANNEL].values]
    if in_chans is not None and len(channels) != in_chans:
        raise DambenchInputError(
            f"{model} has {in_chans} channels; the dataset has {len(channels)}: {channels}."
        )
    return channels


def channel_std(stats: xr.Dataset, channels: Sequence[str]) -> np.ndarray:
    """``stats["std"]`` of ``channels`` (C,), float64, physical units; refuses missing channels."""
    names = [str(c) for c in channels]
    missing = sorted(set(names) - {str(c) for c in stats[schema.CHANNEL].values})
    if missing:
        raise DambenchInputError(f"stats lack channels {missing}; pass the dataset's statistics.")
    return stats["std"].sel({schema.CHANNEL: names}).values.astype(np.float64)


def cycle_indices(n_time: int, max_cycles: int | None) -> np.ndarray:
    """All ``n_time`` cycle indices, or at most ``max_cycles`` evenly spaced ones."""
    if max_cycles is None or max_cycles >= n_time:
        return np.arange(n_time)
    return np.unique(np.linspace(0, n_time - 1, max_cycles).round().astype(int))


def normalised_errors(
    dataset: xr.Dataset,
    std: np.ndarray,
    times: np.ndarray,
    chunk: int,
    *,
    desc: str,
    verbose: bool = False,
) -> Iterator[np.ndarray]:
    """Background errors ``(x_b - x*) / std`` (T, C, H, W), float64, normalised units, of the
    cycles ``times``, ``chunk`` cycles at a time (a tqdm bar ``desc`` when ``verbose``).

    ``std`` (C,) is the train-split std (:func:`channel_std`); NaN stays NaN.
    """
    for start in tqdm(range(0, times.size, chunk), desc=desc, disable=not verbose):
        part = dataset[["background", "target"]].isel({schema.TIME: times[start : start + chunk]})
        background = part["background"].transpose(*schema.CANONICAL_DIMS).values
        target = part["target"].transpose(*schema.CANONICAL_DIMS).values
        # normalised error: ((x_b - mean) - (x* - mean)) / std = (x_b - x*) / std
        yield (background.astype(np.float64) - target) / std[None, :, None, None]


# --- the background-error fit --------------------------------------------------------------------


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


def _accumulate(
    chunks: Iterable[np.ndarray],
    latitude: np.ndarray,
    longitude: np.ndarray,
    max_distance_km: float,
) -> _LagStatistics:
    """Lag sums over all error chunks (T, C, H, W), meridional lags up to ``max_distance_km``."""
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
    return stats


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
    check_correlation(correlation)
    check_longitude(longitude)
    if not max_distance_km > 0:
        raise DambenchInputError(f"max_distance_km must be > 0, got {max_distance_km}.")
    chunks = [errors] if isinstance(errors, np.ndarray) else errors
    stats = _accumulate(chunks, latitude, longitude, max_distance_km)
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


# --- the background error of blocks: a coarsened, less correlated background term -------------


def _check_block(block: int, n_lon: int) -> None:
    """Refuse a block that is not a positive integer dividing the longitudes."""
    if int(block) != block or block < 1 or n_lon % block:
        raise DambenchInputError(
            f"background_block must be a positive integer dividing the {n_lon} longitudes; "
            f"got {block}. Use 1 (no coarsening) or a divisor of {n_lon}, e.g. 8 for 240."
        )


def block_counts(n_lat: int, n_lon: int, block: int) -> torch.Tensor:
    """Grid cells in each ``block x block`` block, (ceil(n_lat / block), n_lon / block): the
    last row of blocks holds the ``n_lat % block`` leftover rows when ``block`` does not divide
    ``n_lat``."""
    _check_block(block, n_lon)
    rows = torch.full((-(-n_lat // block),), float(block))
    if n_lat % block:
        rows[-1] = float(n_lat % block)
    return rows[:, None] * torch.full((n_lon // block,), float(block))[None, :]


def block_mean(x: torch.Tensor, block: int) -> torch.Tensor:
    """Means of ``x`` (..., H, W) over ``block x block`` blocks of cells, (..., ceil(H / block),
    W / block) (differentiable; the last block row averages only the rows it holds).

    The coarsening operator of SDA's background term: background errors correlated over a few
    cells stay correlated within a block and mostly average out between blocks.
    """
    if block == 1:
        return x
    height, width = x.shape[-2:]
    counts = block_counts(height, width, block).to(x)
    padded = torch.nn.functional.pad(x, (0, 0, 0, (-height) % block))  # (..., H', W)
    lead = padded.shape[:-2]
    blocks = padded.reshape(*lead, -1, block, width // block, block)  # (..., h, b, w, b)
    return blocks.sum(dim=(-3, -1)) / counts


def block_curvature(n_lat: int, n_lon: int, block: int) -> torch.Tensor:
    """Row sums of ``A^T A`` for ``A`` = :func:`block_mean`, on the fine grid (n_lat, n_lon):
    ``1 / count`` of each cell's block (the curvature a unit-std block term puts on a cell
    along its block's mean)."""
    counts = block_counts(n_lat, n_lon, block)
    fine = counts.repeat_interleave(block, dim=0)[:n_lat].repeat_interleave(block, dim=1)
    return 1.0 / fine


def block_error_std(
    dataset: xr.Dataset, stats: xr.Dataset, block: int, *, chunk: int = 8
) -> np.ndarray:
    """Per-channel RMS of the block means of the normalised background error, (C,).

    ``(x_b - x*) / std`` (:func:`normalised_errors`) averaged over ``block x block`` blocks
    (:func:`block_mean`); the plain mean of its square over every cycle and block.
    """
    channels = check_train_split(dataset, "block_error_std")
    std = channel_std(stats, channels)
    _check_block(block, dataset.sizes[schema.LONGITUDE])
    times = np.arange(dataset.sizes[schema.TIME])
    total, count = np.zeros(len(channels)), 0
    for errors in normalised_errors(dataset, std, times, chunk, desc="block errors"):
        means = block_mean(torch.from_numpy(errors), block).numpy()  # (T, C, h, w)
        total += np.square(means).sum(axis=(0, 2, 3))
        count += means.shape[0] * means.shape[2] * means.shape[3]
    values = np.sqrt(total / count)
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise DambenchInputError(
            f"Block background-error std must be finite and > 0 per channel; got "
            f"{values.tolist()} (NaN in background/target, or a background equal to the target)."
        )
    return values
