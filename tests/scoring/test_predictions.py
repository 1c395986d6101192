"""Reading anyone's predictions: layouts, orientation, and loud refusals."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from dambench.exceptions import DambenchInputError, DambenchSchemaError
from dambench.scoring import evaluate_predictions, open_predictions
from dambench.scoring.predictions import check_against


def foreign_netcdf(ds: xr.Dataset, path, field: str = "background", **edits) -> str:
    """Write ``ds[field]`` the way a script that knows nothing of dambench would: one variable
    per channel, ``lat`` ascending, ``lon`` in -180..180, float64, units attributes."""
    out = {}
    for i, channel in enumerate(ds["channel"].values):
        values = ds[field].isel(channel=i).values.astype(np.float64)
        da = xr.DataArray(
            values,
            dims=("time", "lat", "lon"),
            coords={"time": ds.time.values, "lat": ds.latitude.values, "lon": ds.longitude.values},
            attrs={"units": str(ds["units"].values[i])},
        )
        da = da.sortby("lat").assign_coords(lon=((da.lon + 180) % 360) - 180).sortby("lon")
        out[str(channel)] = da
    data = xr.Dataset(out)
    for name, edit in edits.items():
        data = edit(data) if name == "transform" else data
    data.to_netcdf(path)
    return str(path)


def test_per_variable_netcdf_is_read_in_canonical_orientation(sample_test, tmp_path):
    path = foreign_netcdf(sample_test, tmp_path / "p.nc")
    predictions = open_predictions(path)
    check_against(predictions, sample_test)
    assert predictions.channels == tuple(sample_test.channel.values)
    time = sample_test.time.values[3]
    cycle = predictions.cycle(time)
    assert cycle.dims == ("channel", "latitude", "longitude")
    expected = sample_test["background"].sel(time=time)
    np.testing.assert_array_equal(cycle.values, expected.values.astype(np.float64))


def test_missing_and_extra_times_are_named(sample_test, tmp_path):
    short = foreign_netcdf(sample_test.isel(time=slice(1, None)), tmp_path / "short.nc")
    first = str(sample_test.time.values[0])[:10]
    with pytest.raises(DambenchInputError, match=f"1 cycles of the split are missing: {first}"):
        check_against(open_predictions(short), sample_test)
    shifted = sample_test.assign_coords(time=sample_test.time.values + np.timedelta64(6, "h"))
    path = foreign_netcdf(shifted, tmp_path / "shifted.nc")
    with pytest.raises(DambenchInputError, match="times are not cycles of the split"):
        check_against(open_predictions(path), sample_test)


def test_duplicated_times_wrong_units_and_wrong_grid_are_refused(sample_test, tmp_path):
    doubled = xr.concat([sample_test.isel(time=[0]), sample_test], dim="time")
    with pytest.raises(DambenchInputError, match="repeat times"):
        open_predictions(foreign_netcdf(doubled, tmp_path / "dup.nc"))
    path = tmp_path / "celsius.nc"
    foreign_netcdf(sample_test, path)
    celsius = xr.load_dataset(path)
    celsius["t2m"] = (celsius["t2m"] - 273.15).assign_attrs(units="degC")
    celsius.to_netcdf(tmp_path / "celsius2.nc")
    with pytest.raises(DambenchSchemaError, match="t2m: 'degC'"):
        open_predictions(tmp_path / "celsius2.nc")
    coarse = xr.load_dataset(path).isel(lat=slice(None, None, 2), lon=slice(None, None, 2))
    coarse.to_netcdf(tmp_path / "coarse.nc")
    with pytest.raises(DambenchSchemaError, match="regrid"):
        check_against(open_predictions(tmp_path / "coarse.nc"), sample_test)


def test_nan_is_an_error_unless_skipna(sample_folder, sample_test, tmp_path):
    path = tmp_path / "nan.nc"
    foreign_netcdf(sample_test, path)
    holed = xr.load_dataset(path)
    holed["t2m"][2, :60, :] = np.nan  # the southern half of one cycle is missing
    holed.to_netcdf(tmp_path / "holed.nc")
    with pytest.raises(DambenchInputError, match="holds NaN or Inf at .*'t2m': 14400"):
        evaluate_predictions(tmp_path / "holed.nc", sample_folder, n_resamples=50)
    report = evaluate_predictions(tmp_path / "holed.nc", sample_folder, skipna=True, n_resamples=50)
    assert report.summary["skipna"] is True
    assert np.isfinite(report.scores["value"]).all()


def test_stacked_store_with_members_is_found(sample_test, tmp_path):
    from dambench.scoring import PredictionWriter

    writer = PredictionWriter.like(
        sample_test, tmp_path / "ens.zarr", channels=["t2m"], members=3,
        attrs={"model": "toy", "seed": 4},
    )
    for time in sample_test.time.values:
        writer.write(time, np.zeros((3, 1, 121, 240)))
    predictions = open_predictions(tmp_path / "ens.zarr")
    assert (predictions.member_dim, predictions.n_members, predictions.channels) == (
        "member",
        3,
        ("t2m",),
    )
    assert predictions.cycle(sample_test.time.values[0]).dims == (
        "member",
        "channel",
        "latitude",
        "longitude",
    )
    with pytest.raises(DambenchInputError, match="members_dim='ens'"):
        open_predictions(tmp_path / "ens.zarr", members_dim="ens")


def test_writer_like_takes_the_datasets_cycles_grid_and_channels(sample_test, tmp_path):
    """``PredictionWriter.like``: the store it makes has the split's times, grid and channels
    (or the ``channels`` asked for), and what is written reads back in place."""
    from dambench.scoring import PredictionWriter

    writer = PredictionWriter.like(sample_test, tmp_path / "all.zarr", attrs={"model": "m"})
    time = sample_test.time.values[2]
    writer.write(time, sample_test["target"].sel(time=time).values)
    read = open_predictions(tmp_path / "all.zarr")
    np.testing.assert_array_equal(read.times.values, sample_test.time.values)
    assert list(read.channels) == [str(c) for c in sample_test.channel.values]
    np.testing.assert_array_equal(read.coords.latitude.values, sample_test.latitude.values)
    np.testing.assert_array_equal(read.coords.longitude.values, sample_test.longitude.values)
    np.testing.assert_array_equal(
        read.raw["analysis"].sel(time=time).values, sample_test["target"].sel(time=time).values
    )
    subset = PredictionWriter.like(sample_test, tmp_path / "t2m.zarr", channels=["t2m"])
    subset.write(time, sample_test["target"].sel(time=time, channel=["t2m"]).values)
    assert open_predictions(tmp_path / "t2m.zarr").channels == ("t2m",)
