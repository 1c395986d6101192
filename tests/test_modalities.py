"""dambench.modalities: the schema's modality table, transforms into model space, statistics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from dambench import schema
from dambench.exceptions import DambenchInputError, DambenchSchemaError
from dambench.modalities import (
    ModalityStatsWarning,
    check_modality_units,
    from_model_space,
    modality_moments,
    modality_stats,
    modality_stats_from_attrs,
    names_for_groups,
    resolve_modality_stats,
    to_model_space,
)


def _stats(**entries):
    """Statistics Dataset with the schema's transforms: name=(mean, std)."""
    names = list(entries)
    return xr.Dataset(
        {
            "mean": ("modality", [entries[n][0] for n in names]),
            "std": ("modality", [entries[n][1] for n in names]),
        },
        coords={
            "modality": names,
            "transform": ("modality", [schema.MODALITIES[n].transform for n in names]),
        },
    )


STATS = _stats(precip=(0.7, 1.1), olr=(240.0, 30.0))


def test_the_table_is_the_one_vocabulary():
    assert list(schema.MODALITIES) == ["precip", "precip_gauges", "olr"]
    assert schema.MODALITY_GROUPS == ("precip", "olr")
    assert {info.transform for info in schema.MODALITIES.values()} <= set(
        schema.MODALITY_TRANSFORMS
    )
    assert names_for_groups(["olr", "precip"]) == ["precip", "precip_gauges", "olr"]
    assert names_for_groups(["olr"]) == ["olr"]
    with pytest.raises(DambenchInputError, match="Unknown modality groups"):
        names_for_groups(["gauges"])


def test_model_space_golden_values():
    # precip: (log1p(x) - 0.7) / 1.1; x = e - 1 gives log1p = 1 exactly
    x = np.array([0.0, np.e - 1, np.nan])
    np.testing.assert_allclose(
        to_model_space(x, "precip", STATS), [-0.7 / 1.1, 0.3 / 1.1, np.nan], rtol=1e-12
    )
    # OLR: a plain z-score; 270 W m-2 is one std above 240
    np.testing.assert_allclose(to_model_space(np.array([270.0]), "olr", STATS), [1.0])
    # gauge counts: log1p, no z-score, so no statistics are needed
    np.testing.assert_allclose(
        to_model_space(np.array([0.0, 1.0, 3.0]), "precip_gauges"), [0.0, np.log(2.0), np.log(4.0)]
    )


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(list(schema.MODALITIES)),
    values=st.lists(st.floats(0.0, 1500.0), min_size=1, max_size=20),
)
def test_transform_round_trips(name, values):
    x = np.asarray(values)
    back = from_model_space(to_model_space(x, name, STATS), name, STATS)
    np.testing.assert_allclose(back, x, rtol=1e-9, atol=1e-9)


def test_round_trip_on_xarray_keeps_nan():
    da = xr.DataArray([[0.0, np.nan], [12.5, 300.0]], dims=("latitude", "longitude"))
    out = from_model_space(to_model_space(da, "precip", STATS), "precip", STATS)
    xr.testing.assert_allclose(out, da)


def test_statistics_are_checked_before_use():
    with pytest.raises(DambenchInputError, match="needs its train-split statistics"):
        to_model_space(np.ones(2), "olr")
    wrong = STATS.assign_coords(transform=("modality", ["identity", "identity"]))
    with pytest.raises(DambenchInputError, match="transform 'identity'.*'log1p'"):
        to_model_space(np.ones(2), "precip", wrong)
    with pytest.raises(DambenchInputError, match="degenerate"):
        to_model_space(np.ones(2), "olr", _stats(olr=(250.0, 0.0)))
    with pytest.raises(DambenchInputError, match="Unknown modality 'gauges'"):
        to_model_space(np.ones(2), "gauges", STATS)


def _modality_dataset(n_time=150, seed=0):
    """precip and olr over n_time cycles of a 3 x 4 grid, a third of precip NaN; the first 100
    cycles are train."""
    rng = np.random.default_rng(seed)
    precip = rng.gamma(0.5, 8.0, (n_time, 3, 4))
    precip[rng.random(precip.shape) < 0.33] = np.nan
    olr = rng.normal(240.0, 35.0, (n_time, 3, 4))
    dims = schema.MODALITY_DIMS
    return xr.Dataset(
        {
            "precip": (dims, precip, {"units": "mm d-1"}),
            "olr": (dims, olr, {"units": "W/m^2"}),
        },
        coords={
            "time": pd.date_range("2000-01-01", periods=n_time),
            "split": ("time", ["train"] * 100 + ["test"] * (n_time - 100)),
        },
    )


def test_moments_streamed_over_blocks_equal_numpy():
    ds = _modality_dataset()
    entry = modality_moments(ds["precip"], "precip")  # 150 cycles: blocks of 64, 64, 22
    values = np.log1p(ds["precip"].values)
    values = values[np.isfinite(values)]
    assert entry["transform"] == "log1p" and entry["standardize"] is True
    assert entry["n_finite"] == values.size
    assert entry["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert entry["std"] == pytest.approx(values.std(), rel=1e-12)
    empty = modality_moments(ds["precip"] * np.nan, "precip")
    assert empty["mean"] is None and empty["n_finite"] == 0


def test_stats_come_from_the_train_cycles_only():
    ds = _modality_dataset()
    stats = modality_stats(ds)
    train_olr = ds["olr"].values[:100]
    assert stats["modality"].values.tolist() == ["precip", "olr"]
    assert float(stats["mean"].sel(modality="olr")) == pytest.approx(train_olr.mean(), rel=1e-12)
    assert float(stats["std"].sel(modality="olr")) == pytest.approx(train_olr.std(), rel=1e-12)
    z = to_model_space(train_olr, "olr", stats)
    assert abs(z.mean()) < 1e-9 and z.std() == pytest.approx(1.0)
    with pytest.raises(DambenchInputError, match="no 'split' coordinate"):
        modality_stats(ds.drop_vars("split"))


def test_recorded_statistics_old_and_new():
    ds = _modality_dataset()
    ds.attrs["normalization"] = json.dumps(  # the integrity work stores attrs as JSON strings
        {
            "modalities": {
                "precip": {"transform": "log1p", "mean": 0.5, "std": 2.0},
                "olr": {"mean": 230.0, "std": 20.0},  # an older build: raw statistics
            }
        }
    )
    recorded = modality_stats_from_attrs(ds, ["precip", "olr"])
    assert recorded["mean"].values.tolist() == [0.5, 230.0]  # raw == transformed for identity
    ds.attrs["normalization"] = {"modalities": {"precip": {"mean": 3.1, "std": 7.6}}}
    assert modality_stats_from_attrs(ds, ["precip"]).sizes["modality"] == 0  # raw != log1p
    with pytest.warns(ModalityStatsWarning, match=r"\['precip'\].*once from its train"):
        resolved = resolve_modality_stats(ds, ["precip", "precip_gauges"])
    expected = np.log1p(ds["precip"].values[:100])
    expected = expected[np.isfinite(expected)]
    assert float(resolved["mean"].sel(modality="precip")) == pytest.approx(expected.mean())


def test_unreachable_train_split_is_refused():
    ds = _modality_dataset().isel(time=slice(100, None))  # test cycles only, no store behind
    with pytest.raises(DambenchInputError, match="modality_stats=dambench.modalities"):
        resolve_modality_stats(ds, ["olr"])
    assert resolve_modality_stats(ds, ["olr"], STATS)["mean"].values.tolist() == [240.0]
    with pytest.raises(DambenchInputError, match=r"modality_stats lack \['olr'\]"):
        resolve_modality_stats(ds, ["olr"], STATS.sel(modality=["precip"]))
    with pytest.raises(DambenchInputError, match="'transform' coordinate"):
        resolve_modality_stats(ds, ["olr"], STATS.drop_vars("transform"))


def test_units_go_through_dambench_units():
    ds = _modality_dataset()  # "mm d-1" and "W/m^2": the schema's units spelled otherwise
    check_modality_units(ds, ["precip", "olr", "precip_gauges"])
    ds["olr"].attrs["units"] = "K"
    with pytest.raises(DambenchSchemaError, match="'olr' has units 'K'; expected 'W m-2'"):
        check_modality_units(ds, ["olr"])
    del ds["precip"].attrs["units"]
    with pytest.raises(DambenchSchemaError, match="'precip' has units None"):
        check_modality_units(ds, ["precip"])
