import json
import sys

import numpy as np
import pytest
import xarray as xr

import dambench
from dambench import MissingDependencyError, channel_stats, metrics, spectral
from dambench.testing import mock_triplet, smooth_field

CHANNELS = ["u10", "t2m", "z500", "t850"]


@pytest.fixture(scope="module")
def triplet():
    return mock_triplet(3, CHANNELS, seed=4)


METRIC_FUNCTIONS = {
    "mse": metrics.mse,
    "mae": metrics.mae,
    "rmse": metrics.rmse,
    "bias": metrics.bias,
    "spec_div": spectral.spec_div,
    "spec_res": spectral.spec_res,
}


@pytest.mark.parametrize("name", sorted(METRIC_FUNCTIONS))
def test_metric_methods_equal_functions(triplet, name):
    func = METRIC_FUNCTIONS[name]
    expected = func(triplet["background"], triplet["target"])
    xr.testing.assert_identical(getattr(triplet.dambench, name)("background"), expected)
    xr.testing.assert_identical(getattr(triplet.dambench, name)(triplet["background"]), expected)
    xr.testing.assert_identical(
        getattr(triplet["target"].dambench, name)(triplet["background"]), expected
    )
    kwargs = {"sample_dim": None}
    xr.testing.assert_identical(
        getattr(triplet.dambench, name)("background", **kwargs),
        func(triplet["background"], triplet["target"], **kwargs),
    )


def test_evaluate_acc_crps_methods(triplet):
    stats = channel_stats(triplet["target"])
    xr.testing.assert_identical(
        triplet.dambench.evaluate("background", stats=stats),
        metrics.evaluate(triplet["background"], triplet["target"], stats=stats),
    )
    clim = triplet["target"].mean("time")
    xr.testing.assert_identical(
        triplet.dambench.acc("background", clim),
        metrics.acc(triplet["background"], triplet["target"], clim),
    )
    ens = xr.concat([triplet["background"], triplet["target"]], dim="member")
    xr.testing.assert_identical(
        triplet["target"].dambench.crps(ens), metrics.crps(ens, triplet["target"])
    )


def test_per_variable_dataset_truth_is_its_channels(triplet):
    per_variable = triplet["target"].dambench.from_channels()
    prediction = triplet["background"].dambench.from_channels()
    xr.testing.assert_allclose(
        per_variable.dambench.rmse(prediction),
        metrics.rmse(triplet["background"], triplet["target"]),
    )


def test_structure_methods_equal_functions(triplet):
    target = triplet["target"]
    xr.testing.assert_identical(target.dambench.from_channels(), dambench.from_channels(target))
    per_variable = target.dambench.from_channels()
    xr.testing.assert_identical(
        per_variable.dambench.to_channels(), dambench.to_channels(per_variable)
    )
    flipped = target.isel(latitude=slice(None, None, -1))
    xr.testing.assert_identical(flipped.dambench.to_canonical(), dambench.to_canonical(flipped))
    assert triplet.dambench.validate() is triplet
    xr.testing.assert_identical(
        target.dambench.lat_weights("area"), dambench.lat_weights(target.latitude, "area")
    )


def test_observe_methods(triplet):
    target = triplet["target"]
    xr.testing.assert_identical(target.dambench.observe(seed=3), dambench.observe(target, seed=3))
    redrawn = triplet.dambench.observe(seed=3, pattern="columns")
    xr.testing.assert_identical(
        redrawn["observation"], dambench.observe(target, seed=3, pattern="columns")
    )
    xr.testing.assert_identical(redrawn["target"], target)


def test_normalize_round_trip_and_methods(triplet):
    stats = channel_stats(triplet["target"])
    normed = triplet.dambench.normalize(stats)
    xr.testing.assert_identical(
        normed["background"], dambench.normalize(triplet["background"], stats)
    )
    assert abs(float(normed["target"].mean(["time", "latitude", "longitude"]).max())) < 1e-4
    assert np.allclose(normed["target"].std(["time", "latitude", "longitude"]), 1, atol=1e-4)
    assert set(normed["target"]["units"].values.tolist()) == {"1"}
    back = normed.dambench.denormalize(stats)
    xr.testing.assert_allclose(back["target"], triplet["target"], rtol=1e-5)
    assert back["target"]["units"].values.tolist() == triplet["target"]["units"].values.tolist()
    # NaNs of the observation survive
    assert (normed["observation"].isnull() == triplet["observation"].isnull()).all()
    # without stats the accessor uses the recorded train statistics, never the object's own
    recorded = triplet.assign_attrs(normalization=_normalization_attrs(stats))
    xr.testing.assert_identical(
        recorded.dambench.normalize()["target"], dambench.normalize(triplet["target"], stats)
    )
    with pytest.raises(dambench.DambenchInputError, match="stats_from_attrs"):
        triplet.dambench.normalize()
    with pytest.raises(dambench.DambenchInputError, match="lack channels"):
        dambench.normalize(triplet["target"], stats.isel(channel=[0]))


def _normalization_attrs(stats):
    """The ``normalization`` attribute a built store records (read by ``stats_from_attrs``)."""
    recorded = {
        "split": "train",
        "channels": stats["channel"].values.tolist(),
        "mean": stats["mean"].values.tolist(),
        "std": stats["std"].values.tolist(),
    }
    return json.dumps(recorded)


def test_to_torch_shares_memory_and_orders_dims(triplet):
    torch = pytest.importorskip("torch")
    target = triplet["target"].load()
    tensor = target.dambench.to_torch()
    assert tuple(tensor.shape) == target.shape and tensor.dtype == torch.float32
    assert np.shares_memory(tensor.numpy(), target.values)
    transposed = target.transpose("latitude", "longitude", "time", "channel")
    assert torch.equal(transposed.dambench.to_torch(), tensor)
    tensors = triplet.dambench.to_torch(dtype=torch.float64)
    assert set(tensors) == {"target", "background", "observation"}
    assert tensors["observation"].dtype == torch.float64


def test_to_torch_without_torch_names_the_extra(triplet, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match=r"dambench\[torch\]"):
        triplet["target"].dambench.to_torch()


def test_repr_golden(triplet):
    expected = (
        "<dambench accessor on Dataset (triplet: target, background, observation)>\n"
        "dims: time=3, channel=4, latitude=121, longitude=240\n"
        "channels: 4 (u10, t2m, z500, t850)"
    )
    assert repr(triplet.dambench) == expected
    full = smooth_field(1)
    assert repr(full.dambench) == (
        "<dambench accessor on DataArray>\n"
        "dims: time=1, channel=69, latitude=121, longitude=240\n"
        "channels: 69 (u10, v10, t2m, msl, z50, z100, ...)"
    )


def test_accessor_is_stateless(triplet):
    accessor = triplet.dambench
    assert vars(accessor) == {"_obj": triplet}
