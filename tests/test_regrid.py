import numpy as np
import pytest
import xarray as xr

from dambench import CANONICAL_GRID, DambenchInputError, Regridder, lat_weights, regrid, validate


def area_mean(field: xr.DataArray) -> float:
    w = lat_weights(field.latitude, "area")
    return float(field.weighted(w).mean(["latitude", "longitude"]))


def quarter_degree(values):
    lat = np.linspace(90, -90, 721)
    lon = np.arange(1440) * 0.25
    return xr.DataArray(
        values, dims=("latitude", "longitude"), coords={"latitude": lat, "longitude": lon}
    )


def test_constant_stays_constant_and_mean_is_preserved():
    rng = np.random.default_rng(0)
    const = regrid(quarter_degree(np.full((721, 1440), 7.0)))
    np.testing.assert_allclose(const.values, 7.0, rtol=1e-12)
    field = quarter_degree(rng.random((721, 1440)))
    out = regrid(field)
    assert out.shape == (121, 240)
    assert area_mean(out) == pytest.approx(area_mean(field), rel=1e-9)
    validate(out)


def test_sum_method_preserves_totals_exactly():
    rng = np.random.default_rng(1)
    counts = quarter_degree(rng.integers(0, 4, (721, 1440)).astype(float))
    out = regrid(counts, method="sum")
    assert float(out.sum()) == pytest.approx(float(counts.sum()), rel=1e-12)


def test_orientation_and_longitude_convention_do_not_matter():
    rng = np.random.default_rng(2)
    field = quarter_degree(rng.random((721, 1440)))
    other = field.isel(latitude=slice(None, None, -1)).roll(longitude=720, roll_coords=True)
    other = other.assign_coords(longitude=((other.longitude + 180) % 360) - 180)
    np.testing.assert_allclose(regrid(other).values, regrid(field).values, rtol=1e-12)


def test_partial_coverage_is_nan_outside():
    lat = np.arange(-15, 15.1, 2.5)
    lon = np.arange(0, 360, 2.5)
    band = xr.DataArray(
        np.full((lat.size, lon.size), 200.0), dims=("lat", "lon"), coords={"lat": lat, "lon": lon}
    )
    out = regrid(band)
    inside = out.sel(latitude=slice(15, -15))
    assert np.allclose(inside.values, 200.0)
    assert out.sel(latitude=slice(90, 18)).isnull().all()
    # a NaN source cell is excluded from the mean, not treated as 0; target cells lying mostly
    # inside the 2.5 deg hole lose their coverage and become NaN
    holed = band.copy()
    holed[6, 10] = np.nan
    values = regrid(holed).sel(latitude=slice(15, -15)).values
    assert np.allclose(values[np.isfinite(values)], 200.0)
    assert 1 <= np.isnan(values).sum() <= 4


def test_bad_source_coordinates():
    with pytest.raises(DambenchInputError, match="not monotonic"):
        Regridder(np.array([0.0, 10.0, 5.0]), np.arange(0, 360, 10.0))


def test_real_era5_tcwv_quarter_degree(realdata):
    tcwv = xr.open_dataset(realdata / "era5" / "ERA5-tcwv.nc")["tcwv"].isel(time=0).load()
    assert tcwv.attrs["units"] == "kg m**-2"
    out = regrid(tcwv)
    validate(out)
    source = tcwv.dambench.to_canonical()
    assert area_mean(out) == pytest.approx(area_mean(source), rel=1e-6)
    assert 0.5 < float(out.min()) and float(out.max()) < 64  # within the file's 0.6..63.7 range
    # every 6th point of the 0.25 deg grid is the 1.5 deg grid: the two agree closely
    subsampled = source.isel(latitude=slice(None, None, 6), longitude=slice(None, None, 6))
    validate(subsampled)
    assert float(abs(subsampled - out).mean()) < 1.0


def test_bilinear_reproduces_a_smooth_field():
    lat = np.arange(-89.75, 90, 0.5)
    lon = np.arange(0.25, 360, 0.5)
    field = xr.DataArray(
        np.cos(np.deg2rad(lat))[:, None] * np.sin(np.deg2rad(lon))[None, :],
        dims=("lat", "lon"),
        coords={"lat": lat, "lon": lon},
    )
    out = regrid(field, method="bilinear")
    exact = (
        np.cos(np.deg2rad(CANONICAL_GRID.latitude))[:, None]
        * np.sin(np.deg2rad(CANONICAL_GRID.longitude))[None, :]
    )
    interior = slice(1, -1)  # the pole rows take the nearest source row (89.75 deg)
    # linear interpolation error of a sine over 0.5 deg: at most (0.5 deg)^2 / 8 ~ 1e-5
    assert np.abs(out.values[interior] - exact[interior]).max() < 2e-5
    # the pole row: the 89.75 deg source row interpolated in longitude (sin(0) = 0 at exact[60, 0])
    assert np.abs(out.values[0] - np.cos(np.deg2rad(89.75)) * exact[60]).max() < 1e-6
    # longitude 0 lies between source columns 359.75 and 0.25: periodic interpolation gives ~0
    np.testing.assert_allclose(out.sel(longitude=0.0).values, 0.0, atol=1e-9)


def test_unknown_method_raises():
    with pytest.raises(DambenchInputError, match="Unknown regridding"):
        regrid(quarter_degree(np.zeros((721, 1440))), method="nearest")


@pytest.mark.parametrize("method", ["conservative", "bilinear"])
def test_regional_grid_crossing_greenwich(method):
    """-70..40 E wraps to 0..40 and 290..358: the gap between them stays empty."""
    lat = np.arange(70, 19, -1.0)
    lon = np.arange(-70, 40.1, 1.0)
    field = xr.DataArray(
        np.full((lat.size, lon.size), 3.0), dims=("lat", "lon"), coords={"lat": lat, "lon": lon}
    )
    out = regrid(field, method=method)
    assert out.sel(latitude=45.0, longitude=180.0).isnull()
    assert out.sel(latitude=45.0, longitude=100.5).isnull()
    np.testing.assert_allclose(out.sel(latitude=45.0, longitude=[0.0, 30.0, 300.0, 358.5]), 3.0)


def test_integer_input_gives_fractional_float_means():
    mask = quarter_degree(np.zeros((721, 1440), dtype=np.int64))
    # source cells at 0, 0.25, 0.5 E span -0.125..0.625: 0.75 of the 1.5 deg target cell at 0 E
    mask[:, :3] = 1
    out = regrid(mask)
    assert out.dtype == np.float64
    assert float(out.isel(latitude=60, longitude=0)) == pytest.approx(0.5)


def test_irregular_longitude_raises():
    lon = np.array([0.0, 1.0, 2.5, 4.0])
    field = xr.DataArray(
        np.ones((3, 4)), dims=("lat", "lon"), coords={"lat": [10.0, 0.0, -10.0], "lon": lon}
    )
    with pytest.raises(DambenchInputError, match="not regularly spaced"):
        regrid(field)


def test_real_cpc_half_degree_field_mean_and_count_total(realdata):
    from dambench.sources.cpc import read_cpc_binary

    cpc = read_cpc_binary(realdata / "cpc" / "PRCP_CU_GAUGE_V1.0GLB_0.50deg.lnx.20200701.RT")
    gauges = cpc["precip_gauges"].isel(time=0).fillna(0.0)  # a NaN-free global 0.5 deg field
    as_field = regrid(gauges)
    assert area_mean(as_field) == pytest.approx(area_mean(gauges), rel=1e-6)
    as_count = regrid(gauges, method="sum")
    assert float(as_count.sum()) == pytest.approx(18460.0, rel=1e-12)
