"""Confidence intervals for means of autocorrelated per-cycle scores: the circular block bootstrap.

Consecutive daily cycles are strongly correlated (the lag-1 autocorrelation of the per-cycle
background MSE on era5-sample is about 0.77), so resampling single cycles (the i.i.d. bootstrap)
gives intervals that are too narrow. Here blocks of ``block_length`` consecutive cycles are
resampled on a circle (Politis and Romano 1992), which keeps the dependence within blocks.

The block length is chosen from the data with the rule of Politis and White (2004, Econometric
Reviews 23, 53-70) with the correction of Patton, Politis and White (2009, Econometric Reviews
28, 372-375) for the circular bootstrap: a flat-top lag window picks the lag ``M`` beyond which
the autocorrelations are insignificant; then ``b = (2 G^2 / D)^(1/3) n^(1/3)`` with
``G = sum_{|k|<=M} lambda(k/M) |k| R(k)``, ``D = 4/3 g(0)^2``, ``g(0) = sum lambda(k/M) R(k)``.
In short series that rule often misses real correlation (its significance threshold
``2 sqrt(log10(n) / n)`` is large), so the block length is the larger of it and the AR(1)
plug-in of the same formula, ``b = (6 r^2 / (1 - r^2)^2)^(1/3) n^(1/3)`` with ``r`` the lag-1
autocorrelation (clipped to [0, 0.95]). It is at least 1 (an uncorrelated series gets the i.i.d.
bootstrap) and at most ``n // 2``.

The interval is the percentile interval of the resampled statistic, widened about the point
estimate by ``t_{df} / z`` with ``df = 1.5 (n / b - 1)``, the degrees of freedom of the
overlapping-batch-means variance estimator (Meketon and Schmeiser 1984), because only about
``n / b`` blocks inform the spread. Measured coverage of nominal 95 % intervals for the mean of an
AR(1) series (400 replications): 0.90 at n = 365, phi = 0.5 (i.i.d. bootstrap: 0.70); 0.87 at
phi = 0.77. Block bootstraps undercover strongly dependent short series; with 7 cycles (the
era5-sample test split) any interval is rough.

Paired comparisons resample the same blocks of cycles for both series (the per-cycle
differences), so the interval of a difference allows for the correlation between two methods
scored on the same cycles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dambench.exceptions import DambenchInputError

CONFIDENCE = 0.95
N_RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval.

    Attributes
    ----------
    value
        The statistic of the observed series.
    low, high
        Interval bounds at ``confidence``.
    n
        Number of cycles.
    block_length
        Block length used (1: i.i.d. bootstrap).
    """

    value: float
    low: float
    high: float
    n: int
    block_length: int
    confidence: float = CONFIDENCE

    def to_dict(self) -> dict:
        return {
            "value": self.value,
            "ci_low": self.low,
            "ci_high": self.high,
            "n": self.n,
            "block_length": self.block_length,
            "confidence": self.confidence,
        }


def _autocovariance(x: np.ndarray, max_lag: int) -> np.ndarray:
    centred = x - x.mean()
    n = x.size
    return np.array([centred[: n - k] @ centred[k:] / n for k in range(max_lag + 1)])


def _flat_top(t: np.ndarray) -> np.ndarray:
    """The trapezoidal lag window of Politis and White: 1 up to 1/2, linear to 0 at 1."""
    t = np.abs(t)
    return np.where(t <= 0.5, 1.0, np.where(t <= 1.0, 2.0 * (1.0 - t), 0.0))


def _significant_lag(rho: np.ndarray, n: int) -> int:
    """Smallest lag m after which K_n consecutive autocorrelations are insignificant."""
    k_n = max(5, int(math.ceil(math.sqrt(math.log10(max(n, 10))))))
    threshold = 2.0 * math.sqrt(math.log10(max(n, 10)) / n)
    for m in range(0, rho.size - 1):
        window = np.abs(rho[m + 1 : m + 1 + k_n])
        if window.size and np.all(window < threshold):
            return m
    return rho.size - 1


def _ar1_block_length(x: np.ndarray) -> float:
    centred = x - x.mean()
    r = float(centred[:-1] @ centred[1:] / (centred @ centred))
    r = min(max(r, 0.0), 0.95)
    return (6.0 * r**2 / (1.0 - r**2) ** 2) ** (1.0 / 3.0) * x.size ** (1.0 / 3.0)


def optimal_block_length(values: np.ndarray) -> int:
    """Data-driven block length for the circular block bootstrap of the mean: the larger of the
    Politis-White rule and its AR(1) plug-in (see the module docstring); 1 for series shorter
    than 4 or without variance."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 4 or not np.all(np.isfinite(x)) or np.ptp(x) == 0:
        return 1
    return int(min(max(1, round(max(_politis_white(x), _ar1_block_length(x)))), n // 2))


def _politis_white(x: np.ndarray) -> float:
    n = x.size
    max_lag = min(n - 1, int(math.ceil(math.sqrt(n))) + 5 + 2 * int(math.ceil(math.log10(n))))
    acov = _autocovariance(x, max_lag)
    rho = acov / acov[0]
    big_m = min(2 * _significant_lag(rho, n), max_lag)
    if big_m == 0:
        return 1.0
    lags = np.arange(-big_m, big_m + 1)
    weights = _flat_top(lags / big_m)
    r = acov[np.abs(lags)]
    g = float(np.sum(weights * np.abs(lags) * r))
    g0 = float(np.sum(weights * r))
    d = 4.0 / 3.0 * g0**2
    if d <= 0 or g == 0:
        return 1.0
    return (2.0 * g**2 / d) ** (1.0 / 3.0) * n ** (1.0 / 3.0)


def _resample_indices(n: int, block_length: int, n_resamples: int, rng) -> np.ndarray:
    """(n_resamples, n) cycle indices: blocks of consecutive cycles, wrapped on a circle."""
    n_blocks = -(-n // block_length)
    starts = rng.integers(0, n, size=(n_resamples, n_blocks))
    offsets = np.arange(block_length)
    index = (starts[:, :, None] + offsets[None, None, :]) % n
    return index.reshape(n_resamples, -1)[:, :n]


def block_bootstrap(
    values: np.ndarray,
    *,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    block_length: int | None = None,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """Circular block bootstrap interval of a statistic of per-cycle values.

    Parameters
    ----------
    values
        (n,) per-cycle values in time order, or (n, k) several series resampled together (the
        same blocks of cycles for every column).
    statistic
        Maps column means (..., k) to the statistic (...,); default: the mean of a 1-D series.
        E.g. ``lambda m: np.sqrt(m[..., 0] / m[..., 1])`` for a ratio of root means.
    block_length
        Default: :func:`optimal_block_length` of the (first column's) series.
    n_resamples, confidence, seed
        Bootstrap settings; the same seed gives the same interval.
    """
    x = np.asarray(values, dtype=np.float64)
    x2 = x[:, None] if x.ndim == 1 else x
    n = x2.shape[0]
    if n == 0:
        raise DambenchInputError("Cannot bootstrap an empty series (no cycles).")
    if not np.all(np.isfinite(x2)):
        raise DambenchInputError(
            "Per-cycle values hold NaN or inf; a bootstrap interval of them would be meaningless. "
            "Score finite predictions (or use skipna=True when scoring)."
        )
    func = statistic or (lambda means: means[..., 0])
    length = block_length or optimal_block_length(x2[:, 0])
    if not 1 <= length <= max(n, 1):
        raise DambenchInputError(f"block_length must lie in [1, {n}]; got {length}.")
    value = float(func(x2.mean(axis=0)))
    if n == 1:
        return Interval(value, value, value, 1, 1, confidence)
    rng = np.random.default_rng(seed)
    index = _resample_indices(n, length, n_resamples, rng)
    stats = func(x2[index].mean(axis=1))  # (n_resamples, k) -> (n_resamples,)
    tail = (1 - confidence) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    widen = _small_block_count_factor(n, length, confidence)
    return Interval(
        value,
        float(value - (value - low) * widen),
        float(value + (high - value) * widen),
        n,
        length,
        confidence,
    )


def _small_block_count_factor(n: int, block_length: int, confidence: float) -> float:
    """``t_df / z`` with the overlapping-batch-means degrees of freedom ``1.5 (n / b - 1)``."""
    from scipy.special import ndtri, stdtrit

    df = max(1.0, 1.5 * (n / block_length - 1))
    q = 1 - (1 - confidence) / 2
    return float(stdtrit(df, q) / ndtri(q))


def paired_difference(
    a: np.ndarray, b: np.ndarray, *, block_length: int | None = None, seed: int = 0, **kwargs
) -> Interval:
    """Interval of ``mean(a) - mean(b)`` for two methods scored on the same cycles (paired
    circular block bootstrap of the per-cycle differences)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise DambenchInputError(
            f"A paired comparison needs per-cycle values of the same cycles; got shapes "
            f"{a.shape} and {b.shape}."
        )
    return block_bootstrap(a - b, block_length=block_length, seed=seed, **kwargs)
