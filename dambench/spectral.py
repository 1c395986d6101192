"""Spectral divergence and spectral residual (the paper's eq. 27 and appendix C.3, ChaosBench's
evaluation-mode algorithm).

For each field (one sample, one channel) over ``(latitude, longitude)``:

1. power ``P = |FFT2(x)|^2`` (unnormalised 2-D FFT, float64);
2. scalar wavenumber ``k = sqrt(kx^2 + ky^2)`` in grid-index units (``kx`` in -H/2..H/2 along
   latitude, ``ky`` in -W/2..W/2 along longitude);
3. mean power in ``nbins = len(arange(0.5, kmax, 1))`` uniform bins over ``[0.5, kmax]`` (the DC
   coefficient is excluded, the last bin is closed);
4. the high-frequency tail: bins ``b >= int(nbins * q)``, normalised to sum 1 (``S'`` for the
   truth, ``P'`` for the prediction);
5. ``SpecDiv = sum_b S'(b) ln(max(S'(b) / P'(b), 1e-9))`` (forward KL divergence, truth ||
   prediction),
   ``SpecRes = sqrt(mean_b (P'(b) - S'(b))^2)``.

On the 121 x 240 grid, kmax = 60 sqrt(5) = 134.16, nbins = 134, the tail is bins 120..133 (14 bins,
1248 Fourier coefficients). Both metrics are invariant to rescaling a field, to rolling it in
longitude and to flipping it in latitude. They are defined on whole-globe fields only (the FFT
assumes a periodic full field), so regional evaluations leave them out.

Reduction over samples (recorded in every result as ``attrs["spectral_reduction"]``): the
default ``"per_sample"`` scores each sample and averages the scores; ``"mean_field"`` is
ChaosBench's batch-averaged value. On era5-sample's test split (7 cycles, 4 surface channels)
the persistence background scores 0.0275 per sample and 0.0146 batch-averaged: the two are not
interchangeable, so always quote the reduction with the number.

Deviation from ChaosBench (documented choice): a constant field or a field with NaN gives NaN and a
:class:`~dambench.exceptions.DegenerateFieldWarning` instead of a silent 0, and scores are computed
per sample and then averaged (``reduce="per_sample"``), so a score never depends on how samples are
batched; ``reduce="mean_field"`` averages the fields over the sample dim first, as ChaosBench does.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import xarray as xr

from dambench import schema
from dambench._typing import SpectralReduction
from dambench.exceptions import DambenchInputError, DegenerateFieldWarning
from dambench.grid import check_sample_dim, spatially_whole

RATIO_CLAMP = 1e-9
DEFAULT_QUANTILE = 0.9
K_LOW = 0.5


@lru_cache(maxsize=16)
def tail_binning(n_lat: int, n_lon: int, q: float = DEFAULT_QUANTILE) -> tuple[np.ndarray, ...]:
    """Which half-spectrum coefficients fall in which tail bin.

    Works on the ``rfft2`` half spectrum (last axis 0..W/2), counting each coefficient with its
    multiplicity in the full spectrum (2 for 0 < ky < W/2, else 1), which gives exactly the full
    FFT's bin sums and counts.

    Returns
    -------
    (flat_index, bin_matrix, counts): indices into the flattened (H, W//2+1) half spectrum of the
    coefficients in the tail; a (n_selected, n_tail_bins) matrix of multiplicities; the number of
    full-spectrum coefficients per tail bin.
    """
    kx = np.fft.fftfreq(n_lat) * n_lat
    ky_half = np.fft.rfftfreq(n_lon) * n_lon
    k = np.sqrt(kx[:, None] ** 2 + ky_half[None, :] ** 2)
    ky_full = np.fft.fftfreq(n_lon) * n_lon
    k_max = float(np.sqrt(np.max(kx**2) + np.max(ky_full**2)))
    n_bins = len(np.arange(K_LOW, k_max, 1.0))
    edges = np.linspace(K_LOW, k_max, n_bins + 1)
    first_tail = int(n_bins * q)
    bin_of = np.searchsorted(edges, k, side="right") - 1
    bin_of[k == k_max] = n_bins - 1
    in_tail = (k >= K_LOW) & (bin_of >= first_tail) & (bin_of < n_bins)
    multiplicity = np.where((ky_half > 0) & (ky_half < n_lon / 2), 2.0, 1.0)
    multiplicity = np.broadcast_to(multiplicity[None, :], k.shape)
    flat_index = np.flatnonzero(in_tail)
    tail_bin = bin_of.ravel()[flat_index] - first_tail
    n_tail = n_bins - first_tail
    bin_matrix = np.zeros((flat_index.size, n_tail))
    bin_matrix[np.arange(flat_index.size), tail_bin] = multiplicity.ravel()[flat_index]
    counts = bin_matrix.sum(axis=0)
    if np.any(counts == 0):
        raise DambenchInputError(f"Grid {n_lat}x{n_lon} leaves empty tail bins for q={q}.")
    return flat_index, bin_matrix, counts


def tail_spectrum(fields: np.ndarray, q: float = DEFAULT_QUANTILE) -> np.ndarray:
    """Normalised high-frequency tail of the binned power spectrum.

    Parameters
    ----------
    fields
        Array ``(..., latitude, longitude)``.

    Returns
    -------
    Array ``(..., n_tail_bins)`` summing to 1 over the last axis (NaN for a field with no tail
    power or with NaN).
    """
    fields = np.asarray(fields)
    n_lat, n_lon = fields.shape[-2:]
    flat_index, bin_matrix, counts = tail_binning(n_lat, n_lon, q)
    spectrum = np.fft.rfft2(fields.astype(np.float64, copy=False), axes=(-2, -1))
    spectrum = spectrum.reshape(*fields.shape[:-2], -1)[..., flat_index]
    power = spectrum.real**2 + spectrum.imag**2
    binned = (power @ bin_matrix) / counts
    total = binned.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, binned / total, np.nan)


def _divergence_kernel(pred: np.ndarray, truth: np.ndarray, q: float) -> np.ndarray:
    tail_p = tail_spectrum(pred, q)
    tail_t = tail_spectrum(truth, q)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.maximum(tail_t / tail_p, RATIO_CLAMP)
        terms = tail_t * np.log(ratio)
    terms = np.where(tail_t == 0, 0.0, terms)
    out = terms.sum(axis=-1)
    _warn_if_degenerate(out, "spec_div")
    return out


def _residual_kernel(pred: np.ndarray, truth: np.ndarray, q: float) -> np.ndarray:
    tail_p = tail_spectrum(pred, q)
    tail_t = tail_spectrum(truth, q)
    out = np.sqrt(np.mean((tail_p - tail_t) ** 2, axis=-1))
    _warn_if_degenerate(out, "spec_res")
    return out


def _warn_if_degenerate(values: np.ndarray, metric: str) -> None:
    n_bad = int(np.isnan(values).sum())
    if n_bad:
        warnings.warn(
            f"{metric}: {n_bad} field(s) are constant or contain NaN; their score is NaN.",
            DegenerateFieldWarning,
            stacklevel=4,
        )


def _spectral_metric(
    kernel,
    prediction: xr.DataArray,
    truth: xr.DataArray,
    *,
    q: float,
    sample_dim: str | None,
    reduce: SpectralReduction,
    skipna: bool,
    name: str,
) -> xr.DataArray:
    if not 0 < q < 1:
        raise DambenchInputError(f"Quantile {q=} must lie in (0, 1).")
    if reduce not in ("per_sample", "mean_field"):
        raise DambenchInputError(f"Unknown {reduce=}; use 'per_sample' or 'mean_field'.")
    if reduce == "mean_field" and sample_dim is None:
        raise DambenchInputError(
            "reduce='mean_field' averages the fields over the sample dim: give sample_dim."
        )
    for field in (prediction, truth):
        check_sample_dim(field, schema.TIME if sample_dim is None else sample_dim)
    try:
        prediction, truth = xr.align(prediction, truth, join="exact")
    except ValueError as err:
        raise DambenchInputError(f"prediction and truth must share coordinates: {err}") from err
    has_samples = sample_dim is not None and sample_dim in prediction.dims
    if reduce == "mean_field" and has_samples:
        prediction, truth = _mean_fields(prediction, truth, sample_dim, skipna)
    core = list(schema.SPATIAL_DIMS)
    score = xr.apply_ufunc(
        kernel,
        spatially_whole(prediction),
        spatially_whole(truth),
        kwargs={"q": q},
        input_core_dims=[core, core],
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    if reduce == "per_sample" and has_samples:
        score = score.mean(sample_dim, skipna=skipna)
    score.name = name
    score.attrs = {
        "q": q,
        "spectral_reduction": reduce,
        "skipna": int(skipna),
        "ratio_clamp": RATIO_CLAMP,
        "k_low": K_LOW,
        "units": "1",
        "sample_dim": str(sample_dim),
    }
    return score


def _mean_fields(
    prediction: xr.DataArray, truth: xr.DataArray, sample_dim: str, skipna: bool
) -> tuple[xr.DataArray, xr.DataArray]:
    """Fields averaged over ``sample_dim`` in float64; with ``skipna`` samples holding NaN are
    left out."""
    prediction, truth = prediction.astype(np.float64), truth.astype(np.float64)
    if skipna:
        whole = (prediction.notnull() & truth.notnull()).all(schema.SPATIAL_DIMS)
        prediction, truth = prediction.where(whole), truth.where(whole)
    return prediction.mean(sample_dim, skipna=skipna), truth.mean(sample_dim, skipna=skipna)


def spec_div(
    prediction: xr.DataArray,
    truth: xr.DataArray,
    *,
    q: float = DEFAULT_QUANTILE,
    sample_dim: str | None = schema.TIME,
    reduce: SpectralReduction = "per_sample",
    skipna: bool = False,
) -> xr.DataArray:
    """Spectral divergence of ``prediction`` from ``truth`` (paper eq. 27), dimensionless, >= 0
    up to the ratio clamp.

    Parameters
    ----------
    prediction, truth
        Fields with ``latitude`` and ``longitude`` dims (any others broadcast, e.g. ``time`` and
        ``channel``).
    q
        Quantile of the wavenumber bins where the tail starts.
    sample_dim
        Dim averaged over (per-sample scores, then the mean); ``None`` or absent: no averaging.
    reduce
        ``"per_sample"`` (default): a score per sample, then the mean, so a score never depends
        on how samples are batched; ``"mean_field"``: ChaosBench's batch value, the fields
        averaged over ``sample_dim`` first, then one score (needs ``sample_dim``).
    skipna
        A field with NaN (or a constant one) scores NaN, with a warning. ``False`` (default): a
        NaN sample makes the mean NaN; ``True``: NaN samples are left out of the mean (for
        ``"mean_field"``, samples holding NaN are left out of the averaged fields).

    Returns
    -------
    float64 DataArray without the spatial dims (and without ``sample_dim``); ``attrs`` record
    ``spectral_reduction``, ``q``, ``skipna`` and the ratio clamp.
    """
    return _spectral_metric(
        _divergence_kernel,
        prediction,
        truth,
        q=q,
        sample_dim=sample_dim,
        reduce=reduce,
        skipna=skipna,
        name="spec_div",
    )


def spec_res(
    prediction: xr.DataArray,
    truth: xr.DataArray,
    *,
    q: float = DEFAULT_QUANTILE,
    sample_dim: str | None = schema.TIME,
    reduce: SpectralReduction = "per_sample",
    skipna: bool = False,
) -> xr.DataArray:
    """Spectral residual: RMS difference of the normalised high-frequency tails, dimensionless.

    Same parameters and result layout as :func:`spec_div`.
    """
    return _spectral_metric(
        _residual_kernel,
        prediction,
        truth,
        q=q,
        sample_dim=sample_dim,
        reduce=reduce,
        skipna=skipna,
        name="spec_res",
    )
