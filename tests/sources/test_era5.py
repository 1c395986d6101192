"""ERA5 readers on the real files in shared/realdata, through local paths and fsspec URLs."""

import warnings

import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from dambench import DambenchInputError, DambenchSchemaError, lat_weights, validate
from dambench.sources.era5 import open_era5
from dambench.sources.lexicon import WB2

warnings.filterwarnings("ignore", message=".*decode.*")


@pytest.fixture(scope="module")
def wb2_store(realdata, tmp_path_factory):
    """A WeatherBench2-layout zarr (long names, (time, level, longitude, latitude), latitude
    ascending) made from the real ERA-Interim 0.75 deg file subsampled to exactly 1.5 deg."""
    src = xr.open_dataset(realdata / "erainterim" / "eraint_uvz.nc").load()
    sub = src.isel(latitude=slice(None, None, 2), longitude=slice(None, None, 2))
    sub = sub.assign_coords(longitude=sub.longitude % 360).sortby("longitude").sortby("latitude")
    sub = sub.rename(month="time").assign_coords(time=pd.to_datetime(["2000-01-15", "2000-07-15"]))
    sub = sub.astype("float32")
    store = xr.Dataset(
        {
            WB2[v]: sub[v].transpose("time", "level", "longitude", "latitude")
            for v in ("z", "u", "v")
        }
    )
    for var in store.data_vars.values():
        var.encoding = {}  # drop the netCDF int16 packing
    path = tmp_path_factory.mktemp("wb2") / "era5_240x121.zarr"
    store.to_zarr(path, consolidated=False)
    return path, sub


def test_grib_eda_levels(realdata):
    da = open_era5(realdata / "era5" / "era5-levels-members.grib")
    validate(da)
    assert da.dims == ("time", "channel", "latitude", "longitude")
    assert da.channel.values.tolist() == ["z500", "z850", "t500", "t850"]
    assert da.sizes["time"] == 4 and str(da.time.values[1])[:13] == "2017-01-01T12"
    t500 = da.sel(channel="t500")
    z500 = da.sel(channel="z500")
    assert 200 < float(t500.min()) and float(t500.max()) < 280
    assert 4.6e4 < float(z500.min()) and float(z500.max()) < 6.0e4
    assert da.latitude.values[0] == 90 and da.longitude.values[0] == 0


def test_grib_members_differ_and_unknown_member_raises(realdata):
    path = realdata / "era5" / "era5-levels-members.grib"
    control = open_era5(path, channels=["t850"], grid=None)
    other = open_era5(path, channels=["t850"], grid=None, member=3)
    assert control.shape == (4, 1, 61, 120)
    assert 0 < float(abs(control - other).max()) < 10
    with pytest.raises(Exception, match="member 42"):
        open_era5(path, member=42)


def test_missing_variables_and_levels_are_named(realdata):
    path = realdata / "era5" / "era5-levels-members.grib"
    with pytest.raises(DambenchSchemaError, match=r"missing variables \['q'\]"):
        open_era5(path, channels=["q700", "t500"])
    with pytest.raises(DambenchSchemaError, match=r"lacks levels \[925\]"):
        open_era5(path, channels=["t500", "t925"])
    with pytest.raises(DambenchInputError, match="requested times are missing"):
        open_era5(path, times=["2017-01-03T00"])


def test_cds_netcdf_regional_conus(realdata):
    da = open_era5(realdata / "era5" / "era5_1995-07-14T12.nc")
    validate(da)
    assert da.channel.values.tolist() == ["u10", "v10", "t2m"]
    t2m = da.sel(channel="t2m").isel(time=0)
    covered = t2m.where(t2m.notnull(), drop=True)
    # CONUS 24-50 N, 235-294 E (source lon -125..-66 rolled into 0..360)
    assert 24 <= float(covered.latitude.min()) and float(covered.latitude.max()) <= 50
    assert 234 <= float(covered.longitude.min()) and float(covered.longitude.max()) <= 295
    assert 270 < float(covered.mean()) < 310  # a July afternoon over the US, in K
    assert t2m.sel(latitude=0.0).isnull().all()


def test_wb2_zarr_layout_is_canonicalised_exactly(wb2_store):
    path, source = wb2_store
    da = open_era5(path, channels=["z500", "u850"])
    validate(da)
    assert da.dims == ("time", "channel", "latitude", "longitude")
    expected = source["z"].sel(level=500, latitude=60.0, longitude=30.0).values
    np.testing.assert_array_equal(
        da.sel(channel="z500", latitude=60.0, longitude=30.0).values, expected
    )
    np.testing.assert_array_equal(
        da.sel(channel="u850").isel(time=1).values,
        source["u"].sel(level=850).isel(time=1).sortby("latitude", ascending=False).values,
    )


def test_same_code_reads_fsspec_urls(wb2_store, realdata):
    """memory:// stands in for gs:// and hf://: the reader takes URLs through fsspec."""
    path, _ = wb2_store
    local = open_era5(path, channels=["z200"]).load()
    fs = fsspec.filesystem("memory")
    fs.put(str(path), "/wb2/era5.zarr", recursive=True)
    remote = open_era5("memory://wb2/era5.zarr", channels=["z200"]).load()
    xr.testing.assert_identical(remote.drop_attrs(), local.drop_attrs())
    fs.put(str(realdata / "era5" / "era5_1995-07-14T12.nc"), "/cds/sample.nc")
    nc = open_era5("memory://cds/sample.nc", channels=["t2m"]).load()
    np.testing.assert_array_equal(
        nc.values, open_era5(realdata / "era5" / "era5_1995-07-14T12.nc", channels=["t2m"]).values
    )
    # GRIB readers need a file name: remote GRIB is fetched once into the dambench cache
    fs.put(str(realdata / "era5" / "test4.grib"), "/grib/test4.grib")
    grib = open_era5("memory://grib/test4.grib", channels=["z500"]).load()
    np.testing.assert_array_equal(
        grib.values, open_era5(realdata / "era5" / "test4.grib", channels=["z500"]).values
    )


def test_arco_quarter_degree_store_regridded(realdata, tmp_path):
    """An ARCO-ERA5-layout 0.25 deg store (721 x 1440, long names) holding the real UK t2m."""
    uk = (
        xr.open_dataset(
            realdata / "era5" / "era5-2mt-2019-03-uk.grib",
            engine="cfgrib",
            backend_kwargs={"indexpath": ""},
        )["t2m"]
        .isel(time=[0, 12])
        .load()
    )
    lat = np.linspace(90, -90, 721)
    lon = np.arange(1440) * 0.25
    field = xr.DataArray(
        np.full((2, 721, 1440), np.nan, np.float32),
        dims=("time", "latitude", "longitude"),
        coords={"time": uk.time.values, "latitude": lat, "longitude": lon},
        attrs={"units": "K"},
    )
    uk_wrapped = uk.assign_coords(longitude=uk.longitude % 360).drop_vars(
        [c for c in uk.coords if c not in ("time", "latitude", "longitude")]
    )
    field.loc[{"latitude": uk_wrapped.latitude, "longitude": uk_wrapped.longitude}] = uk_wrapped
    path = tmp_path / "arco.zarr"
    xr.Dataset({"2m_temperature": field}).to_zarr(path, consolidated=False)
    da = open_era5(path)
    validate(da)
    assert da.channel.values.tolist() == ["t2m"]
    t2m = da.isel(time=0, channel=0).load()
    inside = t2m.sel(latitude=slice(57, 51), longitude=slice(0, 1.5))
    assert inside.notnull().all() and 265 < float(inside.mean()) < 290
    assert t2m.sel(latitude=slice(40, -90)).isnull().all()
    # the area-weighted mean over fully covered target cells matches the source region's
    src = uk_wrapped.isel(time=0).sel(latitude=slice(56.25, 51.75))
    src = src.where((src.longitude <= 1.75) | (src.longitude >= 359.25 - 8.5), drop=True)
    out = t2m.sel(latitude=slice(55.5, 52.5))
    out = out.where(out.notnull(), drop=True)
    assert float(out.weighted(lat_weights(out.latitude, "area")).mean()) == pytest.approx(
        float(src.weighted(lat_weights(src.latitude, "area")).mean()), abs=1.5
    )


def test_wrong_units_and_not_era5(tmp_path):
    bad = xr.Dataset(
        {"t2m": (("latitude", "longitude"), np.zeros((3, 4)) + 20, {"units": "degC"})},
        coords={
            "latitude": [10.0, 0.0, -10.0],
            "longitude": [0.0, 90, 180, 270],
            "time": np.datetime64("2020-01-01"),
        },
    )
    bad.to_netcdf(tmp_path / "celsius.nc", engine="h5netcdf")
    with pytest.raises(DambenchSchemaError, match="units 'degC'; expected 'K'"):
        open_era5(tmp_path / "celsius.nc")
    other = bad.rename(t2m="sst")
    other.to_netcdf(tmp_path / "sst.nc", engine="h5netcdf")
    with pytest.raises(DambenchSchemaError, match="no schema variables"):
        open_era5(tmp_path / "sst.nc")
    flipped = bad.assign_coords(latitude=[10.0, -10.0, 0.0])
    flipped["t2m"].attrs["units"] = "K"
    flipped.to_netcdf(tmp_path / "nonmono.nc", engine="h5netcdf")
    with pytest.raises(Exception, match="not strictly monotonic"):
        open_era5(tmp_path / "nonmono.nc")


def test_new_cds_netcdf_layout_matches_grib(realdata, tmp_path):
    """The 2024+ CDS netCDF layout (valid_time, pressure_level, longitude -180..180) of the same
    real fields reads identically to the GRIB file."""
    grib_path = realdata / "era5" / "era5-levels-members.grib"
    grib = xr.open_dataset(grib_path, engine="cfgrib", backend_kwargs={"indexpath": ""})
    cds = grib.sel(number=0).drop_vars(["number", "step", "valid_time"], errors="ignore")
    cds = cds.rename(time="valid_time", isobaricInhPa="pressure_level")
    cds = cds.assign_coords(longitude=((cds.longitude + 180) % 360) - 180).sortby("longitude")
    cds.to_netcdf(tmp_path / "cds.nc", engine="h5netcdf")
    from_nc = open_era5(tmp_path / "cds.nc", grid=None)
    from_grib = open_era5(grib_path, grid=None)
    np.testing.assert_array_equal(from_nc.values, from_grib.values)
    assert from_nc.channel.values.tolist() == from_grib.channel.values.tolist()


def test_era5_reader_reads_only_the_times_asked_and_pickles_without_data(wb2_store, tmp_path):
    import pickle
    import shutil

    import zarr

    from dambench.sources.era5 import Era5Reader

    path, sub = wb2_store
    store = shutil.copytree(path, tmp_path / "store.zarr")
    group = zarr.open_group(store, mode="r+")
    group.attrs["valid_time_stop"] = "2000-07-15T00"
    # corrupt every chunk of the January time: reading it would fail
    for name in (WB2[v] for v in ("z", "u", "v")):
        for chunk in (store / name / "c").glob("0/**/*"):
            if chunk.is_file():
                chunk.write_bytes(b"not a chunk")
    reader = Era5Reader(store, ["z500", "u850"])
    assert reader.grid_deg == 1.5
    assert reader.times.equals(pd.DatetimeIndex(["2000-01-15", "2000-07-15"]))
    assert reader.valid_time_stop == pd.Timestamp("2000-07-15")
    july = pd.DatetimeIndex(["2000-07-15"])
    field = reader(july)
    assert field.dims == ("time", "channel", "latitude", "longitude") and field.shape[:2] == (1, 2)
    expected = sub["z"].sel(level=500).isel(time=1).values[::-1]  # stored south to north
    np.testing.assert_array_equal(field.sel(channel="z500").values[0], expected)
    with pytest.raises(Exception):  # noqa: B017 - any decode error: the corrupt chunk was read
        reader(pd.DatetimeIndex(["2000-01-15"]))
    text = pickle.dumps(reader)
    assert len(text) < 20_000
    np.testing.assert_array_equal(pickle.loads(text)(july).values, field.values)
    with pytest.raises(DambenchInputError, match="requested times are missing"):
        reader(pd.DatetimeIndex(["2001-01-01"]))
