import numpy as np
import pandas as pd
import pytest
import xarray as xr

from dambench import DambenchInputError
from dambench.sources.align import align, daily_cycles, split_cycles
from dambench.sources.era5 import open_era5


def test_cycles_and_splits():
    cycles = daily_cycles("2024-02-27", "2024-03-01")
    assert [str(c) for c in cycles] == [
        "2024-02-27 00:00:00",
        "2024-02-28 00:00:00",
        "2024-02-29 00:00:00",
        "2024-03-01 00:00:00",
    ]
    assert len(split_cycles("test")) == 366  # 2024 is a leap year
    assert len(split_cycles("validation")) == 365
    assert split_cycles("train")[0] == pd.Timestamp("2000-01-01")
    assert (
        len(split_cycles("train"))
        == (pd.Timestamp("2022-12-31") - pd.Timestamp("2000-01-01")).days + 1
    )
    with pytest.raises(DambenchInputError, match="Unknown split"):
        split_cycles("dev")


def test_align_real_sources(realdata):
    """ERA5 EDA (12-hourly, 2017-01-01/02), real OLR (daily 1979) on 2017 cycles."""
    era5 = open_era5(realdata / "era5" / "era5-levels-members.grib", channels=["t850"])
    olr = xr.open_dataset(realdata / "olr" / "olr_equatorial_1979.nc")["olr"]
    cycles = daily_cycles("2017-01-01", "2017-01-03")
    aligned, report = align(cycles, {"era5": (era5, "instant"), "olr": (olr, "daily")})
    assert report.missing["era5"] == [pd.Timestamp("2017-01-03")]
    assert len(report.missing["olr"]) == 3  # the OLR file covers 1979 only
    assert len(report.complete) == 0
    np.testing.assert_array_equal(
        aligned["era5"].isel(time=1).values, era5.sel(time="2017-01-02T00").values
    )
    assert aligned["era5"].isel(time=2).isnull().all()
    assert "era5: 1 missing: 2017-01-03 00:00" in str(report)


def test_daily_products_use_the_previous_day(realdata):
    olr = xr.open_dataset(realdata / "olr" / "olr_equatorial_1979.nc")["olr"]
    cycles = daily_cycles("1979-01-01", "1979-01-05")
    aligned, report = align(cycles, {"olr": (olr, "daily")})
    assert report.missing["olr"] == [pd.Timestamp("1979-01-01")]  # 1978-12-31 is not in the file
    np.testing.assert_array_equal(
        aligned["olr"].sel(time="1979-01-03").values, olr.sel(time="1979-01-02").values
    )
    same_day, _ = align(cycles, {"olr": (olr, "daily")}, lag_days=0)
    np.testing.assert_array_equal(
        same_day["olr"].sel(time="1979-01-03").values, olr.sel(time="1979-01-03").values
    )
    assert aligned["olr"].attrs["lag_days"] == 1


def test_bad_sources():
    field = xr.DataArray(np.zeros(2), dims="x")
    with pytest.raises(DambenchInputError, match="no time dim"):
        align(daily_cycles("2020-01-01", "2020-01-02"), {"a": (field, "instant")})
    twice = xr.DataArray(
        np.zeros(2),
        dims="time",
        coords={"time": pd.to_datetime(["2020-01-01T00", "2020-01-01T12"])},
    )
    with pytest.raises(DambenchInputError, match="several values on one day"):
        align(daily_cycles("2020-01-01", "2020-01-02"), {"a": (twice, "daily")})
