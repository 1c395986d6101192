"""NOAA interpolated daily OLR: reading, validation and the canonical grid."""

from __future__ import annotations

import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from dambench import CANONICAL_GRID, DambenchInputError, lat_weights, regrid
from dambench.sources.olr import olr_on_grid, read_olr

OLR_NAME = "olr_equatorial_1979.nc"


@pytest.fixture(scope="module")
def olr_path(realdata):
    return realdata / "olr" / OLR_NAME


@pytest.fixture(scope="module")
def olr(olr_path):
    return read_olr(olr_path)


@pytest.fixture(scope="module")
def olr_grid(olr):
    return olr_on_grid(olr)


def source_area_weights(lat_deg: np.ndarray, spacing_deg: float) -> np.ndarray:
    """Cell areas of a regular (possibly regional) grid: sin(upper) - sin(lower) per row."""
    half = np.deg2rad(spacing_deg / 2)
    lat = np.deg2rad(lat_deg)
    return np.sin(np.minimum(lat + half, np.pi / 2)) - np.sin(np.maximum(lat - half, -np.pi / 2))


def mean_over_covered(field: xr.DataArray, row_weights) -> float:
    """Area-weighted mean over finite cells; ``row_weights`` per latitude row."""
    values = field.values
    w = np.broadcast_to(np.asarray(row_weights)[:, None], values.shape[-2:])
    w = np.where(np.isfinite(values), w, 0.0)
    return float(np.nansum(values * w) / w.sum())


def write_olr_file(path, values, lat, lon, times, units="W/m^2", name="olr", **attrs):
    ds = xr.Dataset(
        {
            name: (
                ("time", "lat", "lon"),
                np.asarray(values, dtype=np.float32),
                {"units": units, "long_name": "Daily Mean OLR", **attrs},
            )
        },
        coords={"time": pd.DatetimeIndex(times), "lat": lat, "lon": lon},
    )
    ds.to_netcdf(
        path, engine="h5netcdf", encoding={"time": {"units": "hours since 1800-01-01 00:00:00"}}
    )
    return path


def small_olr_file(path, **kwargs):
    lat = kwargs.pop("lat", np.array([5.0, 2.5, 0.0, -2.5, -5.0]))
    lon = np.arange(0, 360, 2.5)
    values = kwargs.pop("values", np.full((2, lat.size, lon.size), 240.0))
    return write_olr_file(path, values, lat, lon, ["1979-01-01", "1979-01-02"], **kwargs)


# --- the real file -----------------------------------------------------------------------------


def test_time_axis_is_daily_1979(olr):
    times = pd.DatetimeIndex(olr.time.values)
    assert len(times) == 365
    assert times[0] == pd.Timestamp("1979-01-01") and times[-1] == pd.Timestamp("1979-12-31")
    assert (np.diff(times.values) == np.timedelta64(1, "D")).all()


def test_layout_units_and_values(olr):
    assert olr.name == "olr"
    assert olr.dims == ("time", "latitude", "longitude")
    assert olr.shape == (365, 13, 144)
    assert olr.attrs["units"] == "W m-2"
    assert olr.attrs["standard_name"] == "toa_outgoing_longwave_flux"
    assert "no restrictions" in olr.attrs["license"].lower()
    lat, lon = olr.latitude.values, olr.longitude.values
    assert lat[0] == 15.0 and lat[-1] == -15.0 and np.all(np.diff(lat) == -2.5)
    assert lon[0] == 0.0 and lon[-1] == 357.5 and np.all(np.diff(lon) == 2.5)
    assert np.isfinite(olr.values).all()
    assert 74.0 <= float(olr.min()) and float(olr.max()) <= 326.0


def test_matches_the_file_flipped(olr, olr_path):
    raw = xr.open_dataset(olr_path, engine="h5netcdf")["olr"]
    np.testing.assert_array_equal(olr.values, raw.values[:, ::-1, :])


def test_time_selection_and_fsspec_url(olr, olr_path):
    url = f"memory://dambench-test/{OLR_NAME}"
    with fsspec.open(url, "wb") as handle:
        handle.write(olr_path.read_bytes())
    picked = read_olr(url, times=["1979-07-01", "1979-07-02"])
    assert picked.shape == (2, 13, 144)
    np.testing.assert_array_equal(picked.values, olr.sel(time=["1979-07-01", "1979-07-02"]).values)
    with pytest.raises(DambenchInputError, match="requested times are missing"):
        read_olr(olr_path, times=["1980-01-01"])


def test_on_grid_coverage(olr_grid):
    assert olr_grid.shape == (365, *CANONICAL_GRID.shape)
    assert olr_grid.name == "olr" and olr_grid.attrs["units"] == "W m-2"
    lat = olr_grid.latitude.values
    inside = np.abs(lat) <= 15.0 + 1e-9
    assert np.isfinite(olr_grid.values[:, inside, :]).all()
    assert np.isnan(olr_grid.values[:, np.abs(lat) >= 16.5, :]).all()
    assert np.isnan(olr_grid.values[:, np.abs(lat) > 17.0, :]).all()
    assert 74.0 <= np.nanmin(olr_grid.values) and np.nanmax(olr_grid.values) <= 326.0


def test_area_weighted_mean_is_preserved(olr):
    # source rows |lat| <= 10 have outer bounds at +-11.25, a target cell boundary, so the
    # covered target rows (|lat| <= 10.5) hold exactly the source's area
    sub = olr.isel(time=slice(0, 60)).sel(latitude=slice(10, -10))
    out = olr_on_grid(sub)
    target_w = lat_weights(out.latitude, "area").values
    source_w = source_area_weights(sub.latitude.values, 2.5)
    assert np.isfinite(out.values[:, np.abs(out.latitude.values) <= 10.5]).all()
    for t in range(0, 60, 7):
        source = mean_over_covered(sub.isel(time=t), source_w)
        target = mean_over_covered(out.isel(time=t), target_w)
        assert target == pytest.approx(source, rel=1e-6)


def test_mean_preserved_with_partial_cells_weighted_by_coverage(olr):
    sub = olr.isel(time=slice(100, 103))
    out = olr_on_grid(sub, min_coverage=0.0)
    # the same data padded with NaN to the global 2.5 degree grid regrids identically
    padded = sub.reindex(latitude=np.arange(90.0, -90.1, -2.5))
    np.testing.assert_allclose(olr_on_grid(padded, min_coverage=0.0).values, out.values, rtol=1e-6)
    fraction = regrid(padded.isel(time=0).notnull().astype(np.float64))  # covered share
    area = lat_weights(out.latitude, "area").values[:, None] * fraction.values
    source_w = source_area_weights(sub.latitude.values, 2.5)
    for t in range(3):
        target = float(np.nansum(out.values[t] * area) / area[np.isfinite(out.values[t])].sum())
        assert target == pytest.approx(mean_over_covered(sub.isel(time=t), source_w), rel=1e-6)


def test_constant_field_stays_constant(olr):
    const = olr.isel(time=slice(0, 2)).copy(data=np.full((2, 13, 144), 250.0, np.float32))
    out = olr_on_grid(const)
    finite = out.values[np.isfinite(out.values)]
    assert finite.size == 2 * 21 * 240
    np.testing.assert_allclose(finite, 250.0, rtol=1e-6)


# --- bad inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("units", ["W/m^2", "W m-2", "W m**-2"])
def test_unit_spellings_are_accepted(tmp_path, units):
    da = read_olr(small_olr_file(tmp_path / "olr.nc", units=units))
    assert da.attrs["units"] == "W m-2"
    assert da.shape == (2, 5, 144)


def test_wrong_units_raise(tmp_path):
    with pytest.raises(DambenchInputError, match="OLR units must be W m-2.*found 'K'"):
        read_olr(small_olr_file(tmp_path / "kelvin.nc", units="K"))


def test_wrong_units_raise_on_grid(olr):
    with pytest.raises(DambenchInputError, match="found 'K'"):
        olr_on_grid(olr.isel(time=0).assign_attrs(units="K"))


def test_non_monotonic_latitude_raises(tmp_path):
    lat = np.array([5.0, 0.0, 2.5, -2.5, -5.0])
    with pytest.raises(DambenchInputError, match="latitude coordinate is not strictly monotonic"):
        read_olr(small_olr_file(tmp_path / "shuffled.nc", lat=lat))


def test_file_without_olr_names_its_variables(tmp_path):
    path = small_olr_file(tmp_path / "precip.nc", name="precip", units="mm/day")
    found = r"no 'olr' variable; found variables \['precip'\]"
    with pytest.raises(DambenchInputError, match=found):
        read_olr(path)


def test_values_outside_valid_range_raise(tmp_path):
    values = np.full((2, 5, 144), 240.0)
    values[0, 1, :3] = 600.0
    path = small_olr_file(
        tmp_path / "range.nc", values=values, valid_range=np.array([0.0, 500.0], np.float32)
    )
    with pytest.raises(DambenchInputError, match=r"3 OLR values outside valid_range \[0, 500\]"):
        read_olr(path)
    negative = small_olr_file(tmp_path / "negative.nc", values=-values)
    with pytest.raises(DambenchInputError, match="outside"):
        read_olr(negative)


def test_a_file_that_is_not_netcdf_raises(tmp_path):
    junk = tmp_path / "olr.day.mean.nc"
    junk.write_bytes(b"this is not a netCDF file" * 10)
    with pytest.raises(DambenchInputError, match="cannot open as a netCDF file"):
        read_olr(junk)
