import warnings

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from dambench import DambenchInputError, DegenerateFieldWarning, spec_div, spec_res
from dambench.spectral import tail_binning, tail_spectrum
from dambench.testing import smooth_field


def reference_tail(field, q=0.9):
    """Independent ChaosBench-style reference: full complex FFT2, numpy histogram, mean per bin."""
    h, w = field.shape
    power = np.abs(np.fft.fft2(field.astype(np.float64))) ** 2
    kx = np.fft.fftfreq(h) * h
    ky = np.fft.fftfreq(w) * w
    k = np.sqrt(kx[:, None] ** 2 + ky[None, :] ** 2).ravel()
    n_bins = len(np.arange(0.5, k.max(), 1))
    sums, edges = np.histogram(k, bins=n_bins, range=(0.5, k.max()), weights=power.ravel())
    counts, _ = np.histogram(k, bins=n_bins, range=(0.5, k.max()))
    mean_power = sums / counts
    tail = mean_power[int(n_bins * q) :]
    return tail / tail.sum(), counts[int(n_bins * q) :]


def reference_scores(pred, truth):
    p, _ = reference_tail(pred)
    t, _ = reference_tail(truth)
    div = np.sum(t * np.log(np.maximum(t / p, 1e-9)))
    res = np.sqrt(np.mean((p - t) ** 2))
    return div, res


def test_binning_constants_on_121x240():
    _, _, counts = tail_binning(121, 240, 0.9)
    # kmax = 60 sqrt(5) = 134.16, 134 bins, tail = bins 120..133 (14 bins), 1248 coefficients
    assert counts.tolist() == [204, 186, 148, 124, 112, 112, 86, 74, 56, 54, 40, 26, 16, 10]
    _, ref_counts = reference_tail(np.random.default_rng(0).random((121, 240)))
    assert counts.tolist() == ref_counts.tolist()


def test_tail_matches_full_fft_reference():
    rng = np.random.default_rng(1)
    field = rng.standard_normal((121, 240)).cumsum(axis=1)
    ours = tail_spectrum(field)
    ref, _ = reference_tail(field)
    np.testing.assert_allclose(ours, ref, rtol=1e-10)
    assert ours.sum() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def pair():
    truth = smooth_field(3, ["t2m", "z500"], seed=3)
    noise = smooth_field(3, ["t2m", "z500"], seed=4)
    pred = truth + 0.3 * (noise - noise.mean())
    return pred.astype("float64"), truth.astype("float64")


def test_scores_match_reference_per_field(pair):
    pred, truth = pair
    div = spec_div(pred, truth, sample_dim=None)
    res = spec_res(pred, truth, sample_dim=None)
    for t in range(3):
        for c in ("t2m", "z500"):
            ref_div, ref_res = reference_scores(
                pred.isel(time=t).sel(channel=c).values, truth.isel(time=t).sel(channel=c).values
            )
            assert float(div.isel(time=t).sel(channel=c)) == pytest.approx(ref_div, rel=1e-9)
            assert float(res.isel(time=t).sel(channel=c)) == pytest.approx(ref_res, rel=1e-9)


def test_identical_and_rescaled_fields_score_zero(pair):
    _, truth = pair
    for pred in (truth, 3.7 * truth, -0.5 * truth):
        assert np.allclose(spec_div(pred, truth).values, 0, atol=1e-12)
        assert np.allclose(spec_res(pred, truth).values, 0, atol=1e-12)
    # adding a constant changes only the DC coefficient, which is excluded
    assert np.allclose(spec_div(truth + 1000.0, truth).values, 0, atol=1e-9)


def test_smoothed_field_has_positive_divergence(pair):
    _, truth = pair
    noisy = truth + 0.02 * float(truth.std()) * np.random.default_rng(0).standard_normal(
        truth.shape
    )
    smoothed = noisy.rolling(longitude=5, center=True, min_periods=1).mean()
    smoothed = smoothed.rolling(latitude=5, center=True, min_periods=1).mean()
    assert (spec_div(smoothed, noisy) > 0.02).all()  # identical fields give 0
    assert (spec_res(smoothed, noisy) > 0).all()


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 239))
def test_invariant_to_longitude_roll_and_latitude_flip(shift):
    rng = np.random.default_rng(shift)
    truth = smooth_field(1, ["t2m"], seed=shift % 7).isel(channel=0)
    pred = truth + 2 * xr.ones_like(truth) * rng.standard_normal(truth.shape)
    base = float(spec_div(pred, truth))
    roll = {"longitude": shift}
    rolled = float(
        spec_div(pred.roll(roll, roll_coords=False), truth.roll(roll, roll_coords=False))
    )
    flip = {"latitude": slice(None, None, -1)}
    flipped = float(
        spec_div(
            pred.isel(flip).assign_coords(latitude=pred.latitude),
            truth.isel(flip).assign_coords(latitude=truth.latitude),
        )
    )
    assert rolled == pytest.approx(base, rel=1e-9)
    assert flipped == pytest.approx(base, rel=1e-9)


def test_per_sample_score_does_not_depend_on_batching(pair):
    pred, truth = pair
    whole = spec_div(pred, truth)
    parts = [spec_div(pred.isel(time=[i]), truth.isel(time=[i])) for i in range(3)]
    np.testing.assert_allclose(whole.values, (sum(parts) / 3).values, rtol=1e-12)
    mean_field = spec_div(pred, truth, reduce="mean_field")
    manual = spec_div(pred.mean("time"), truth.mean("time"))
    np.testing.assert_allclose(mean_field.values, manual.values)
    assert not np.allclose(mean_field.values, whole.values)


def test_degenerate_fields_give_nan_with_warning(pair):
    _, truth = pair
    constant = xr.full_like(truth, 5.0)
    with pytest.warns(DegenerateFieldWarning, match="constant or contain NaN"):
        assert np.isnan(spec_div(constant, truth, sample_dim=None)).all()
    with_nan = truth.copy()
    with_nan[0, 0, 3, 3] = np.nan
    with pytest.warns(DegenerateFieldWarning):
        out = spec_res(with_nan, truth, sample_dim=None)
    assert np.isnan(out[0, 0]) and np.isfinite(out[1:]).all()


def test_lazy_on_dask(pair):
    pred, truth = pair
    lazy = spec_div(pred.chunk({"time": 1}), truth.chunk({"time": 1}), sample_dim=None)
    assert lazy.chunks is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(lazy.values, spec_div(pred, truth, sample_dim=None).values)


def test_every_result_states_its_reduction(pair):
    pred, truth = pair
    for func in (spec_div, spec_res):
        assert func(pred, truth).attrs["spectral_reduction"] == "per_sample"
        assert func(pred, truth, reduce="mean_field").attrs["spectral_reduction"] == "mean_field"
        with pytest.raises(DambenchInputError, match="mean_field"):
            func(pred, truth, sample_dim=None, reduce="mean_field")


def test_skipna_leaves_nan_samples_out(pair):
    pred, truth = pair
    holed = pred.copy()
    holed[0, :, 5, 5] = np.nan
    with pytest.warns(DegenerateFieldWarning):
        assert np.isnan(spec_div(holed, truth).values).all()
    with pytest.warns(DegenerateFieldWarning):
        skipped = spec_div(holed, truth, skipna=True)
    rest = {"time": slice(1, None)}
    np.testing.assert_allclose(skipped.values, spec_div(pred.isel(rest), truth.isel(rest)).values)
    np.testing.assert_allclose(
        spec_res(holed, truth, reduce="mean_field", skipna=True).values,
        spec_res(pred.isel(rest), truth.isel(rest), reduce="mean_field").values,
    )


def test_low_precision_fields_are_averaged_in_float64(pair):
    """Regression: the mean field of float16 input was formed (and rounded) in float16."""
    pred, truth = pair
    pred16, truth16 = pred.astype("float16"), truth.astype("float16")
    for reduce in ("per_sample", "mean_field"):
        np.testing.assert_allclose(
            spec_div(pred16, truth16, reduce=reduce).values,
            spec_div(pred16.astype("float64"), truth16.astype("float64"), reduce=reduce).values,
            rtol=1e-12,
        )


def test_duplicated_times_are_refused(pair):
    pred, truth = pair
    times = np.array(pred.time.values)
    times[2] = times[1]
    with pytest.raises(DambenchInputError, match="Duplicated time"):
        spec_div(pred.assign_coords(time=times), truth.assign_coords(time=times))


def test_era5_sample_background_per_sample_and_batch_averaged():
    """The README's figures: persistence background on era5-sample's test split, 4 channels."""
    import dambench

    ds = dambench.open_dataset("era5-sample", split="test")
    per_sample = spec_div(ds["background"], ds["target"])
    batch = spec_div(ds["background"], ds["target"], reduce="mean_field")
    assert float(per_sample.mean()) == pytest.approx(0.02746, abs=5e-5)
    assert float(batch.mean()) == pytest.approx(0.01464, abs=5e-5)
