import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from dambench import CANONICAL_GRID, DambenchInputError, Grid, lat_weights, to_canonical
from dambench.grid import resolve_weights


def test_canonical_grid_coordinates():
    lat, lon = CANONICAL_GRID.latitude, CANONICAL_GRID.longitude
    assert CANONICAL_GRID.shape == (121, 240)
    assert lat[0] == 90 and lat[-1] == -90 and np.allclose(np.diff(lat), -1.5)
    assert lon[0] == 0 and lon[-1] == 358.5 and np.allclose(np.diff(lon), 1.5)


def test_area_weights_golden_121_rows():
    w = lat_weights(CANONICAL_GRID.latitude, "area").values
    # pole cell: cap from 89.25 to 90 deg, area 1 - sin(89.25 deg); mean cell area 2/121
    pole = (1 - np.sin(np.deg2rad(89.25))) / (2 / 121)
    assert w[0] == pytest.approx(pole, rel=1e-12)
    assert w[0] == pytest.approx(5.1832e-3, rel=1e-4)
    assert w[-1] == pytest.approx(w[0], rel=1e-12)
    # equator row: band -0.75..0.75 deg
    assert w[60] == pytest.approx(2 * np.sin(np.deg2rad(0.75)) / (2 / 121), rel=1e-12)
    assert w.mean() == pytest.approx(1.0, rel=1e-14)
    assert w.dtype == np.float64


def test_cos_weights_zero_at_poles_and_mean_one():
    w = lat_weights(CANONICAL_GRID.latitude, "cos").values
    assert w[0] == 0.0 and w[-1] == 0.0
    cos = np.cos(np.deg2rad(CANONICAL_GRID.latitude))
    cos[[0, -1]] = 0
    assert np.allclose(w, cos / cos.mean(), rtol=1e-14)
    assert w.mean() == pytest.approx(1.0)
    assert np.all(w >= 0)


def test_area_weights_band_integrals_wb2_case():
    # six latitudes +-15, +-45, +-75: cells are the 30-degree bands, weight = 3 x band area
    lat = np.array([-75.0, -45.0, -15.0, 15.0, 45.0, 75.0])
    w = lat_weights(lat, "area").values
    bands = np.sin(np.deg2rad([-60, -30, 0, 30, 60, 90])) - np.sin(
        np.deg2rad([-90, -60, -30, 0, 30, 60])
    )
    assert np.allclose(w, 3 * bands, rtol=1e-12)


@pytest.mark.parametrize("method", ["cos", "area"])
def test_weights_follow_coordinates_not_positions(method):
    descending = lat_weights(CANONICAL_GRID.latitude, method)
    ascending = lat_weights(CANONICAL_GRID.latitude[::-1], method)
    assert np.allclose(descending.values, ascending.values[::-1])
    assert np.allclose(descending.sel(latitude=30.0), ascending.sel(latitude=30.0))


def test_bad_weights_raise():
    template = xr.DataArray(
        np.zeros((3, 4)), dims=("latitude", "longitude"), coords={"latitude": [10.0, 0.0, -10.0]}
    )
    with pytest.raises(DambenchInputError, match="non-negative"):
        resolve_weights(xr.DataArray([1.0, -0.1, 1.0], dims="latitude"), template)
    with pytest.raises(DambenchInputError, match="NaN"):
        resolve_weights(xr.DataArray([1.0, np.nan, 1.0], dims="latitude"), template)
    with pytest.raises(DambenchInputError, match="Unknown latitude weighting"):
        lat_weights(CANONICAL_GRID.latitude, "gaussian")
    with pytest.raises(DambenchInputError, match="within"):
        lat_weights(np.array([0.0, 95.0]), "cos")
    with pytest.raises(DambenchInputError):
        Grid(spacing_deg=0.7)


def _wb2_style(values):
    """A field in WeatherBench2's regridded layout: (time, longitude, latitude), lat ascending."""
    lat = CANONICAL_GRID.latitude[::-1]
    lon = CANONICAL_GRID.longitude
    return xr.DataArray(values, dims=("time", "lon", "lat"), coords={"lat": lat, "lon": lon})


def test_to_canonical_from_wb2_layout():
    rng = np.random.default_rng(0)
    values = rng.random((2, 240, 121))
    out = to_canonical(_wb2_style(values))
    assert out.dims == ("time", "latitude", "longitude")
    assert out.latitude.values[0] == 90
    # the value at (lon index 3, lat 60N) survives the transposition and flip
    lat_index = list(CANONICAL_GRID.latitude[::-1]).index(60.0)
    assert out.sel(latitude=60.0).isel(longitude=3, time=1) == values[1, 3, lat_index]
    assert out.latitude.attrs["units"] == "degrees_north"


def test_to_canonical_rolls_longitude_from_minus_180():
    lon = np.arange(-180, 180, 1.5)
    da = xr.DataArray(
        lon[None, :] * np.ones((121, 1)),
        dims=("latitude", "longitude"),
        coords={"latitude": CANONICAL_GRID.latitude, "longitude": lon},
    )
    out = to_canonical(da)
    assert np.allclose(out.longitude.values, CANONICAL_GRID.longitude)
    # the field equals its original longitude label, so after rolling it equals lon wrapped back
    expected = np.where(
        out.longitude.values >= 180, out.longitude.values - 360, out.longitude.values
    )
    assert np.allclose(out.isel(latitude=0).values, expected)


def test_to_canonical_is_lazy():
    da = _wb2_style(np.zeros((2, 240, 121))).chunk({"time": 1})
    out = to_canonical(da)
    assert out.chunks is not None


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 239))
def test_to_canonical_idempotent_under_roll(shift):
    rng = np.random.default_rng(shift)
    base = to_canonical(_wb2_style(rng.random((1, 240, 121))))
    rolled = base.roll(longitude=shift, roll_coords=True)
    assert to_canonical(rolled).identical(base)
