import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from dambench import CANONICAL_GRID, DambenchInputError, Grid, lat_weights, to_canonical
from dambench.grid import resolve_weights, spatial_mean, weight_matrix


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


def _grid_field(values):
    return xr.DataArray(
        values,
        dims=("latitude", "longitude"),
        coords={"latitude": [10.0, 0.0, -10.0], "longitude": [0.0, 90.0, 180.0, 270.0]},
    )


def test_two_dimensional_weights_match_the_data_by_coordinate_value():
    template = _grid_field(np.zeros((3, 4)))
    raw = np.arange(1.0, 13.0).reshape(3, 4)
    # same weights given transposed, latitude ascending, longitudes -180..180
    other_layout = _grid_field(raw).transpose("longitude", "latitude").isel(latitude=[2, 1, 0])
    other_layout = other_layout.assign_coords(longitude=[0.0, 90.0, -180.0, -90.0])
    resolved = resolve_weights(other_layout, template).transpose("latitude", "longitude")
    np.testing.assert_array_equal(resolved.values, raw)
    np.testing.assert_array_equal(weight_matrix(other_layout, template), raw)
    # 1-D latitude weights broadcast along longitude; None is uniform
    lat_only = xr.DataArray([1.0, 2.0, 3.0], dims="latitude", coords={"latitude": [-10, 0, 10]})
    np.testing.assert_array_equal(weight_matrix(lat_only, template)[:, 0], [3.0, 2.0, 1.0])
    np.testing.assert_array_equal(weight_matrix(None, template), np.ones((3, 4)))


def test_weights_on_another_grid_or_dim_are_refused():
    template = _grid_field(np.zeros((3, 4)))
    shifted = _grid_field(np.ones((3, 4))).assign_coords(latitude=[10.5, 0.5, -9.5])
    with pytest.raises(DambenchInputError, match="latitude coordinates do not match"):
        resolve_weights(shifted, template)
    with pytest.raises(DambenchInputError, match="subset of"):
        resolve_weights(xr.DataArray([1.0, 2.0], dims="time"), template)
    with pytest.raises(DambenchInputError, match="2 longitude points, the data has 4"):
        resolve_weights(xr.DataArray([1.0, 2.0], dims="longitude"), template.drop_vars("longitude"))
    with pytest.raises(DambenchInputError, match="only poles"):
        lat_weights(np.array([90.0, -90.0]), "cos")


def test_spatial_mean_nan_rule_golden_values():
    # weights [[1, 1, 0, 2], ...]: the zero-weight NaN is ignored, a weighted NaN is not
    x = _grid_field([[1.0, 2.0, np.nan, 4.0], [1.0, 1.0, 1.0, 1.0], [np.nan, 3.0, 3.0, 3.0]])
    w = _grid_field([[1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert np.isnan(float(spatial_mean(x, weights=w)))
    # skipna: (1 + 2 + 8 + 4 * 1 + 3 * 3) / (4 + 4 + 3) = 24 / 11
    assert float(spatial_mean(x, weights=w, skipna=True)) == pytest.approx(24 / 11, rel=1e-15)
    first_row = x.isel(latitude=[0])
    assert float(spatial_mean(first_row, weights=w)) == pytest.approx(11 / 4, rel=1e-15)
    assert np.isnan(float(spatial_mean(x * np.nan, weights=w, skipna=True)))
    assert spatial_mean(x.astype("float16"), skipna=True).dtype == np.float64
