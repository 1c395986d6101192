import numpy as np
import pytest
import xarray as xr

from dambench import DambenchSchemaError, from_channels, schema, to_channels
from dambench.testing import smooth_field


def test_round_trip_all_channels_exact():
    field = smooth_field(2)
    per_variable = from_channels(field)
    assert set(per_variable.data_vars) == set(schema.VARIABLES)
    assert per_variable["z"].dims == ("time", "level", "latitude", "longitude")
    assert per_variable["t2m"].dims == ("time", "latitude", "longitude")
    assert per_variable["level"].values.tolist() == list(schema.LEVELS_HPA)
    assert per_variable["q"].attrs["units"] == "kg kg-1"
    back = to_channels(per_variable)
    xr.testing.assert_identical(back.rename(field.name), field)


def test_values_land_in_the_right_variable_and_level():
    field = smooth_field(1)
    per_variable = from_channels(field)
    np.testing.assert_array_equal(
        per_variable["t"].sel(level=850).values, field.sel(channel="t850").values
    )
    np.testing.assert_array_equal(per_variable["msl"].values, field.sel(channel="msl").values)


def test_round_trip_ragged_subset_exact():
    channels = ["t2m", "z500", "z850", "t850"]
    field = smooth_field(1, channels)
    per_variable = from_channels(field)
    # z and t share the level dim: t at 500 hPa does not exist and is NaN
    assert per_variable["t"].sel(level=500).isnull().all()
    back = to_channels(per_variable)
    assert back.channel.values.tolist() == channels
    xr.testing.assert_identical(back.rename(field.name), field)


def test_to_channels_selects_and_reports_missing():
    per_variable = from_channels(smooth_field(1, ["u10", "z500", "z850"]))
    assert to_channels(per_variable, ["z850"]).channel.values.tolist() == ["z850"]
    with pytest.raises(DambenchSchemaError, match=r"Missing channels \['t850'\]"):
        to_channels(per_variable, ["z500", "t850"])
    with pytest.raises(DambenchSchemaError, match="Unknown channel"):
        to_channels(per_variable, ["z501"])
    with pytest.raises(DambenchSchemaError, match="schema order"):
        to_channels(per_variable, ["z850", "z500"])


def test_to_channels_ignores_non_schema_variables_and_is_lazy():
    per_variable = from_channels(smooth_field(2, ["u10", "t2m"])).chunk({"time": 1})
    per_variable["tp"] = per_variable["t2m"] * 0
    stacked = to_channels(per_variable)
    assert stacked.channel.values.tolist() == ["u10", "t2m"]
    assert stacked.chunks is not None
    with pytest.raises(DambenchSchemaError, match="No schema channels"):
        to_channels(per_variable[["tp"]])
