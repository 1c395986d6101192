"""Persistence on the real (irregular) ERA5 sample, climatology on a synthetic field with a known
answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from dambench import schema
from dambench.backgrounds import Background, Climatology, Persistence, day_slot
from dambench.channels import channel_coords
from dambench.exceptions import DambenchInputError, DambenchSchemaError
from dambench.grid import Grid

# --- persistence ------------------------------------------------------------------------------


def test_persistence_three_steps_on_the_era5_sample(era5_sample_target):
    target = era5_sample_target
    times = pd.DatetimeIndex(target.time.values)
    assert set(np.diff(times) / pd.Timedelta(hours=1)) == {7.0, 8.0}  # irregular, ~7 h apart
    persistence = Persistence(target, lag=3)
    assert isinstance(persistence, Background)
    bg = persistence.at(times[3:])
    assert bg.dims == schema.CANONICAL_DIMS and bg.name == "background"
    np.testing.assert_array_equal(bg.values, target.values[:-3])
    np.testing.assert_array_equal(bg.time.values, times[3:].values)
    np.testing.assert_array_equal(bg.init_time.values, times[:-3].values)
    leads = (times[3:] - times[:-3]) / pd.Timedelta(hours=1)
    assert bg.attrs["method"] == "persistence" and bg.attrs["lag_steps"] == 3
    assert bg.attrs["lead_hours"] == np.median(leads)
    assert (bg.attrs["lead_hours_min"], bg.attrs["lead_hours_max"]) == (leads.min(), leads.max())
    xr.testing.assert_identical(bg.channel, target.channel)


def test_persistence_duration_lag_with_tolerance(era5_sample_target):
    target = era5_sample_target
    times = pd.DatetimeIndex(target.time.values)
    # 3 steps are 21 or 22 h, so t - 22 h is within 1 h of the time 3 steps back (and 6 h or more
    # from any other): the same background as lag=3 steps.
    by_duration = Persistence(target, lag="22h", tolerance="1h").at(times[3:])
    by_steps = Persistence(target, lag=3).at(times[3:])
    np.testing.assert_array_equal(by_duration.values, by_steps.values)
    np.testing.assert_array_equal(by_duration.init_time.values, by_steps.init_time.values)
    assert by_duration.attrs["lag_hours"] == 22.0 and by_duration.attrs["tolerance_hours"] == 1.0
    # exact by default: t - 22 h exists only where the 3 steps sum to 22 h
    exact = [t for t in times[3:] if t - pd.Timedelta("22h") in times]
    bg = Persistence(target, lag=pd.Timedelta("22h")).at(exact)
    np.testing.assert_array_equal(
        bg.values, target.sel(time=[t - pd.Timedelta("22h") for t in exact]).values
    )
    inexact = [t for t in times[3:] if t not in exact][:1]
    with pytest.raises(DambenchInputError, match=r"no field time exactly at \["):
        Persistence(target, lag="22h").at(inexact)


def _hourly_field(hours: list[int]) -> xr.DataArray:
    grid = Grid(30.0)
    times = pd.Timestamp("2024-01-01") + pd.to_timedelta(hours, unit="h")
    data = np.broadcast_to(
        np.array(hours, dtype=np.float32)[:, None, None, None], (len(hours), 1, *grid.shape)
    )
    return xr.DataArray(
        data,
        dims=schema.CANONICAL_DIMS,
        coords={"time": times, **channel_coords(["t2m"]), **grid.coords()},
    )


def test_persistence_nearest_rule_prefers_the_earlier_time_on_ties():
    field = _hourly_field([0, 2, 4, 6])
    # t = 4 h, lag 3 h: wanted 1 h, equally near 0 h and 2 h -> 0 h (never the later one)
    bg = Persistence(field, lag="3h", tolerance="1h").at(["2024-01-01T04", "2024-01-01T06"])
    assert bg.values[:, 0, 0, 0].tolist() == [0.0, 2.0]
    # valid times need not be field times for a duration lag
    assert Persistence(field, lag="3h").at("2024-01-01T05:00").values[0, 0, 0, 0] == 2.0
    with pytest.raises(DambenchInputError, match=r"within 0 days 00:30:00 at \[2024-01-01 03:00\]"):
        Persistence(field, lag="3h", tolerance="30min").at("2024-01-01T06")


def test_persistence_errors():
    field = _hourly_field([0, 2, 4, 6])
    with pytest.raises(DambenchInputError, match=r"No field time 2 steps before \[2024-01-01 02"):
        Persistence(field, lag=2).at(["2024-01-01T02", "2024-01-01T06"])
    with pytest.raises(
        DambenchInputError,
        match=r"valid time to be a time of the field; missing "
        r"\[2024-01-01 05:00\]",
    ):
        Persistence(field, lag=1).at("2024-01-01T05")
    with pytest.raises(DambenchInputError, match="smaller than lag"):
        Persistence(field, lag="2h", tolerance="2h")
    with pytest.raises(DambenchInputError, match="bare number"):
        Persistence(field, lag=1.5)
    with pytest.raises(DambenchInputError, match="must be >= 1"):
        Persistence(field, lag=0)
    with pytest.raises(DambenchInputError, match="tolerance applies to duration lags only"):
        Persistence(field, lag=1, tolerance="1h")
    with pytest.raises(DambenchSchemaError, match="unique and increasing"):
        Persistence(field.isel(time=[1, 0]))
    with pytest.raises(DambenchInputError, match="Duplicate times"):
        Persistence(field).at(["2024-01-01T02", "2024-01-01T02"])


def test_persistence_as_a_source_selects_channels(era5_sample_target):
    target = era5_sample_target
    out = Persistence(target, lag=1)(target.time[1:3], channels=["t2m"])
    assert out.channel.values.tolist() == ["t2m"]
    np.testing.assert_array_equal(out.values, target.sel(channel=["t2m"]).values[:2])


# --- climatology ------------------------------------------------------------------------------

YEAR_OFFSET = {2000: 1.5, 2001: -0.5, 2002: 0.5, 2003: -1.5}
"""Added to each training year; they sum to 0, so a 4-year mean of a calendar day is the cycle."""
AMPLITUDE = np.array([10.0, 500.0])  # t2m (K), msl (Pa)
GRID = Grid(30.0)


def _cycle(slot: np.ndarray) -> np.ndarray:
    return np.cos(2 * np.pi * np.asarray(slot) / 366)


@pytest.fixture(scope="module")
def synthetic():
    """Daily 00 UTC, 2000-2003 (2000 is a leap year): value = offset(year) + amplitude *
    cos(2 pi slot / 366) + a fixed spatial pattern, slot = calendar day 1..366."""
    times = pd.date_range("2000-01-01", "2003-12-31", freq="D")
    slots = day_slot(times)
    offset = np.array([YEAR_OFFSET[y] for y in times.year])
    pattern = np.cos(np.deg2rad(GRID.latitude))[:, None] + 0 * GRID.longitude[None, :]
    values = (
        offset[:, None, None, None]
        + AMPLITUDE[None, :, None, None] * _cycle(slots)[:, None, None, None]
        + pattern[None, None]
    )
    field = xr.DataArray(
        values,
        dims=schema.CANONICAL_DIMS,
        coords={"time": times, **channel_coords(["t2m", "msl"]), **GRID.coords()},
        name="target",
    )
    return field, pattern


def test_day_slot_is_the_calendar_day_of_a_leap_year():
    assert day_slot(
        ["2023-03-01", "2024-03-01", "2024-02-29", "2023-12-31", "2024-01-01T18"]
    ).tolist() == [61, 61, 60, 366, 1]


def test_climatology_recovers_the_cycle(synthetic):
    field, pattern = synthetic
    clim = Climatology(field)
    assert isinstance(clim, Background)
    times = pd.to_datetime(["2005-03-10", "2006-07-01", "2007-12-31"])
    bg = clim.at(times)
    expected = AMPLITUDE[None, :, None, None] * _cycle(day_slot(times))[:, None, None, None]
    np.testing.assert_allclose(bg.values, expected + pattern, atol=1e-9)
    assert bg.attrs["method"] == "climatology" and "lead_hours" not in bg.attrs
    assert "init_time" not in bg.coords and bg.attrs["training_period"] == "2000-01-01/2003-12-31"
    # 29 February is served by the one leap year (offset +1.5)
    feb29 = clim.at("2004-02-29")
    np.testing.assert_allclose(
        feb29.values[0], 1.5 + AMPLITUDE[:, None, None] * _cycle(60) + pattern, atol=1e-9
    )
    assert int(clim.counts.sel(dayofyear=60)) == 1 and int(clim.counts.sel(dayofyear=61)) == 4


def test_climatology_period_and_window(synthetic):
    field, pattern = synthetic
    no_leap = Climatology(field, period=("2001-01-01", "2003-12-31"))
    with pytest.raises(DambenchInputError, match=r"no training sample .* \[2004-02-29 00:00\]"):
        no_leap.at("2004-02-29")
    smooth = Climatology(field, period=("2001-01-01", "2003-12-31"), window_days=3)
    # slots 59 and 61 from 2001-2003: mean of offsets -0.5, 0.5, -1.5 is -0.5
    expected = -0.5 + AMPLITUDE[:, None, None] * (_cycle(59) + _cycle(61)) / 2 + pattern
    np.testing.assert_allclose(smooth.at("2004-02-29").values[0], expected, atol=1e-9)


def test_climatology_window_matches_a_direct_mean(synthetic):
    field, _ = synthetic
    window = 31
    clim = Climatology(field, period="train", window_days=window)  # train: 2000-2022
    times = pd.to_datetime(["2010-01-03", "2010-06-15", "2010-12-30"])
    bg = clim.at(times)
    train_slots = day_slot(field.time.values)
    for i, slot in enumerate(day_slot(times)):
        distance = np.abs(train_slots - slot)
        near = np.minimum(distance, 366 - distance) <= window // 2  # wraps over the new year
        direct = field.values[near].mean(axis=0)
        np.testing.assert_allclose(bg.values[i], direct, rtol=1e-12)


def test_climatology_is_lazy_on_dask_and_agrees(synthetic):
    pytest.importorskip("dask")
    field, _ = synthetic
    lazy = Climatology(field.chunk(time=365), window_days=5)
    assert lazy.climatology.chunks is not None
    eager = Climatology(field, window_days=5)
    xr.testing.assert_allclose(lazy.at("2004-05-05").compute(), eager.at("2004-05-05"))


def test_climatology_errors(synthetic):
    field, _ = synthetic
    with pytest.raises(DambenchInputError, match="window_days=4 must be an odd integer"):
        Climatology(field, window_days=4)
    with pytest.raises(DambenchInputError, match="No field time in the training period"):
        Climatology(field, period=("2010-01-01", "2010-12-31"))
    with pytest.raises(DambenchInputError, match="Unknown period='spring'"):
        Climatology(field, period="spring")
    with pytest.raises(DambenchSchemaError, match="needs dims"):
        Climatology(field.isel(channel=0))
