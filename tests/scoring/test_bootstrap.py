"""Block-bootstrap intervals: coverage on AR(1) series with a known variance of the mean."""

from __future__ import annotations

import numpy as np
import pytest

from dambench.exceptions import DambenchInputError
from dambench.scoring.bootstrap import block_bootstrap, optimal_block_length, paired_difference


def _ar1(n: int, phi: float, reps: int, seed: int) -> np.ndarray:
    """``reps`` stationary AR(1) series x_t = phi x_{t-1} + e_t, e ~ N(0, 1), mean 0."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((reps, n))
    x = np.empty((reps, n))
    x[:, 0] = noise[:, 0] / np.sqrt(1 - phi**2)
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    return x


def _coverage(series: np.ndarray, **kwargs) -> float:
    hits = [
        (lambda iv: iv.low <= 0.0 <= iv.high)(block_bootstrap(x, n_resamples=400, seed=i, **kwargs))
        for i, x in enumerate(series)
    ]
    return float(np.mean(hits))


def test_block_bootstrap_covers_the_mean_of_an_ar1_series_near_the_nominal_rate():
    # A year of daily cycles with the lag-1 autocorrelation of a typical per-cycle score.
    # The true mean is 0. The i.i.d. bootstrap ignores the correlation: its intervals are
    # sqrt((1 + phi) / (1 - phi)) = 1.7x too narrow and cover far less often than 95 %.
    series = _ar1(n=365, phi=0.5, reps=300, seed=7)
    block = _coverage(series)
    iid = _coverage(series, block_length=1)
    assert 0.87 <= block <= 0.99, block
    assert iid < 0.80, iid
    assert block - iid > 0.12


def test_block_length_grows_with_autocorrelation_and_is_one_without():
    white = _ar1(365, 0.0, 1, seed=1)[0]
    correlated = _ar1(365, 0.8, 1, seed=1)[0]
    assert optimal_block_length(white) <= 2
    assert optimal_block_length(correlated) >= 8
    assert optimal_block_length(np.ones(50)) == 1
    assert optimal_block_length(np.arange(3.0)) == 1


def test_interval_is_reproducible_and_contains_the_point_estimate():
    x = _ar1(100, 0.6, 1, seed=3)[0]
    first, second = block_bootstrap(x, seed=5), block_bootstrap(x, seed=5)
    assert first == second
    assert first.low < first.value < first.high
    assert first.value == pytest.approx(x.mean())


def test_ratio_statistic_over_paired_columns():
    rng = np.random.default_rng(0)
    a = rng.uniform(1, 2, 200)
    b = 4 * a  # the ratio sqrt(mean a / mean b) is exactly 1/2 in every resample
    interval = block_bootstrap(
        np.stack([a, b], axis=1), statistic=lambda m: np.sqrt(m[..., 0] / m[..., 1])
    )
    assert interval.value == pytest.approx(0.5)
    assert interval.low == pytest.approx(0.5) and interval.high == pytest.approx(0.5)


def test_paired_difference_uses_the_same_cycles_and_refuses_mismatched_lengths():
    rng = np.random.default_rng(1)
    common = _ar1(200, 0.8, 1, seed=2)[0] * 10  # a large shared, correlated signal
    a = common + rng.normal(0, 0.1, 200)
    b = common + 1 + rng.normal(0, 0.1, 200)
    paired = paired_difference(a, b)
    assert paired.high < 0 and paired.low > -1.2  # the shared signal cancels
    unpaired_width = block_bootstrap(a).high - block_bootstrap(a).low
    assert paired.high - paired.low < unpaired_width / 5
    with pytest.raises(DambenchInputError, match="same cycles"):
        paired_difference(a, b[:-1])


def test_nan_and_empty_series_are_refused():
    with pytest.raises(DambenchInputError, match="NaN"):
        block_bootstrap(np.array([1.0, np.nan, 2.0]))
    with pytest.raises(DambenchInputError, match="empty"):
        block_bootstrap(np.array([]))
