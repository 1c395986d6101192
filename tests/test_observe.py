import json

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import dambench
from dambench import DambenchInputError, Grid, observation_mask, observe, schema
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


# --- lazy (dask) observations equal the eager ones bit for bit ----------------------------------

TINY = Grid(spacing_deg=15.0)  # 13 x 24: many uneven chunkings stay fast
TINY_STATIONS = (np.array([51.5, -33.9, 0.0, 89.0]), np.array([0.0, 151.2, 180.7, 10.0]))
SETTINGS = [
    {"pattern": "random"},
    {"pattern": "random", "noise": None, "ratio": 0.3},
    {"pattern": "columns", "ratio": 0.2, "noise": 0.5},
    {"pattern": "stations", "stations": TINY_STATIONS},
    {"pattern": "random", "noise": {"u10": 0.0, "v10": 1.0, "t2m": 2.0, "msl": 50.0}, "seed": 9},
]


@pytest.fixture(scope="module")
def tiny():
    return smooth_field(4, schema.CHANNELS[:4], grid=TINY, seed=5)


def test_lazy_default_noise_observes_the_ratio_not_every_point(field):
    # old code: the mask and noise graphs shared one dask name, so the noise replaced the mask
    lazy = observe(field.chunk({"time": 1, "channel": 4}))
    assert lazy.chunks is not None
    assert abs(float(lazy.notnull().mean()) - 0.05) < 0.005
    eager = observe(field)
    assert np.array_equal(lazy.values, eager.values, equal_nan=True)


def test_latitude_longitude_chunks_do_not_repeat_the_mask_tile_to_tile(field):
    lazy = observation_mask(field.chunk({"latitude": 60, "longitude": 120}), seed=4).values
    assert not np.array_equal(lazy[..., :60, :120], lazy[..., 60:120, 120:240])
    assert np.array_equal(lazy, observation_mask(field, seed=4).values)


def _cuts(size: int):
    """Strategy: uneven chunk sizes summing to ``size``."""
    points = (
        st.sets(st.integers(1, size - 1), max_size=min(size - 1, 4)) if size > 1 else st.just(set())
    )
    return points.map(lambda p: tuple(np.diff([0, *sorted(p), size]).tolist()))


@settings(max_examples=25, deadline=None)
@given(
    time=_cuts(4),
    channel=_cuts(4),
    latitude=_cuts(13),
    longitude=_cuts(24),
    which=st.integers(0, len(SETTINGS) - 1),
    order=st.permutations(schema.CANONICAL_DIMS),
)
def test_lazy_equals_eager_for_any_chunking(tiny, time, channel, latitude, longitude, which, order):
    kwargs = SETTINGS[which]
    field = tiny.transpose(*order)
    chunks = {"time": time, "channel": channel, "latitude": latitude, "longitude": longitude}
    lazy = observe(field.chunk(chunks), **kwargs)
    assert lazy.chunks is not None and lazy.dims == field.dims
    eager = observe(field, **kwargs)
    assert np.array_equal(lazy.values, eager.values, equal_nan=True)
    assert lazy.dtype == eager.dtype == field.dtype
    mask = observation_mask(
        field.chunk(chunks), **{k: v for k, v in kwargs.items() if k != "noise"}
    )
    assert np.array_equal(mask.values, eager.notnull().values)


def test_lazy_draws_with_different_settings_do_not_collide(tiny):
    lazy = tiny.chunk({"time": 1, "latitude": 5})
    both = xr.concat(
        [observe(lazy, seed=1), observe(lazy, seed=2), observe(lazy, seed=1, noise=0)], "k"
    )
    eager = xr.concat(
        [observe(tiny, seed=1), observe(tiny, seed=2), observe(tiny, seed=1, noise=0)], "k"
    )
    assert np.array_equal(both.values, eager.values, equal_nan=True)
    assert not np.array_equal(both.values[0], both.values[1], equal_nan=True)


def test_lazy_mask_reads_none_of_the_field(tiny):
    def unreadable(x):
        raise AssertionError("the mask must not read the field's values")

    field = tiny.chunk({"time": 2}).map_blocks(
        lambda b: b.copy(data=unreadable(b)), template=tiny.chunk({"time": 2})
    )
    mask = observation_mask(field, seed=2)
    assert np.array_equal(mask.values, observation_mask(tiny, seed=2).values)


def test_scalar_time_and_channel_coordinates_key_the_draw(tiny):
    full = observe(tiny, seed=6)
    one = observe(tiny.isel(time=2, channel=1), seed=6)
    assert one.dims == ("latitude", "longitude")
    assert np.array_equal(one.values, full.isel(time=2, channel=1).values, equal_nan=True)
    columns = observation_mask(tiny.isel(time=3), pattern="columns", ratio=0.3)
    full_columns = observation_mask(tiny, pattern="columns", ratio=0.3)
    assert np.array_equal(columns.values, full_columns.isel(time=3).values)


def test_open_dataset_with_dask_chunks_then_observe_reproduces_the_store():
    ds = dambench.open_dataset("era5-sample", chunks={})
    settings_ = json.loads(ds.attrs["observation"])
    redrawn = ds.dambench.observe(**settings_)["observation"]
    assert redrawn.chunks is not None
    stored = ds["observation"].values
    # the store's observations were drawn eagerly by the builder
    assert np.array_equal(redrawn.values, stored, equal_nan=True)
    assert abs(float(redrawn.notnull().mean()) - settings_["ratio"]) < 0.005


def test_unknown_noise_word_is_refused(field):
    with pytest.raises(DambenchInputError, match="noise='defualt'"):
        observe(field, noise="defualt")
