"""One reading of schema variables for every reader: names, units, whole-hPa levels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from dambench.backgrounds import ForecastArchive
from dambench.exceptions import DambenchSchemaError
from dambench.sources.era5 import open_era5
from dambench.sources.lexicon import WB2, schema_variables
from dambench.units import canonical_units, same_units

LAT = np.linspace(90.0, -90.0, 7)
LON = np.arange(0.0, 360.0, 60.0)


def _geopotential(levels, forecast=False):
    """``geopotential`` on ``levels`` (float32 hPa), value = 10 x level, in WB2 layout; with a
    ``prediction_timedelta`` dim when ``forecast``."""
    levels = np.asarray(levels, np.float32)
    dims = ("time", "level", "latitude", "longitude")
    shape = (1, levels.size, LAT.size, LON.size)
    values = np.broadcast_to(10.0 * levels.astype(np.float64)[None, :, None, None], shape)
    coords = {
        "time": [np.datetime64("2020-01-01")],
        "level": levels,
        "latitude": LAT,
        "longitude": LON,
    }
    if forecast:
        dims = ("time", "prediction_timedelta", *dims[1:])
        values = values[:, None]
        coords["prediction_timedelta"] = [np.timedelta64(24, "h")]
    field = xr.DataArray(values.copy(), dims=dims, coords=coords, attrs={"units": "m**2 s**-2"})
    return xr.Dataset({WB2["z"]: field})


def test_float32_levels_read_the_same_in_both_readers():
    """849.99994 hPa (float32 from Pa) is 850 for the ERA5 reader and the forecast archive alike;
    the ERA5 reader used to truncate it to 849 and lose z850."""
    levels = [500.0, np.nextafter(np.float32(850.0), np.float32(0.0))]
    assert levels[1] < 850
    era5 = open_era5(_geopotential(levels), channels=["z500", "z850"], grid=None)
    assert era5["channel"].values.tolist() == ["z500", "z850"]
    np.testing.assert_allclose(era5.sel(channel="z850").values, 8500.0, rtol=1e-6)
    archive = ForecastArchive(_geopotential(levels, forecast=True), grid=None)
    valid = pd.Timestamp("2020-01-02")
    background = archive.at(valid)
    assert background["channel"].values.tolist() == ["z500", "z850"]
    np.testing.assert_array_equal(background.values[0], era5.values[0])


@pytest.mark.parametrize("forecast", [False, True], ids=["era5", "archive"])
def test_a_level_that_is_not_whole_hpa_is_refused_not_relabelled(forecast):
    """850.4 hPa is not a schema level: the archive used to round it to 850, the ERA5 reader to
    truncate it; both now refuse it."""
    ds = _geopotential([500.0, 850.4], forecast=forecast)
    with pytest.raises(DambenchSchemaError, match=r"levels \[850\.4\d*\] that are not whole hPa"):
        if forecast:
            ForecastArchive(ds, grid=None)
        else:
            open_era5(ds, grid=None)


def test_schema_variables_names_what_is_missing():
    ds = _geopotential([500.0])
    with pytest.raises(DambenchSchemaError, match=r"lacks levels \[850\] hPa"):
        schema_variables(ds, "src", channels=["z850"])
    with pytest.raises(DambenchSchemaError, match=r"missing variables \['t'\]"):
        schema_variables(ds, "src", channels=["t850"])
    bad = ds.copy()
    bad[WB2["z"]].attrs["units"] = "m"
    with pytest.raises(DambenchSchemaError, match="has units 'm'; expected 'm2 s-2'"):
        schema_variables(bad, "src")
    with pytest.raises(DambenchSchemaError, match="no schema variables"):
        schema_variables(ds.rename({WB2["z"]: "sst"}), "src")


@pytest.mark.parametrize(
    ("spellings", "canonical"),
    [
        (
            [
                "mm/day",
                "mm/d",
                "mm day-1",
                "mm d-1",
                "mm day**-1",
                "mm day^-1",
                "mm.day-1",
                "mm/24h",
            ],
            "mm day-1",
        ),
        (["W m-2", "W/m^2", "w/m2", "w m**-2", "W m^-2", "W.m-2", "w/m**2"], "W m-2"),
    ],
    ids=["cpc", "olr"],
)
def test_cpc_and_olr_spellings_go_through_dambench_units(spellings, canonical):
    for spelling in spellings:
        assert canonical_units(spelling) == canonical, spelling
    assert not same_units("mm", "mm/day") and not same_units("K", "W m-2")
    assert not same_units(None, "W m-2")
