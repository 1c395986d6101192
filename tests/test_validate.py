import numpy as np
import pytest
import xarray as xr

from dambench import DambenchSchemaError, to_canonical, validate
from dambench.testing import mock_triplet, smooth_field
from dambench.units import canonical_units


@pytest.fixture(scope="module")
def field():
    return smooth_field(3, ["u10", "t2m", "z500"])


def test_valid_objects_pass(field):
    assert validate(field) is field
    triplet = mock_triplet(2, ["t2m", "z500"])
    assert validate(triplet, check_values=True) is triplet
    validate(field.dambench.from_channels())


def test_wrong_grid_size(field):
    with pytest.raises(DambenchSchemaError, match=r"wrong grid size .*\(120, 240\)"):
        validate(field.isel(latitude=slice(0, 120)))


def test_wrong_spacing():
    coarse = smooth_field(1, ["t2m"]).isel(latitude=slice(0, 121))
    coarse = coarse.assign_coords(longitude=np.arange(240) * 1.25)
    with pytest.raises(DambenchSchemaError, match=r"wrong spacing \[1.25\]"):
        validate(coarse)


def test_south_to_north_latitude_says_to_canonical(field):
    flipped = field.isel(latitude=slice(None, None, -1))
    with pytest.raises(DambenchSchemaError, match="south to north.*to_canonical"):
        validate(flipped)
    validate(to_canonical(flipped))


def test_negative_longitudes(field):
    shifted = field.assign_coords(longitude=field.longitude - 180)
    with pytest.raises(DambenchSchemaError, match="negative"):
        validate(shifted)


def test_missing_channels(field):
    with pytest.raises(DambenchSchemaError, match=r"missing channels \['v10'\]"):
        validate(field, channels=["u10", "v10"])
    with pytest.raises(DambenchSchemaError, match="missing channels"):
        validate(field, channels="all")


def test_unknown_or_misordered_channels(field):
    with pytest.raises(DambenchSchemaError, match="schema order"):
        validate(field.isel(channel=[2, 0, 1]))
    renamed = field.assign_coords(channel=["u10", "t2m", "geopot500"])
    with pytest.raises(DambenchSchemaError, match="Unknown channel names"):
        validate(renamed)


def test_wrong_dims(field):
    with pytest.raises(DambenchSchemaError, match="wrong dim order"):
        validate(field.transpose("time", "channel", "longitude", "latitude"))
    with pytest.raises(DambenchSchemaError, match="wrong dim order"):
        validate(field.transpose("channel", "time", "latitude", "longitude"))
    with pytest.raises(DambenchSchemaError, match="found 'lat'"):
        validate(field.rename(latitude="lat"))


def test_unsorted_and_duplicate_times(field):
    with pytest.raises(DambenchSchemaError, match="not sorted"):
        validate(field.isel(time=[1, 0, 2]))
    with pytest.raises(DambenchSchemaError, match="duplicate times"):
        validate(field.isel(time=[0, 1, 1]))


def test_wrong_units(field):
    celsius = field.assign_coords(units=("channel", ["m s-1", "degC", "m2 s-2"]))
    with pytest.raises(DambenchSchemaError, match=r"wrong units \{'t2m': 'degC'\}"):
        validate(celsius)
    per_variable = field.dambench.from_channels()
    per_variable["z"].attrs["units"] = "m"
    with pytest.raises(DambenchSchemaError, match="wrong units"):
        validate(per_variable)
    # ERA5 spellings are accepted
    era5 = field.assign_coords(units=("channel", ["m s**-1", "K", "m**2 s**-2"]))
    validate(era5)


def test_nan_only_where_allowed():
    triplet = mock_triplet(1, ["t2m"])
    validate(triplet, check_values=True)  # observation has NaN: allowed
    broken = triplet.copy(deep=True)
    broken["background"][0, 0, 5, 5] = np.nan
    with pytest.raises(DambenchSchemaError, match=r"background: NaN values in channels \['t2m'\]"):
        validate(broken, check_values=True)


def test_dataset_without_spatial_fields():
    with pytest.raises(DambenchSchemaError, match="no data variable"):
        validate(xr.Dataset({"a": ("x", [1, 2])}))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("m s**-1", "m s-1"),
        ("m/s", "m s-1"),
        ("m**2 s**-2", "m2 s-2"),
        ("kg/kg", "kg kg-1"),
        ("kg kg**-1", "kg kg-1"),
        ("kelvin", "K"),
        ("K", "K"),
        ("Pa", "Pa"),
    ],
)
def test_units_spellings(given, expected):
    assert canonical_units(given) == expected


def test_check_values_accepts_dambench_datasets():
    """NaN marks an unobserved point in ``observation`` and an absent value in a modality."""
    from dambench.load import ensure_embedded, open_dataset

    ds = open_dataset(ensure_embedded(), split="test").load()
    assert ds["precip"].isnull().any() and ds["observation"].isnull().any()
    assert validate(ds, check_values=True) is ds
    broken = ds.copy(deep=True)
    broken["target"][0, 0, 5, 5] = np.nan
    with pytest.raises(DambenchSchemaError, match="target: NaN values"):
        validate(broken, check_values=True)
    with pytest.raises(DambenchSchemaError, match="precip: NaN values"):
        validate(ds, check_values=True, allow_nan=("observation",))
