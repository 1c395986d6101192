"""ForecastArchive on real IFS GRIB forecasts and on a WeatherBench2-layout zarr."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from dambench import schema
from dambench.backgrounds import Background, ForecastArchive
from dambench.exceptions import DambenchInputError, DambenchSchemaError
from dambench.grid import CANONICAL_GRID
from dambench.regrid import regrid
from dambench.sources.base import open_dataset_any
from dambench.sources.lexicon import WB2

pytest.importorskip("cfgrib")
warnings.filterwarnings("ignore", message=".*decode.*")


@pytest.fixture(scope="module")
def ifs_file(realdata):
    return realdata / "ifs" / "multi_param_on_multi_dims.grib"


@pytest.fixture(scope="module")
def metview(realdata):
    folder = realdata / "ifs" / "metview_ds"
    return sorted((folder / "oper").glob("*.grib")), sorted((folder / "an").glob("*.grib"))


def _raw_channel(raw: xr.Dataset, channel: str, **sel) -> np.ndarray:
    """One channel straight from cfgrib's Dataset (GRIB variable and isobaricInhPa level)."""
    var, level = schema.CHANNEL_VARIABLE[channel], schema.CHANNEL_LEVEL[channel]
    field = raw[var].sel(**sel)
    if level is not None:
        field = field.sel(isobaricInhPa=level)
    return field.values


@pytest.mark.parametrize(
    ("lead_hours", "valid", "step"),
    [
        (24, "2018-04-05T12", "24h"),
        (12, "2018-04-05T00", "12h"),
    ],
)
def test_ifs_grib_lead_selection_equals_the_step_field(ifs_file, lead_hours, valid, step):
    archive = ForecastArchive(ifs_file, lead_hours=lead_hours, grid=None)
    assert isinstance(archive, Background)
    bg = archive.at(valid)
    raw = open_dataset_any(ifs_file)
    assert bg.dims == schema.CANONICAL_DIMS and bg.shape == (1, 12, 37, 72)
    assert pd.Timestamp(bg.time.values[0]) == pd.Timestamp(valid)
    assert pd.Timestamp(bg.init_time.values[0]) == pd.Timestamp("2018-04-04T12")
    assert pd.Timestamp(raw.valid_time.sel(step=step).values) == pd.Timestamp(valid)
    assert bg.attrs["lead_hours"] == lead_hours and bg.attrs["method"] == "forecast_archive"
    for channel in bg.channel.values:
        np.testing.assert_array_equal(
            bg.sel(channel=channel).values[0], _raw_channel(raw, channel, step=step)
        )
    t850 = bg.sel(channel="t850")
    assert 220 < float(t850.min()) and float(t850.max()) < 320


def test_ifs_grib_regridded_to_canonical(ifs_file):
    native = ForecastArchive(ifs_file, grid=None).at("2018-04-05T12")
    canonical = ForecastArchive(ifs_file).at("2018-04-05T12")
    assert canonical.shape == (1, 12, *CANONICAL_GRID.shape)
    xr.testing.assert_allclose(canonical, regrid(native, CANONICAL_GRID))
    assert canonical.channel.values.tolist()[:4] == ["z300", "z500", "z850", "z1000"]


def test_ifs_grib_missing_leads_and_inits_are_named(ifs_file):
    with pytest.raises(DambenchInputError, match=r"no 48 h lead.*\['0', '12', '24', '36'\]"):
        ForecastArchive(ifs_file, lead_hours=48).at("2018-04-06T12")
    archive = ForecastArchive(ifs_file, lead_hours=12, grid=None)
    with pytest.raises(
        DambenchInputError,
        match=r"missing initialisation times \[2018-04-05 00:00\].*valid at "
        r"\[2018-04-05 12:00\]",
    ):
        archive.at(["2018-04-05T00", "2018-04-05T12"])


def test_metview_forecast_against_verifying_analysis(metview):
    oper, an = metview
    forecast = ForecastArchive(oper, lead_hours=120, grid=None).at("2016-09-30T00")
    analysis = ForecastArchive(an, lead_hours=0, grid=None).at("2016-09-30T00")
    assert forecast.time.values[0] == analysis.time.values[0]
    assert pd.Timestamp(forecast.init_time.values[0]) == pd.Timestamp("2016-09-25T00")
    assert (
        forecast.channel.values.tolist()
        == analysis.channel.values.tolist()
        == ["u10", "v10", "msl", "u500", "u850", "v500", "v850", "t500", "t850"]
    )
    # the analysis archive returns exactly the file's field
    raw = open_dataset_any(an[[p.name for p in an].index("t_pl.grib")])
    expected = raw["t"].sel(time="2016-09-30T00", isobaricInhPa=850)  # lat 80 -> 20, lon -70..40
    expected = expected.assign_coords(longitude=expected.longitude % 360).sortby("longitude")
    np.testing.assert_array_equal(analysis.sel(channel="t850").values[0], expected.values)
    # a 5-day forecast misses the verifying analysis by a few kelvin
    rmse_t850 = float(np.sqrt(((forecast - analysis).sel(channel="t850") ** 2).mean()))
    assert 0.5 < rmse_t850 < 5.0
    # the step-0 field of the forecast file is the initial analysis (to GRIB packing precision)
    initial = ForecastArchive(oper, lead_hours=0, grid=None).at("2016-09-25T00")
    start = ForecastArchive(an, lead_hours=0, grid=None).at("2016-09-25T00")
    assert float(abs(initial - start).sel(channel="t850").max()) < 0.01


@pytest.fixture(scope="module")
def wb2_store(tmp_path_factory):
    """A WeatherBench2 forecast zarr: time = init, prediction_timedelta = lead, long names,
    (time, prediction_timedelta, level, longitude, latitude), latitude ascending, 1.5 degrees.

    Values encode their init and lead: t = 250 + init_day + lead_hours / 100 + level / 1000 +
    a fixed spatial pattern, so a selection can be checked against the formula."""
    inits = pd.date_range("2020-01-01", periods=3, freq="D")
    leads = pd.to_timedelta([0, 12, 24, 48], unit="h")
    levels = np.array([500, 850])
    lat = CANONICAL_GRID.latitude[::-1]
    lon = CANONICAL_GRID.longitude
    pattern = np.cos(np.deg2rad(lat))[None, :] * np.sin(np.deg2rad(lon))[:, None]  # (lon, lat)
    code = (
        np.arange(3)[:, None, None]
        + (leads / pd.Timedelta(hours=1)).to_numpy()[None, :, None] / 100
        + levels[None, None, :] / 1000
    )  # (init, lead, level)
    t = 250 + code[..., None, None] + pattern[None, None, None]
    t2m = 280 + code[:, :, 0, None, None] + pattern[None, None]
    coords = {
        "time": inits,
        "prediction_timedelta": leads,
        "level": levels,
        "longitude": lon,
        "latitude": lat,
    }
    ds = xr.Dataset(
        {
            WB2["t"]: (
                ("time", "prediction_timedelta", "level", "longitude", "latitude"),
                t.astype(np.float32),
                {"units": "K"},
            ),
            WB2["t2m"]: (
                ("time", "prediction_timedelta", "longitude", "latitude"),
                t2m.astype(np.float32),
                {"units": "K"},
            ),
        },
        coords=coords,
    )
    path = tmp_path_factory.mktemp("wb2") / "forecast.zarr"
    ds.to_zarr(path, consolidated=False)
    return path, pattern


def test_wb2_forecast_store(wb2_store):
    path, pattern = wb2_store
    archive = ForecastArchive(path)
    assert archive.leads.equals(pd.to_timedelta([0, 12, 24, 48], unit="h"))
    bg = archive.at(["2020-01-02", "2020-01-03"])
    assert bg.shape == (2, 3, *CANONICAL_GRID.shape)  # on the canonical grid: no regridding
    assert bg.channel.values.tolist() == ["t2m", "t500", "t850"]
    np.testing.assert_array_equal(
        bg.init_time.values, pd.to_datetime(["2020-01-01", "2020-01-02"]).values
    )
    flipped = pattern.T[::-1]  # (lat north -> south, lon)
    for i, init_day in enumerate([0, 1]):
        np.testing.assert_allclose(
            bg.sel(channel="t850").values[i], 250 + init_day + 0.24 + 0.85 + flipped, rtol=1e-6
        )
        np.testing.assert_allclose(
            bg.sel(channel="t2m").values[i], 280 + init_day + 0.24 + 0.5 + flipped, rtol=1e-6
        )
    assert bg.latitude.values[0] == 90 and bg.longitude.values[0] == 0
    two_days = ForecastArchive(path, lead_hours=48, channels=["t850"]).at("2020-01-03")
    np.testing.assert_allclose(two_days.values[0, 0], 250 + 0 + 0.48 + 0.85 + flipped, rtol=1e-6)


def test_wb2_errors(wb2_store):
    path, _ = wb2_store
    with pytest.raises(DambenchInputError, match=r"missing initialisation times \[2020-01-04"):
        ForecastArchive(path).at("2020-01-05")
    with pytest.raises(DambenchSchemaError, match=r"Missing channels \['z500'\]"):
        ForecastArchive(path, channels=["z500", "t850"])
    ds = xr.open_zarr(path, consolidated=False)
    ds[WB2["t"]].attrs["units"] = "degC"
    with pytest.raises(DambenchSchemaError, match="units 'degC'; expected 'K'"):
        ForecastArchive(ds)
    with pytest.raises(DambenchSchemaError, match="not a forecast layout"):
        ForecastArchive(ds.isel(prediction_timedelta=0, drop=True))
    with pytest.raises(DambenchInputError, match="lead_hours=-6"):
        ForecastArchive(ds, lead_hours=-6)
