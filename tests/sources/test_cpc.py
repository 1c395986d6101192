"""CPC gauge precipitation: raw binary, GrADS descriptor, PSL netCDF and the canonical grid."""

from __future__ import annotations

import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from dambench import CANONICAL_GRID, DambenchInputError, lat_weights, regrid
from dambench.sources.cpc import (
    CPC_BINARY_LAYOUT,
    cpc_on_grid,
    parse_cpc_ctl,
    read_cpc_binary,
    read_cpc_psl,
)

BINARY_NAME = "PRCP_CU_GAUGE_V1.0GLB_0.50deg.lnx.20200701.RT"
CTL_NAME = "PRCP_CU_GAUGE_V1.0GLB_0.50deg.lnx.RT.ctl"
N_GAUGES = 18_460
N_GAUGE_CELLS = 9_747
N_VALID_CELLS = 93_066


@pytest.fixture(scope="module")
def binary_path(realdata):
    return realdata / "cpc" / BINARY_NAME


@pytest.fixture(scope="module")
def ctl_path(realdata):
    return realdata / "cpc" / CTL_NAME


@pytest.fixture(scope="module")
def cpc(binary_path):
    return read_cpc_binary(binary_path)


@pytest.fixture(scope="module")
def on_grid(cpc):
    """Only cells at least half covered by gauge cells (min_coverage=0.5)."""
    return cpc_on_grid(cpc, min_coverage=0.5)


@pytest.fixture(scope="module")
def on_grid_all(cpc):
    """Every target cell touched by a gauge-covered cell (the default, min_coverage=0)."""
    return cpc_on_grid(cpc)


def raw_records(path) -> np.ndarray:
    return np.fromfile(path, "<f4").reshape(2, 360, 720)


def area_mean(field: xr.DataArray, weight: xr.DataArray | None = None) -> float:
    w = lat_weights(field.latitude, "area") * (1.0 if weight is None else weight)
    w = w.where(field.notnull(), 0.0)
    return float((field.fillna(0) * w).sum() / w.sum())


# --- reading the real binary -----------------------------------------------------------------


def test_shape_orientation_units_and_attrs(cpc):
    assert set(cpc.data_vars) == {"precip", "precip_gauges"}
    assert cpc.precip.dims == ("time", "latitude", "longitude")
    assert cpc.precip.shape == (1, 360, 720)
    assert cpc.precip.dtype == np.float32
    lat, lon = cpc.latitude.values, cpc.longitude.values
    assert lat[0] == 89.75 and lat[-1] == -89.75 and np.all(np.diff(lat) == -0.5)
    assert lon[0] == 0.25 and lon[-1] == 359.75 and np.all(np.diff(lon) == 0.5)
    assert cpc.time.values[0] == np.datetime64("2020-07-01T00:00")
    assert cpc.precip.attrs["units"] == "mm/day"
    assert cpc.precip.attrs["standard_name"] == "lwe_precipitation_rate"
    assert "CPC Global Unified Gauge-Based Analysis" in cpc.attrs["source"]
    assert "NOAA/OAR/ESRL PSL" in cpc.attrs["source"]
    assert "no restrictions" in cpc.attrs["license"].lower()


def test_documented_counts_and_maximum(cpc):
    gauges = cpc.precip_gauges.values
    assert float(np.nansum(gauges)) == N_GAUGES
    assert int((gauges > 0).sum()) == N_GAUGE_CELLS
    assert int(cpc.precip.notnull().sum()) == N_VALID_CELLS
    assert float(cpc.precip.max()) == pytest.approx(180.7, abs=0.05)
    assert float(cpc.precip.min()) >= 0.0


def test_values_match_the_raw_records_flipped_and_scaled(cpc, binary_path):
    rain, gnum = raw_records(binary_path)
    expected = np.where(rain == -999.0, np.nan, rain * np.float32(0.1))[::-1]
    np.testing.assert_array_equal(cpc.precip.values[0], expected.astype(np.float32))
    np.testing.assert_array_equal(cpc.precip_gauges.values[0], gnum[::-1])
    # orientation: the file's first row is the southernmost latitude
    np.testing.assert_array_equal(cpc.precip.sel(latitude=-89.75).values[0], expected[-1])


def test_ctl_parse_matches_the_hard_coded_layout(ctl_path, binary_path, cpc):
    layout = parse_cpc_ctl(ctl_path)
    assert layout == CPC_BINARY_LAYOUT
    assert layout.nbytes == 2_073_600
    assert read_cpc_binary(binary_path, ctl=ctl_path).identical(cpc)


def test_ctl_changes_the_layout(tmp_path, ctl_path, binary_path):
    text = ctl_path.read_text().replace("(0.1mm/day)", "(mm/day)")
    ctl = tmp_path / "scaled.ctl"
    ctl.write_text(text)
    assert parse_cpc_ctl(ctl).rain_scale == 1.0
    ds = read_cpc_binary(binary_path, ctl=ctl)
    assert float(ds.precip.max()) == pytest.approx(1807.4, abs=0.5)
    bad = tmp_path / "levels.ctl"
    bad.write_text(text.replace("ydef 360  linear -89.75 0.50", "ydef 360 levels -89.75 -89.25"))
    with pytest.raises(DambenchInputError, match="only linear axes"):
        parse_cpc_ctl(bad)


def test_date_from_name_or_argument(tmp_path, binary_path):
    ds = read_cpc_binary(binary_path, date="2021-02-03")
    assert ds.time.values[0] == np.datetime64("2021-02-03")
    with pytest.raises(DambenchInputError, match="00 UTC"):
        read_cpc_binary(binary_path, date="2020-07-01T06:00")
    nameless = tmp_path / "cpc_daily.bin"
    nameless.write_bytes(binary_path.read_bytes())
    with pytest.raises(DambenchInputError, match="no YYYYMMDD date"):
        read_cpc_binary(nameless)
    assert read_cpc_binary(nameless, date=pd.Timestamp("2020-07-01")).time.size == 1


def test_fsspec_url_reads_the_same(binary_path, ctl_path, cpc):
    url = f"memory://dambench-test/{BINARY_NAME}"
    with fsspec.open(url, "wb") as handle:
        handle.write(binary_path.read_bytes())
    with fsspec.open("memory://dambench-test/cpc.ctl", "wb") as handle:
        handle.write(ctl_path.read_bytes())
    ds = read_cpc_binary(url, ctl="memory://dambench-test/cpc.ctl")
    np.testing.assert_array_equal(ds.precip.values, cpc.precip.values)


# --- bad inputs ------------------------------------------------------------------------------


def test_truncated_file_raises(tmp_path, binary_path):
    short = tmp_path / BINARY_NAME
    short.write_bytes(binary_path.read_bytes()[:-4000])
    with pytest.raises(DambenchInputError, match="expected 2073600 bytes"):
        read_cpc_binary(short)


def test_missing_file_raises(tmp_path):
    with pytest.raises(DambenchInputError, match="No such file"):
        read_cpc_binary(tmp_path / BINARY_NAME)


def test_garbage_and_negative_values_raise(tmp_path, binary_path):
    records = raw_records(binary_path).copy()
    nan = records.copy()
    nan[0, 10, 10] = np.nan
    path = tmp_path / BINARY_NAME
    path.write_bytes(nan.astype("<f4").tobytes())
    with pytest.raises(DambenchInputError, match="1 non-finite"):
        read_cpc_binary(path)
    negative = records.copy()
    negative[0, 200, 300] = -5.0
    path.write_bytes(negative.astype("<f4").tobytes())
    with pytest.raises(DambenchInputError, match="1 negative rain"):
        read_cpc_binary(path)
    path.write_bytes(records.astype(">f4").tobytes())  # wrong byte order
    with pytest.raises(DambenchInputError):
        read_cpc_binary(path)


@pytest.mark.parametrize("units", ["m", "kg m-2 s-1", None])
def test_wrong_units_are_refused_on_grid(cpc, units):
    ds = cpc.copy()
    ds["precip"] = ds.precip.copy()
    if units is None:
        del ds.precip.attrs["units"]
    else:
        ds.precip.attrs["units"] = units
    with pytest.raises(DambenchInputError, match="precip units must be mm/day"):
        cpc_on_grid(ds)


# --- canonical grid --------------------------------------------------------------------------


def test_on_grid_shape_and_gauge_total(on_grid, on_grid_all):
    for ds in (on_grid, on_grid_all):
        assert ds.precip.shape == (1, *CANONICAL_GRID.shape)
        np.testing.assert_array_equal(ds.latitude.values, CANONICAL_GRID.latitude)
        assert ds.precip.attrs["units"] == "mm/day"
        assert float(ds.precip_gauges.sum()) == pytest.approx(N_GAUGES, rel=1e-9)
        assert float(ds.precip_gauges.min()) >= 0.0


def test_precip_is_nan_without_gauges_and_nonnegative_elsewhere(cpc, on_grid, on_grid_all):
    for ds in (on_grid, on_grid_all):
        no_gauge = (ds.precip_gauges == 0).values
        assert no_gauge.any()
        assert np.isnan(ds.precip.values[no_gauge]).all()
        finite = np.isfinite(ds.precip.values)
        assert finite.sum() > 500
        assert (ds.precip.values[finite] >= 0).all()
    # min_coverage=0: finite exactly where some gauge-covered, defined source cell overlaps
    covered = (cpc.precip_gauges > 0) & cpc.precip.notnull()
    overlap = regrid(covered.astype(np.float64), method="sum")
    np.testing.assert_array_equal(np.isfinite(on_grid_all.precip.values), overlap.values > 0)
    # a higher min_coverage only removes cells, never changes values
    kept = np.isfinite(on_grid.precip.values)
    assert kept.sum() < np.isfinite(on_grid_all.precip.values).sum()
    np.testing.assert_array_equal(on_grid.precip.values[kept], on_grid_all.precip.values[kept])


def test_area_weighted_mean_over_gauge_cells_is_preserved(cpc, on_grid_all):
    covered = ((cpc.precip_gauges > 0) & cpc.precip.notnull()).isel(time=0)
    source_mean = area_mean(cpc.precip.isel(time=0).where(covered))
    fraction = regrid(covered.astype(np.float64))  # covered fraction of each target cell
    target_mean = area_mean(on_grid_all.precip.isel(time=0), weight=fraction)
    assert target_mean == pytest.approx(source_mean, rel=1e-5)
    assert 0.5 < source_mean < 20  # July gauge-cell mean, mm/day


# --- PSL netCDF ------------------------------------------------------------------------------


def write_psl_file(path, precip: np.ndarray, times, units="mm/day", lat=None, lon=None):
    """A netCDF4 file with the layout of PSL's precip.YYYY.nc (lat north to south)."""
    lat = np.arange(89.75, -90, -0.5) if lat is None else lat
    lon = np.arange(0.25, 360, 0.5) if lon is None else lon
    ds = xr.Dataset(
        {
            "precip": (
                ("time", "lat", "lon"),
                precip.astype(np.float32),
                {
                    "units": units,
                    "long_name": "Daily total of precipitation",
                    "dataset": "CPC Global Precipitation",
                    "statistic": "Total",
                },
            )
        },
        coords={
            "time": pd.DatetimeIndex(times),
            "lat": lat.astype(np.float32),
            "lon": lon.astype(np.float32),
        },
    )
    encoding = {
        "precip": {"_FillValue": np.float32(-9.96921e36), "zlib": True},
        "time": {"units": "hours since 1900-01-01 00:00:00"},
    }
    ds.to_netcdf(path, engine="h5netcdf", encoding=encoding)
    return path


@pytest.mark.parametrize("units", ["mm/day", "mm"])
def test_psl_netcdf_gives_the_same_precip(tmp_path, cpc, units):
    path = write_psl_file(tmp_path / "precip.2020.nc", cpc.precip.values, ["2020-07-01"], units)
    psl = read_cpc_psl(path)
    assert set(psl.data_vars) == {"precip"}
    assert psl.precip.attrs["units"] == "mm/day"
    np.testing.assert_array_equal(psl.latitude.values, cpc.latitude.values)
    np.testing.assert_array_equal(psl.longitude.values, cpc.longitude.values)
    np.testing.assert_array_equal(psl.time.values, cpc.time.values)
    np.testing.assert_array_equal(psl.precip.values, cpc.precip.values)
    grid = cpc_on_grid(psl)
    assert "precip_gauges" not in grid and grid.precip.shape == (1, 121, 240)
    assert np.nanmin(grid.precip.values) >= 0 and np.isnan(grid.precip.values).any()


def test_psl_time_selection_and_bad_files(tmp_path):
    lat, lon = np.array([1.0, 0.0, -1.0]), np.array([0.0, 1.0, 2.0, 3.0])
    values = np.ones((3, 3, 4))
    times = ["2020-01-01", "2020-01-02", "2020-01-03"]
    path = write_psl_file(tmp_path / "small.nc", values, times, lat=lat, lon=lon)
    picked = read_cpc_psl(path, times=["2020-01-02"])
    np.testing.assert_array_equal(picked.time.values, np.array(["2020-01-02"], "M8[ns]"))
    with pytest.raises(DambenchInputError, match="requested times are missing"):
        read_cpc_psl(path, times=["2021-01-01"])
    weekly = write_psl_file(
        tmp_path / "weekly.nc", values, ["2020-01-01", "2020-01-08", "2020-01-15"], "mm", lat, lon
    )
    with pytest.raises(DambenchInputError, match="units must be mm/day"):
        read_cpc_psl(weekly)
    metres = write_psl_file(tmp_path / "m.nc", values, times, "m", lat, lon)
    with pytest.raises(DambenchInputError, match="found 'm'"):
        read_cpc_psl(metres)
    negative = write_psl_file(tmp_path / "neg.nc", -values, times, lat=lat, lon=lon)
    with pytest.raises(DambenchInputError, match="negative precip"):
        read_cpc_psl(negative)
    shuffled = write_psl_file(
        tmp_path / "shuffled.nc", values, times, lat=np.array([1.0, -1.0, 0.0]), lon=lon
    )
    with pytest.raises(DambenchInputError, match="not strictly monotonic"):
        read_cpc_psl(shuffled)
    other = tmp_path / "other.nc"
    xr.Dataset({"rain": (("lat",), lat)}, coords={"lat": lat}).to_netcdf(other, engine="h5netcdf")
    found = r"no 'precip' variable; found variables \['rain'\]"
    with pytest.raises(DambenchInputError, match=found):
        read_cpc_psl(other)
    junk = tmp_path / "precip.2020.nc"
    junk.write_bytes(b"not netCDF" * 100)
    with pytest.raises(DambenchInputError, match="cannot open as a netCDF file"):
        read_cpc_psl(junk)
