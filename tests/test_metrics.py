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
from dambench.metrics import metric_units, scores_to_frame
from dambench.regions import region_weights
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


# --- item 3: NaN never improves a score; no dtype overflow --------------------------------------


def test_all_nan_prediction_scores_nan_not_a_perfect_zero(pair):
    """Regression: the cos-weighted RMSE treated NaN as zero error (all-NaN scored 0.0)."""
    pred, truth = pair
    holes = xr.full_like(pred, np.nan)
    assert np.isnan(rmse(holes, truth).values).all()
    for metric in (mse, mae, bias):
        assert np.isnan(metric(holes, truth, weights="cos").values).all()
    result = evaluate(holes, truth, stats=channel_stats(truth), metrics=["mse", "mae", "rmse"])
    row = table3_row(result)
    assert all(np.isnan(v) for v in row.values())
    assert "nan" in format_table3({"all NaN": result}).splitlines()[1]
    # skipna=True has no finite point to average: NaN as well, never 0
    assert np.isnan(rmse(holes, truth, skipna=True).values).all()


def test_nan_south_of_the_equator_does_not_beat_the_background(pair):
    """Regression: a prediction that is NaN south of the equator beat a finite one."""
    pred, truth = pair
    south_nan = truth.where(truth.latitude >= 0)  # perfect in the north, NaN in the south
    assert np.isnan(rmse(south_nan, truth).values).all()
    # skipna=True scores the finite half only: the north's error (0 here) over the north's weights
    north = rmse(south_nan, truth, skipna=True)
    np.testing.assert_allclose(north.values, 0.0, atol=1e-12)
    assert north.attrs["skipna"] == 1


def test_single_nan_in_error_one_field_gives_exactly_one():
    """Regression: 0.99906 instead of 1.0 (the weights' sum did not skip the NaN)."""
    truth = smooth_field(1, ["t2m"]).astype("float64")
    pred = truth + 1.0
    pred[0, 0, 40, 7] = np.nan
    assert float(rmse(pred, truth, skipna=True).squeeze()) == 1.0
    for weights in (None, "cos", "area"):
        assert float(mse(pred, truth, weights=weights, skipna=True).squeeze()) == 1.0
        assert np.isnan(float(mse(pred, truth, weights=weights).squeeze()))
    assert np.isnan(float(rmse(pred, truth).squeeze()))


def test_weighted_metrics_propagate_nan(pair):
    """Regression: weighted mse/mae/bias/acc/crps skipped NaN silently; unweighted gave NaN."""
    pred, truth = pair
    holed = pred.copy()
    holed[0, 1, 60, 10] = np.nan
    for metric in (mse, mae, bias):
        for weights in ("cos", "area", None):
            out = metric(holed, truth, weights=weights, sample_dim=None)
            assert np.isnan(float(out[0, 1])) and np.isfinite(float(out[1, 1]))
    clim = truth.mean("time")
    assert np.isnan(float(acc(holed, truth, clim, sample_dim=None)[0, 1]))
    ensemble = xr.concat([holed, pred], dim="member")
    assert np.isnan(float(crps(ensemble, truth, weights="cos", sample_dim=None)[0, 1]))


def test_nan_at_zero_weight_points_is_ignored():
    """Pole rows under cos weights carry no weight: their values, NaN included, do not count."""
    truth = smooth_field(1, ["t2m"]).astype("float64")
    pred = truth + 2.0
    pred[0, 0, 0, :] = np.nan  # the north pole row
    assert float(rmse(pred, truth).squeeze()) == pytest.approx(2.0, rel=1e-12)
    assert np.isnan(float(rmse(pred, truth, weights="area").squeeze()))


def test_float16_and_int16_fields_neither_overflow_nor_wrap():
    """Regression: float16 msl (hPa) squared to inf; int16 differences wrapped around."""
    truth = smooth_field(2, ["msl"]).astype("float64") / 100  # ~1000 hPa
    truth16 = truth.astype("float16")
    pred16 = (truth16.astype("float64") + 300.0).astype("float16")
    err = pred16.values.astype(np.float64) - truth16.values.astype(np.float64)
    expected_mse = (err**2).mean(axis=(2, 3)).mean(axis=0)
    np.testing.assert_allclose(mse(pred16, truth16).values, expected_mse, rtol=1e-12)
    assert np.all(np.isfinite(rmse(pred16, truth16).values))
    zeros = xr.zeros_like(truth, dtype=np.int16)
    assert float(rmse(zeros + np.int16(549), zeros).squeeze()) == 549.0
    assert float(mse(zeros - np.int16(30000), zeros + np.int16(30000)).squeeze()) == 60000.0**2
    assert float(bias(zeros - np.int16(30000), zeros + np.int16(30000)).squeeze()) == -60000.0


def test_duplicated_and_empty_times_are_refused(pair):
    pred, truth = pair
    doubled_time = np.array(pred.time.values)
    doubled_time[1] = doubled_time[0]
    twice = pred.assign_coords(time=doubled_time)
    when = str(doubled_time[0])[:10]
    for metric in (mse, rmse, evaluate):
        with pytest.raises(DambenchInputError, match=f"Duplicated time values.*{when}"):
            metric(twice, truth.assign_coords(time=doubled_time))
    empty = {"time": slice(0, 0)}
    for metric in (mse, rmse, evaluate):
        with pytest.raises(DambenchInputError, match="time dim is empty"):
            metric(pred.isel(empty), truth.isel(empty))


# --- item 4: 2-D weights and regions ----------------------------------------------------------


def test_two_dimensional_weights_give_one_number_per_sample(pair):
    """Regression: 2-D weights returned a (time, longitude) array instead of a number."""
    pred, truth = pair
    rng = np.random.default_rng(3)
    w2 = xr.DataArray(
        rng.random((121, 240)),
        dims=("latitude", "longitude"),
        coords={"latitude": truth.latitude, "longitude": truth.longitude},
    )
    err = pred.values.astype(np.float64) - truth.values
    weighted = lambda x: (x * w2.values).sum(axis=(2, 3)) / w2.values.sum()  # noqa: E731
    for metric, values in ((mse, err**2), (mae, np.abs(err)), (bias, err)):
        out = metric(pred, truth, weights=w2)
        assert out.dims == ("channel",)
        np.testing.assert_allclose(out.values, weighted(values).mean(axis=0), rtol=1e-6)
    out = rmse(pred, truth, weights=w2)
    assert out.dims == ("channel",)
    np.testing.assert_allclose(out.values, np.sqrt(weighted(err**2)).mean(axis=0), rtol=1e-6)


def test_regional_metric_ignores_data_outside_the_region():
    """WeatherBench2's case: inf at the equator, error 1 elsewhere -> extratropics RMSE is 1."""
    truth = smooth_field(1, ["t2m"]).astype("float64")
    truth.loc[{"latitude": 0.0}] = np.inf
    pred = truth + 1.0
    assert np.isnan(float(rmse(pred, truth).squeeze()))
    weights = region_weights("extratropics", truth.latitude, truth.longitude, base="cos")
    assert float(rmse(pred, truth, weights=weights).squeeze()) == pytest.approx(1.0, abs=1e-12)


# --- units follow the metric; Table 3 never skips a NaN channel ---------------------------------


@pytest.mark.parametrize(
    ("metric", "field_units", "expected"),
    [
        ("mse", "m s-1", "m2 s-2"),
        ("mse", "K", "K2"),
        ("mse", "m2 s-2", "m4 s-4"),
        ("mse", "kg kg-1", "kg2 kg-2"),
        ("mse", "m/s", "m2 s-2"),
        ("mse", "%", "(%)2"),
        ("mse", "1", "1"),
        ("rmse", "Pa", "Pa"),
        ("mae", "m s**-1", "m s-1"),
        ("bias", "K", "K"),
        ("crps", "K", "K"),
        ("mse_norm", "K", "1"),
        ("mae_norm", "K", "1"),
        ("spec_div", "Pa", "1"),
        ("spec_res", "Pa", "1"),
        ("acc", "K", "1"),
        ("mse", "", ""),
    ],
)
def test_metric_units(metric, field_units, expected):
    assert metric_units(metric, field_units) == expected


def test_metric_units_rejects_unknown_metric():
    with pytest.raises(DambenchInputError, match="No units rule for metric 'ssim'"):
        metric_units("ssim", "K")


def test_scores_frame_labels_each_value_with_its_own_units(pair):
    """Regression: MSE was labelled with the field's units (z500 MSE in m2 s-2)."""
    pred, truth = pair
    frame = scores_to_frame({"model": evaluate(pred, truth, stats=channel_stats(truth))})
    units = frame.set_index(["channel", "metric"])["units"]
    assert units[("z500", "mse")] == "m4 s-4"
    assert units[("z500", "rmse")] == "m2 s-2"
    assert units[("t2m", "mse")] == "K2"
    assert units[("t2m", "mse_norm")] == "1" and units[("t2m", "spec_div")] == "1"
    assert set(frame["region"]) == {"global"}
    with pytest.raises(DambenchInputError, match="sample-averaged"):
        scores_to_frame({"model": evaluate(pred, truth, sample_dim=None)})


def test_table3_row_does_not_skip_a_nan_channel(pair):
    """Regression: SpecDiv/MSE/MAE means over channels skipped a NaN channel."""
    pred, truth = pair
    broken = pred.copy()
    broken.loc[{"channel": "q700"}] = np.nan
    with pytest.warns(UserWarning):
        row = table3_row(evaluate(broken, truth, stats=channel_stats(truth)))
    assert np.isnan(row["SpecDiv"]) and np.isnan(row["MSE(1e-2)"]) and np.isnan(row["MAE(1e-2)"])
    assert np.isnan(row["RMSE q700"]) and np.isfinite(row["RMSE t2m"])


def test_evaluate_records_its_conventions(pair):
    pred, truth = pair
    result = evaluate(pred, truth)
    assert result.attrs["spectral_reduction"] == "per_sample"
    assert result.attrs["region"] == "global" and result.attrs["skipna"] == 0
    assert result.attrs["metrics_left_out"] == ""
    batch = evaluate(pred, truth, metrics=["spec_div"], spectral_reduction="mean_field")
    assert batch.attrs["spectral_reduction"] == "mean_field"
    from dambench import spec_div

    expected = spec_div(pred, truth, reduce="mean_field")
    np.testing.assert_allclose(batch.to_dataarray("channel").squeeze().values, expected.values)
    with pytest.raises(DambenchInputError, match="mean_field"):
        evaluate(pred, truth, sample_dim=None, spectral_reduction="mean_field")


def test_evaluate_per_sample_values_have_a_time_dim(pair):
    pred, truth = pair
    per_sample = evaluate(pred, truth, sample_dim=None, stats=channel_stats(truth))
    assert per_sample["t2m"].dims == ("metric", "time")
    mean = evaluate(pred, truth, stats=channel_stats(truth))
    for metric in ("mse", "mae", "bias", "spec_div", "mse_norm"):
        np.testing.assert_allclose(
            per_sample.sel(metric=metric).mean("time").to_dataarray().values,
            mean.sel(metric=metric).to_dataarray().values,
            rtol=1e-10,
        )
