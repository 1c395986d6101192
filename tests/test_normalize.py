"""Normalisation: golden values, round trips, and defaults that cannot leak the evaluated split."""

import numpy as np
import pytest
import xarray as xr

import dambench
from dambench import DambenchInputError, channel_stats, denormalize, normalize
from dambench.testing import smooth_field

CHANNELS = ["u10", "t2m", "msl", "z500"]


@pytest.fixture(scope="module")
def field():
    return smooth_field(3, CHANNELS, seed=11)


@pytest.fixture(scope="module")
def sample_test():
    """The embedded era5-sample's test split, loaded (built into the test cache on first use)."""
    return dambench.open_dataset("era5-sample", split="test").load()


def test_channel_stats_and_normalize_match_numpy(field):
    values = field.values.astype(np.float64)  # (time, channel, latitude, longitude)
    mean = values.mean(axis=(0, 2, 3))
    std = values.std(axis=(0, 2, 3))
    stats = channel_stats(field)
    np.testing.assert_allclose(stats["mean"].values, mean, rtol=1e-12)
    np.testing.assert_allclose(stats["std"].values, std, rtol=1e-12)
    normed = normalize(field, stats)
    expected = ((values - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    np.testing.assert_allclose(normed.values, expected, rtol=1e-6, atol=1e-6)
    assert normed.dtype == field.dtype and normed.attrs["normalized"] == 1
    back = denormalize(normed, stats)
    np.testing.assert_allclose(back.values, field.values, rtol=1e-6, atol=1e-5)
    assert "normalized" not in back.attrs


def test_normalising_twice_is_refused(field):
    stats = channel_stats(field)
    with pytest.raises(DambenchInputError, match="already normalised"):
        normalize(normalize(field, stats), stats)


def test_accessor_default_is_the_stored_train_statistics(sample_test):
    # old code normalised the test split with the test split's own statistics
    train = dambench.stats_from_attrs(sample_test)
    own = channel_stats(sample_test["target"])
    assert not np.allclose(train["mean"].values, own["mean"].values, rtol=1e-6)
    normed = sample_test.dambench.normalize()
    for name in ("target", "background", "observation"):
        xr.testing.assert_identical(normed[name], normalize(sample_test[name], train))
    leaked = normalize(sample_test["target"], own)
    assert not np.allclose(normed["target"].values, leaked.values)


def test_dataarray_default_uses_recorded_attrs_or_refuses(sample_test):
    target = sample_test["target"]
    with pytest.raises(DambenchInputError, match=r"stats=dambench\.stats_from_attrs\(ds\)"):
        target.dambench.normalize()
    with pytest.raises(DambenchInputError, match=r"channel_stats\(train_field\)"):
        target.drop_attrs().dambench.normalize()
    carried = target.assign_attrs(normalization=sample_test.attrs["normalization"])
    xr.testing.assert_identical(
        carried.dambench.normalize().drop_attrs(),
        normalize(target, dambench.stats_from_attrs(sample_test)).drop_attrs(),
    )


def test_dataset_without_recorded_statistics_refuses(field):
    ds = xr.Dataset({"target": field, "background": field + 1})
    with pytest.raises(DambenchInputError, match="would leak"):
        ds.dambench.normalize()
    stats = channel_stats(field)
    normed = ds.dambench.normalize(stats)
    xr.testing.assert_identical(normed["target"], normalize(field, stats))
