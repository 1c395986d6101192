import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from dambench import (
    CANONICAL_GRID,
    DambenchInputError,
    acc,
    bias,
    channel_stats,
    crps,
    evaluate,
    format_table3,
    mae,
    mse,
    rmse,
    schema,
    table3_row,
)
from dambench.testing import smooth_field

LAT = CANONICAL_GRID.latitude


def cos_weights():
    w = np.cos(np.deg2rad(LAT))
    w[[0, -1]] = 0.0
    return w / w.mean()


@pytest.fixture(scope="module")
def pair():
    truth = smooth_field(4, ["u10", "t2m", "z500", "q700"], seed=10)
    pred = truth + 0.1 * smooth_field(
        4, ["u10", "t2m", "z500", "q700"], seed=11
    ).std() * xr.DataArray(np.random.default_rng(0).standard_normal(truth.shape), dims=truth.dims)
    return pred.astype("float32"), truth


def test_rmse_of_error_on_one_latitude_row():
    # error 1 on the 30N row only: per-sample weighted MSE = w(30N) * 240 / (121 * 240)
    truth = smooth_field(1, ["t2m"])
    pred = truth.copy()
    pred.loc[{"latitude": 30.0}] += 1.0
    w30 = cos_weights()[list(LAT).index(30.0)]
    expected = np.sqrt(w30 / 121)
    assert float(rmse(pred, truth).squeeze()) == pytest.approx(expected, rel=1e-6)
    # area weights give a slightly different but close value
    area = float(rmse(pred, truth, weights="area").squeeze())
    assert area == pytest.approx(expected, rel=1e-3) and area != pytest.approx(expected, rel=1e-9)


def test_rmse_constant_error_and_sample_aggregation():
    truth = smooth_field(2, ["t2m"]).astype("float64")
    offsets = xr.DataArray([1.0, 3.0], dims="time", coords={"time": truth.time})
    pred = truth + offsets
    # per sample: RMSE equals the offset (weights have mean 1)
    np.testing.assert_allclose(rmse(pred, truth, sample_dim=None).squeeze().values, [1.0, 3.0])
    assert float(rmse(pred, truth).squeeze()) == pytest.approx(2.0)  # mean of per-sample RMSE
    wb2 = rmse(pred, truth, sqrt_before_mean=False)
    assert float(wb2.squeeze()) == pytest.approx(np.sqrt(5.0))  # sqrt of mean MSE
    assert wb2.attrs["sqrt_before_mean"] == 0 and wb2.attrs["weights"] == "cos"


def test_mse_mae_bias_are_plain_grid_means(pair):
    pred, truth = pair
    err = pred.values.astype(np.float64) - truth.values
    np.testing.assert_allclose(
        mse(pred, truth, sample_dim=None).values, (err**2).mean(axis=(2, 3)), rtol=1e-5
    )
    np.testing.assert_allclose(mae(pred, truth).values, np.abs(err).mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(
        bias(pred, truth).values, err.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-9
    )
    all_channels = mse(pred, truth, dims=("channel", "latitude", "longitude"))
    assert float(all_channels) == pytest.approx((err**2).mean(), rel=1e-5)


def test_weighted_rmse_matches_numpy(pair):
    pred, truth = pair
    err = pred.values.astype(np.float64) - truth.values
    w = cos_weights()[None, None, :, None]
    expected = np.sqrt((w * err**2).mean(axis=(2, 3))).mean(axis=0)
    np.testing.assert_allclose(rmse(pred, truth).values, expected, rtol=1e-5)


def test_metrics_invariant_to_flip_and_roll(pair):
    pred, truth = pair
    flip = {"latitude": slice(None, None, -1)}
    for metric in (mse, mae, rmse):
        base = metric(pred, truth)
        np.testing.assert_allclose(
            metric(pred.isel(flip), truth.isel(flip)).values, base.values, rtol=1e-5
        )
        rolled = metric(
            pred.roll(longitude=17, roll_coords=True), truth.roll(longitude=17, roll_coords=True)
        )
        np.testing.assert_allclose(rolled.values, base.values, rtol=1e-5)


@settings(max_examples=15, deadline=None)
@given(st.floats(0.1, 100.0))
def test_rmse_scales_linearly(scale):
    truth = smooth_field(1, ["t2m"]).astype("float64")
    noise = smooth_field(1, ["t2m"], seed=5).astype("float64") - 280
    base = float(rmse(truth + noise, truth).squeeze())
    assert float(rmse(truth + scale * noise, truth).squeeze()) == pytest.approx(
        scale * base, rel=1e-9
    )


def test_nan_propagates_unless_skipna(pair):
    pred, truth = pair
    holed = pred.copy()
    holed[0, 0, 10, 10] = np.nan
    assert np.isnan(float(mse(holed, truth, sample_dim=None)[0, 0]))
    assert np.isfinite(float(mse(holed, truth, sample_dim=None, skipna=True)[0, 0]))


def test_misaligned_inputs_raise(pair):
    pred, truth = pair
    with pytest.raises(ValueError):
        mse(pred.isel(time=slice(1, None)), truth)


def test_metrics_are_lazy(pair):
    pred, truth = pair
    lazy = rmse(pred.chunk({"time": 1}), truth.chunk({"time": 1}))
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.values, rmse(pred, truth).values, rtol=1e-6)


def test_acc_golden_values():
    truth = smooth_field(2, ["z500"]).astype("float64")
    clim = truth.mean("time")
    assert np.allclose(acc(truth, truth, clim).values, 1.0)
    anomaly = truth - clim
    assert np.allclose(acc(clim - anomaly, truth, clim).values, -1.0)
    assert np.allclose(acc(clim + 0.2 * anomaly, truth, clim).values, 1.0)


def test_crps_golden_values():
    truth = xr.DataArray(
        np.zeros((1, 1, 121, 240)),
        dims=schema.CANONICAL_DIMS,
        coords={
            "time": [np.datetime64("2024-01-01")],
            "channel": ["t2m"],
            **CANONICAL_GRID.coords(),
        },
    )
    # ensemble {-1, 1} around an observation of 0: E|X-y| = 1, E|X-X'| = 1 -> CRPS = 1 - 0.5
    ensemble = xr.concat([truth - 1, truth + 1], dim="member")
    assert float(crps(ensemble, truth).squeeze()) == pytest.approx(0.5)
    # fair estimator: E|X-X'| over distinct pairs = 2 -> 1 - 1 = 0
    assert float(crps(ensemble, truth, fair=True).squeeze()) == pytest.approx(0.0)
    # a one-member ensemble reduces to MAE
    single = (truth + 2).expand_dims(member=1)
    assert float(crps(single, truth).squeeze()) == pytest.approx(2.0)
    with pytest.raises(DambenchInputError, match="member"):
        crps(truth, truth)


def test_evaluate_layout_and_table3(pair):
    pred, truth = pair
    stats = channel_stats(truth)
    result = evaluate(pred, truth, stats=stats)
    assert list(result.data_vars) == ["u10", "t2m", "z500", "q700"]
    assert result["metric"].values.tolist() == [
        "spec_div",
        "spec_res",
        "mse",
        "mae",
        "rmse",
        "bias",
        "mse_norm",
        "mae_norm",
    ]
    assert result["z500"].attrs["units"] == "m2 s-2"
    assert float(result["t2m"].sel(metric="rmse")) == pytest.approx(
        float(rmse(pred, truth).sel(channel="t2m"))
    )
    norm = (pred - stats["mean"]) / stats["std"] - (truth - stats["mean"]) / stats["std"]
    row = table3_row(result)
    assert row["MSE(1e-2)"] == pytest.approx(100 * float((norm**2).mean()), rel=1e-4)
    assert row["MAE(1e-2)"] == pytest.approx(100 * float(abs(norm).mean()), rel=1e-4)
    assert set(row) == {
        "SpecDiv",
        "MSE(1e-2)",
        "MAE(1e-2)",
        "RMSE t2m",
        "RMSE u10",
        "RMSE q700",
        "RMSE z500",
    }
    text = format_table3({"model": result})
    assert "RMSE z500" in text and "RMSE v10" not in text  # absent channels are skipped
    assert format_table3({"model": result}, fmt="markdown").startswith("| Method | SpecDiv")


def test_evaluate_rejects_unknown_metric(pair):
    pred, truth = pair
    with pytest.raises(DambenchInputError, match="Unknown metrics"):
        evaluate(pred, truth, metrics=["rmse", "ssim"])


def test_metrics_on_real_era5_sample(era5_sample_target):
    """Persistence against the real ERA5 sample, on the canonical grid, checked against numpy."""
    target = era5_sample_target
    target.dambench.validate()
    truth = target.isel(time=slice(3, None))
    background = target.isel(time=slice(None, -3)).assign_coords(time=truth.time)
    err = background.values.astype(np.float64) - truth.values
    w = cos_weights()[None, None, :, None]
    expected_rmse = np.sqrt((w * err**2).mean(axis=(2, 3))).mean(axis=0)
    np.testing.assert_allclose(rmse(background, truth).values, expected_rmse, rtol=1e-5)
    np.testing.assert_allclose(
        mse(background, truth).values, (err**2).mean(axis=(0, 2, 3)), rtol=1e-5
    )
    t2m = float(rmse(background, truth).sel(channel="t2m"))
    assert 0.5 < t2m < 10  # a day-old surface temperature is off by a few kelvin
    result = evaluate(background, truth, stats=channel_stats(target))
    spec = result.to_dataarray("channel").sel(metric="spec_div")
    assert np.all(np.isfinite(spec.values)) and np.all(spec.values >= 0)
