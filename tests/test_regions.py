import numpy as np
import pandas as pd
import pytest
import xarray as xr

from dambench import CANONICAL_GRID, DambenchInputError, channel_stats, evaluate, lat_weights
from dambench.regions import (
    PERIODS,
    REGIONS,
    Region,
    period_labels,
    region_weights,
    resolve_region,
)
from dambench.testing import smooth_field

LAT, LON = CANONICAL_GRID.latitude, CANONICAL_GRID.longitude
FIVE_DEG_LAT = np.arange(-90.0, 90.1, 5.0)  # has rows exactly on +-20 and +-60


def inside(name, lat=LAT, lon=LON, **kwargs):
    return region_weights(name, lat, lon, **kwargs).values > 0


def test_latitude_bands_follow_the_stated_bounds():
    lat = FIVE_DEG_LAT
    rows = {name: inside(name, lat)[:, 0] for name in REGIONS if name not in ("land", "sea")}
    assert lat[rows["tropics"]].tolist() == np.arange(-20.0, 20.1, 5.0).tolist()  # bounds in
    assert lat[rows["extratropics_north"]].min() == 25.0  # 20N itself is tropical
    assert lat[rows["extratropics_south"]].max() == -25.0
    assert lat[rows["arctic"]].min() == 65.0 and lat[rows["antarctic"]].max() == -65.0
    assert rows["global"].all()
    # tropics and the two extratropics partition the globe; extratropics is their union
    parts = rows["tropics"].astype(int) + rows["extratropics_north"] + rows["extratropics_south"]
    assert (parts == 1).all()
    assert (rows["extratropics"] == (rows["extratropics_north"] | rows["extratropics_south"])).all()


def test_box_wraps_through_zero_in_any_longitude_convention():
    box = "box:30,60,-20,40"
    columns = inside(box)[LAT.tolist().index(45.0)]
    expected = (LON <= 40) | (LON >= 340)
    assert (columns == expected).all()
    # the same box given as 340..40 east selects the same points
    assert (inside("box:30,60,340,40") == inside(box)).all()
    # data on a -180..180 grid: the same geographic points
    lon180 = np.where(LON >= 180, LON - 360, LON)
    assert (inside(box, lon=lon180) == inside(box)).all()
    rows = inside(box)[:, 0]
    assert LAT[rows].min() == 30.0 and LAT[rows].max() == 60.0  # bounds included


def test_region_weights_are_base_weights_inside_and_zero_outside():
    cos = region_weights("tropics", LAT, LON, base="cos")
    assert cos.dims == ("latitude", "longitude") and cos.dtype == np.float64
    expected = np.where(np.abs(LAT) <= 20, lat_weights(LAT, "cos").values, 0.0)[:, None]
    np.testing.assert_array_equal(cos.values, np.broadcast_to(expected, cos.shape))
    plain = region_weights("tropics", LAT, LON)
    assert set(np.unique(plain.values)) == {0.0, 1.0}
    assert plain.attrs["region"] == "tropics"
    assert plain.attrs["region_definition"] == "latitude in [-20, 20], all longitudes"
    coords = smooth_field(1, ["t2m"])
    from_dataarrays = region_weights("tropics", coords.latitude, coords.longitude)
    xr.testing.assert_equal(from_dataarrays, plain)


def test_land_and_sea_need_a_mask_and_split_the_globe():
    with pytest.raises(DambenchInputError, match="needs a land-sea mask"):
        region_weights("land", LAT, LON)
    rng = np.random.default_rng(0)
    fraction = rng.random((LAT.size, LON.size))
    # the mask comes on another grid layout: ascending latitude, -180..180 longitude
    mask = xr.DataArray(
        fraction, dims=("latitude", "longitude"), coords={"latitude": LAT, "longitude": LON}
    )
    mask = mask.isel(latitude=slice(None, None, -1)).roll(longitude=120, roll_coords=True)
    mask = mask.assign_coords(longitude=(mask.longitude + 180) % 360 - 180)
    land = region_weights("land", LAT, LON, land_sea_mask=mask)
    sea = region_weights("sea", LAT, LON, land_sea_mask=mask)
    np.testing.assert_array_equal(land.values, (fraction > 0.5).astype(float))
    np.testing.assert_array_equal(land.values + sea.values, 1.0)
    land_fraction = region_weights("land", LAT, LON, land_sea_mask=mask, land_threshold=None)
    np.testing.assert_allclose(land_fraction.values, fraction)
    with pytest.raises(DambenchInputError, match=r"land fraction in \[0, 1\]"):
        region_weights("land", LAT, LON, land_sea_mask=mask * 2)


def test_resolve_region_accepts_names_regions_and_boxes():
    assert resolve_region(None) is REGIONS["global"]
    assert resolve_region("arctic") is REGIONS["arctic"]
    custom = Region("mine", lat_min=10, lat_max=30)
    assert resolve_region(custom) is custom
    box = resolve_region("box:35,70,-10,40")
    assert (box.lat_min, box.lat_max, box.lon_min, box.lon_max) == (35, 70, -10, 40)
    assert not box.is_global and REGIONS["global"].is_global
    assert resolve_region("box:-90,90,0,360").is_global
    with pytest.raises(DambenchInputError, match="Unknown region 'mars'.*tropics"):
        resolve_region("mars")
    with pytest.raises(DambenchInputError, match="four numbers"):
        resolve_region("box:35,70,-10")
    with pytest.raises(DambenchInputError, match="four numbers"):
        resolve_region("box:a,b,c,d")
    with pytest.raises(DambenchInputError, match="lat_min <= lat_max"):
        resolve_region("box:70,35,0,10")
    with pytest.raises(DambenchInputError, match="no grid point"):
        region_weights("box:0.2,0.4,0,10", LAT, LON)  # between two 1.5-degree rows


def test_evaluate_in_a_region_scores_only_its_points():
    truth = smooth_field(3, ["t2m", "z500"], seed=1).astype("float64")
    noise = smooth_field(3, ["t2m", "z500"], seed=2).astype("float64")
    pred = truth + 0.1 * (noise - noise.mean(("latitude", "longitude")))
    stats = channel_stats(truth)
    result = evaluate(pred, truth, region="tropics", stats=stats)
    assert "spec_div" not in result["metric"].values.tolist()  # global-only: left out
    assert result.attrs["metrics_left_out"] == "spec_div,spec_res"
    assert result.attrs["region"] == "tropics"
    rows = np.abs(LAT) <= 20
    err = (pred - truth).values[:, :, rows]
    np.testing.assert_allclose(
        result.to_dataarray("channel").sel(metric="mse").values,
        (err**2).mean(axis=(0, 2, 3)),
        rtol=1e-10,
    )
    cos = np.cos(np.deg2rad(LAT[rows]))[None, None, :, None]
    expected_rmse = np.sqrt((cos * err**2).sum(axis=(2, 3)) / (cos.sum() * LON.size)).mean(axis=0)
    np.testing.assert_allclose(
        result.to_dataarray("channel").sel(metric="rmse").values, expected_rmse, rtol=1e-10
    )
    # the globe as a region and as a box covering everything equal the default evaluation
    default = evaluate(pred, truth, stats=stats)
    for spec in ("global", "box:-90,90,0,360"):
        xr.testing.assert_allclose(evaluate(pred, truth, region=spec, stats=stats), default)
    with pytest.raises(DambenchInputError, match="whole globe only"):
        evaluate(pred, truth, region="arctic", metrics=["spec_div"])


def test_period_labels_months_and_seasons():
    times = pd.date_range("2023-01-01", periods=12, freq="MS") + pd.Timedelta(days=14)
    months = period_labels(times.values, by="month")
    assert months.values.tolist() == list(PERIODS["month"])
    seasons = period_labels(times.values, by="season").values.tolist()
    assert seasons == ["DJF"] * 2 + ["MAM"] * 3 + ["JJA"] * 3 + ["SON"] * 3 + ["DJF"]
    field = smooth_field(3, ["t2m"], start="2024-02-28")
    labels = period_labels(field.time, by="season")
    assert labels.dims == ("time",) and labels.name == "period" and labels.attrs["by"] == "season"
    assert labels.values.tolist() == ["DJF", "DJF", "MAM"]  # 2024 is a leap year
    assert (labels.time == field.time).all()
    assert period_labels(field.time, by="all").values.tolist() == ["all"] * 3
    with pytest.raises(DambenchInputError, match="Unknown period breakdown"):
        period_labels(field.time, by="week")
    with pytest.raises(DambenchInputError, match="needs datetimes"):
        period_labels(np.arange(3.0))


def _stand_in_mask(lat=LAT, lon=LON) -> xr.DataArray:
    """A stand-in land fraction (not real geography): land east of 180 E, a fraction ramp
    near the equator."""
    fraction = np.broadcast_to((lon >= 180.0).astype(np.float64), (lat.size, lon.size)).copy()
    fraction[np.abs(lat) < 3] *= 0.4
    return xr.DataArray(fraction, dims=("latitude", "longitude"), coords={"latitude": lat,
                        "longitude": lon})  # fmt: skip


def test_open_land_sea_mask_reads_netcdf_and_zarr_in_any_naming(tmp_path):
    from dambench.regions import open_land_sea_mask

    mask = _stand_in_mask()
    ascending = mask.rename(latitude="lat", longitude="lon").sortby("lat").expand_dims(time=1)
    ascending.to_dataset(name="lsm").to_netcdf(tmp_path / "lsm.nc")
    mask.to_dataset(name="land_sea_mask").to_zarr(tmp_path / "lsm.zarr")
    for path in (tmp_path / "lsm.nc", tmp_path / "lsm.zarr"):
        read = open_land_sea_mask(path)
        assert set(read.dims) == {"latitude", "longitude"}
        weights = region_weights("land", LAT, LON, land_sea_mask=read)
        np.testing.assert_array_equal(weights.values, (mask.values > 0.5).astype(float))
    mask.to_dataset(name="elevation").assign(other=mask).to_netcdf(tmp_path / "bad.nc")
    with pytest.raises(DambenchInputError, match="holds no land-sea mask variable: expected"):
        open_land_sea_mask(tmp_path / "bad.nc")
    (mask * 100).to_dataset(name="lsm").to_netcdf(tmp_path / "percent.nc")
    with pytest.raises(DambenchInputError, match=r"land fraction in \[0, 1\].*found values in"):
        open_land_sea_mask(tmp_path / "percent.nc")


def test_a_mask_attached_to_a_region_serves_any_scorer():
    from dambench.regions import with_land_sea_mask

    mask = _stand_in_mask()
    land, tropics = with_land_sea_mask([REGIONS["land"], REGIONS["tropics"]], mask)
    assert land == REGIONS["land"] and hash(land) == hash(REGIONS["land"])  # same identity
    assert tropics is REGIONS["tropics"]
    np.testing.assert_array_equal(
        region_weights(land, LAT, LON).values,
        region_weights("land", LAT, LON, land_sea_mask=mask).values,
    )
    with pytest.raises(DambenchInputError, match="--land-sea-mask PATH"):
        region_weights(REGIONS["sea"], LAT, LON)
