import numpy as np
import pytest
import xarray as xr

from dambench import DambenchInputError, observation_mask, observe, schema
from dambench.observe import station_indices
from dambench.testing import smooth_field


@pytest.fixture(scope="module")
def field():
    return smooth_field(3, schema.CHANNELS[:10], seed=2)


def test_random_mask_density_on_full_grid():
    full = smooth_field(2, schema.CHANNELS)
    mask = observation_mask(full)
    per_time = mask.mean(["channel", "latitude", "longitude"]).values
    assert np.all(np.abs(per_time - 0.05) <= 0.005)
    assert mask.dtype == bool and mask.dims == full.dims


def test_masks_are_reproducible_and_seeded(field):
    a = observation_mask(field, seed=7)
    b = observation_mask(field, seed=7)
    c = observation_mask(field, seed=8)
    xr.testing.assert_identical(a, b)
    assert not np.array_equal(a.values, c.values)
    # different times and channels get different draws
    assert not np.array_equal(a.values[0], a.values[1])
    assert not np.array_equal(a.values[0, 0], a.values[0, 1])


def test_channel_draw_independent_of_subset_and_chunking(field):
    full = observation_mask(field, seed=3)
    subset = observation_mask(field.isel(channel=[2, 5]), seed=3)
    np.testing.assert_array_equal(subset.values, full.isel(channel=[2, 5]).values)
    one_time = observation_mask(field.isel(time=[1]), seed=3)
    np.testing.assert_array_equal(one_time.values, full.isel(time=[1]).values)
    lazy = observation_mask(field.chunk({"time": 1, "channel": 4}), seed=3)
    assert lazy.chunks is not None
    np.testing.assert_array_equal(lazy.values, full.values)


def test_columns_pattern_observes_all_channels_at_the_same_points(field):
    mask = observation_mask(field, pattern="columns", ratio=0.1)
    assert (mask == mask.isel(channel=0)).all()
    assert abs(float(mask.isel(channel=0).mean()) - 0.1) < 0.01
    assert not np.array_equal(mask.values[0, 0], mask.values[1, 0])


def test_stations_pattern_snaps_to_grid(field):
    lats = np.array([51.48, 51.3, -33.9, 89.9, 0.0])
    lons = np.array([-0.01, 359.5, 151.2, 10.0, 180.7])
    mask = observation_mask(field, pattern="stations", stations=(lats, lons))
    observed = mask.isel(time=0, channel=0)
    points = {
        (float(observed.latitude[i]), float(observed.longitude[j]))
        for i, j in zip(*np.nonzero(observed.values), strict=True)
    }
    # Greenwich and the point 0.5 deg west of it share the 51N/0E cell; Sydney; near-pole; equator
    assert points == {(51.0, 0.0), (-34.5, 151.5), (90.0, 10.5), (0.0, 180.0)}
    assert (mask == mask.isel(time=0, channel=0)).all()
    assert mask.attrs["n_stations"] == 4
    rows, cols = station_indices(
        observed.latitude.values, observed.longitude.values, np.array([0.0]), np.array([359.4])
    )
    assert observed.longitude.values[cols[0]] == 0.0  # wraps across the date line of longitude


def test_observe_noise_and_values(field):
    obs = observe(field, noise=0, seed=1)
    mask = observation_mask(field, seed=1)
    xr.testing.assert_equal(obs.notnull(), mask.rename("observation").drop_attrs())
    np.testing.assert_array_equal(obs.values[mask.values], field.values[mask.values])
    noisy = observe(field.astype("float64"), seed=1)
    err = (noisy - field).where(mask)
    for channel in ["u10", "t2m", "msl", "z50"]:
        std = float(err.sel(channel=channel).std())
        assert std == pytest.approx(schema.OBSERVATION_ERROR_STD[channel], rel=0.1)
    assert noisy.attrs["seed"] == 1 and noisy.attrs["ratio"] == 0.05


def test_observe_custom_noise_table(field):
    table = {c: 0.0 for c in field.channel.values.tolist()}
    table["t2m"] = 2.0
    obs = observe(field.astype("float64"), noise=table, ratio=0.5)
    err = obs - field
    assert float(abs(err.sel(channel="u10")).max()) == 0.0
    assert float(err.sel(channel="t2m").std()) == pytest.approx(2.0, rel=0.05)


def test_observe_errors(field):
    with pytest.raises(DambenchInputError, match="Unknown observation pattern"):
        observe(field, pattern="swaths")
    with pytest.raises(DambenchInputError, match="ratio"):
        observe(field, ratio=1.5)
    with pytest.raises(DambenchInputError, match="needs stations"):
        observe(field, pattern="stations")
    with pytest.raises(DambenchInputError, match="lacks channels"):
        observe(field, noise={"u10": 1.0})
    normalised = field.assign_attrs(normalized=1)
    with pytest.raises(DambenchInputError, match="normalised"):
        observe(normalised)
    with pytest.raises(DambenchInputError, match="dims"):
        observe(field.expand_dims(member=2))
