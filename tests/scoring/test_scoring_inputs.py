"""Inputs at the edges of scoring: implausible values, missing units, Inf, overflow, float16,
WeatherBench2 names, and the fair CRPS weighted like RMSE (checked against brute force)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchInputError, DambenchSchemaError
from dambench.load import stats_from_attrs
from dambench.metrics import mse, rmse
from dambench.regions import resolve_region
from dambench.scoring import PredictionWriter, evaluate_predictions, open_predictions
from dambench.scoring.engine import Method, score_cycles
from dambench.sources.lexicon import WB2


def per_variable(ds: xr.Dataset, field: str = "background", names=None) -> xr.Dataset:
    """``ds[field]`` as one float32 variable per channel with units attributes."""
    names = names or {}
    out = {}
    for i, channel in enumerate(ds["channel"].values):
        values = ds[field].isel(channel=i).values.astype(np.float32)
        out[names.get(str(channel), str(channel))] = xr.DataArray(
            values,
            dims=("time", "latitude", "longitude"),
            coords={"time": ds.time.values, "latitude": ds.latitude, "longitude": ds.longitude},
            attrs={"units": str(ds["units"].values[i])},
        )
    return xr.Dataset(out)


def _score(path, folder, **kwargs):
    return evaluate_predictions(path, folder, n_resamples=50, figure_channel=None, **kwargs)


def _value(report, channel: str, metric: str, model: str | None = None) -> float:
    frame = report.scores
    frame = frame[frame["model"] == (model or report.summary["model"])]
    row = frame[
        (frame["channel"] == channel)
        & (frame["metric"] == metric)
        & (frame["region"] == "global")
        & (frame["period"] == "all")
    ]
    assert len(row) == 1, row
    return float(row["value"].iloc[0])


def test_t2m_in_celsius_labelled_kelvin_is_refused_naming_cycle_value_and_range(
    sample_folder, sample_test, tmp_path
):
    """Regression: t2m in degrees Celsius labelled K was scored (t2m RMSE 273 K, exit 0)."""
    data = per_variable(sample_test)
    data["t2m"] = (data["t2m"] - 273.15).assign_attrs(units="K")
    data.to_netcdf(tmp_path / "celsius.nc")
    first = str(sample_test.time.values[0])[:16]
    pattern = (
        rf"holds t2m with median -?\d.* K at {first}, outside the plausible range \[150, 350\] K "
        r"\(t2m looks like degrees Celsius labelled K\)"
    )
    with pytest.raises(DambenchInputError, match=pattern):
        _score(tmp_path / "celsius.nc", sample_folder)


def test_msl_in_hpa_labelled_pa_is_refused_with_its_hint(sample_folder, sample_test, tmp_path):
    data = per_variable(sample_test)
    data["msl"] = (data["msl"] / 100).assign_attrs(units="Pa")
    data.to_netcdf(tmp_path / "hpa.nc")
    with pytest.raises(DambenchInputError, match="msl looks like hPa labelled Pa"):
        _score(tmp_path / "hpa.nc", sample_folder)


def test_missing_units_are_a_recorded_warning(sample_folder, sample_test, tmp_path):
    """Regression: predictions without a units attribute were scored without a word."""
    data = per_variable(sample_test)
    del data["t2m"].attrs["units"]
    data.to_netcdf(tmp_path / "nounits.nc")
    with pytest.warns(UserWarning, match=r"no units for \['t2m'\].*t2m: 'K'"):
        predictions = open_predictions(tmp_path / "nounits.nc")
    assert len(predictions.warnings) == 1 and "'t2m'" in predictions.warnings[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_predictions(_with_units(sample_test, tmp_path)).warnings == ()


def _with_units(sample_test, tmp_path):
    per_variable(sample_test).to_netcdf(tmp_path / "units.nc")
    return tmp_path / "units.nc"


def test_stacked_store_without_units_coordinate_warns(sample_test, tmp_path):
    stacked = sample_test["background"].drop_vars("units").rename("analysis").to_dataset()
    stacked = stacked.drop_vars([c for c in stacked.coords if c not in stacked.dims])
    stacked.to_zarr(tmp_path / "bare.zarr", consolidated=False)
    with pytest.warns(UserWarning, match="no units for"):
        assert open_predictions(tmp_path / "bare.zarr").warnings


def test_inf_is_refused_naming_cycle_and_channel(sample_folder, sample_test, tmp_path):
    """Regression: Inf passed the NaN check and failed later naming no cycle or channel."""
    data = per_variable(sample_test)
    data["u10"][3, 10, 20] = np.inf
    data.to_netcdf(tmp_path / "inf.nc")
    when = str(sample_test.time.values[3])[:16]
    with pytest.raises(DambenchInputError, match=rf"NaN or Inf at {when} .*'u10': 1\b.*1 of them"):
        _score(tmp_path / "inf.nc", sample_folder)


def test_skipna_drops_inf_like_nan(sample_folder, sample_test, tmp_path):
    """Regression: --skipna dropped NaN only, so an Inf failed the same way."""
    data = per_variable(sample_test)
    holed = data.copy(deep=True)
    data["u10"][3, 10:20, :] = np.inf
    data["v10"][4, 5:8, :] = -np.inf
    holed["u10"][3, 10:20, :] = np.nan
    holed["v10"][4, 5:8, :] = np.nan
    data.to_netcdf(tmp_path / "inf.nc")
    holed.to_netcdf(tmp_path / "nan.nc")
    with_inf = _score(tmp_path / "inf.nc", sample_folder, skipna=True, name="p")
    with_nan = _score(tmp_path / "nan.nc", sample_folder, skipna=True, name="p")
    for channel in ("u10", "v10", "all"):
        for metric in ("mse_norm", "rmse") if channel != "all" else ("mse_norm",):
            value = _value(with_inf, channel, metric)
            assert np.isfinite(value)
            assert value == _value(with_nan, channel, metric)


def _methods(sample_test, field: np.ndarray) -> list[Method]:
    times = list(sample_test.time.values)

    def read(time):
        coords = {"channel": sample_test.channel.values}
        values = field[times.index(time)]
        return xr.DataArray(values, dims=("channel", "latitude", "longitude"), coords=coords)

    return [Method("p", read)]


def test_a_whole_nan_cycle_under_skipna_is_left_out_not_refused(sample_test):
    """A whole-NaN cycle under skipna is not refused by the scorer: its per-cycle value is NaN
    (which the report leaves out of n) and every other cycle is scored."""
    field = sample_test["background"].values.astype(np.float64)
    field[2] = np.nan
    channels = [str(c) for c in sample_test.channel.values]
    scores = score_cycles(
        sample_test,
        _methods(sample_test, field),
        channels=channels,
        stats=stats_from_attrs(sample_test),
        regions=[resolve_region("global")],
        skipna=True,
    )
    series = scores.series(("p", None, "global", "all", "mse_norm"))
    assert np.isnan(series[2]) and np.isfinite(np.delete(series, 2)).all()


def test_a_finite_1e30_does_not_overflow_the_squared_error(sample_test):
    """Regression: 1e30 in a float32 field squared to inf in float32 and was reported as
    "NaN or inf"; errors are now squared in float64."""
    truth = sample_test["target"].isel(time=[0]).astype(np.float32)
    prediction = truth.copy()
    prediction[0, 0, 60, 10] = 1e30
    value = mse(prediction, truth).sel(channel=str(truth.channel.values[0]))
    assert np.isfinite(float(value)) and float(value) == pytest.approx(1e60 / (121 * 240))
    assert np.isfinite(rmse(prediction, truth)).all()


def test_a_finite_1e30_in_predictions_is_scored_finite_with_a_note(
    sample_folder, sample_test, tmp_path
):
    """Regression: a finite 1e30 overflowed the float32 squared error and was refused as
    "NaN or inf"; one implausible value in a plausible field is now scored, with a note."""
    data = per_variable(sample_test)
    data["t2m"][0, 60, 10] = 1e30
    data.to_netcdf(tmp_path / "huge.nc")
    when = str(sample_test.time.values[0])[:16]
    note = rf"p holds 1 value\(s\) outside .* from {when}, first t2m = 1e\+30 K"
    with pytest.warns(UserWarning, match=note):
        report = _score(tmp_path / "huge.nc", sample_folder, name="p")
    rmse_t2m = _value(report, "t2m", "rmse")
    assert np.isfinite(rmse_t2m) and rmse_t2m > 1e26


def test_scoring_records_notes_on_outlying_values(sample_test):
    field = sample_test["background"].values.astype(np.float64)
    field[1, 2, 5, 5] = 400.0  # one t2m value of 400 K
    with pytest.warns(UserWarning, match="first t2m = 400 K"):
        scores = score_cycles(
            sample_test,
            _methods(sample_test, field),
            channels=[str(c) for c in sample_test.channel.values],
            stats=stats_from_attrs(sample_test),
            regions=[resolve_region("global")],
        )
    assert len(scores.warnings) == 1 and "1 value(s)" in scores.warnings[0]
    assert np.isfinite(scores.series(("p", None, "global", "t2m", "rmse"))).all()


def test_float16_msl_in_pa_is_refused(sample_test, tmp_path):
    """Regression: float16 msl in Pa (Inf above 65504 by construction) was said to score."""
    data = per_variable(sample_test)
    data["msl"] = data["msl"].astype(np.float16)
    data["t2m"] = data["t2m"].astype(np.float16)
    data.to_netcdf(tmp_path / "half.nc")
    with pytest.raises(DambenchSchemaError, match="float16, which cannot hold msl in Pa.*65504"):
        open_predictions(tmp_path / "half.nc")
    data["msl"] = data["msl"].astype(np.float32)
    data.to_netcdf(tmp_path / "half_t2m.nc")
    assert "t2m" in open_predictions(tmp_path / "half_t2m.nc").channels


def test_weatherbench2_names_are_accepted(sample_folder, sample_test, tmp_path):
    """Regression: 2m_temperature, 10m_u_component_of_wind, ... were refused."""
    per_variable(sample_test, names=dict(WB2)).to_netcdf(tmp_path / "wb2.nc")
    per_variable(sample_test).to_netcdf(tmp_path / "short.nc")
    opened = open_predictions(tmp_path / "wb2.nc")
    assert opened.channels == tuple(str(c) for c in sample_test.channel.values)
    wb2 = _score(tmp_path / "wb2.nc", sample_folder, name="p")
    short = _score(tmp_path / "short.nc", sample_folder, name="p")
    for channel in ("t2m", "msl", "u10"):
        assert _value(wb2, channel, "rmse") == _value(short, channel, "rmse")


def test_weatherbench2_and_schema_name_of_one_variable_is_refused(sample_test, tmp_path):
    data = per_variable(sample_test)
    data["2m_temperature"] = data["t2m"]
    data.to_netcdf(tmp_path / "both.nc")
    with pytest.raises(DambenchInputError, match="both 't2m' and '2m_temperature'"):
        open_predictions(tmp_path / "both.nc")


def _brute_force_fair_crps(members, truth, weights):
    """Per cycle: cos-latitude weighted mean over the grid of the fair CRPS of each point,
    mean_i |x_i - y| - sum_ij |x_i - x_j| / (2 M (M - 1)), by explicit loops over members."""
    m = members.shape[0]
    skill = sum(np.abs(members[i] - truth) for i in range(m)) / m
    pairs = sum(np.abs(members[i] - members[j]) for i in range(m) for j in range(m))
    pointwise = skill - pairs / (2 * m * (m - 1))
    return float((pointwise * weights).sum() / weights.sum())


def test_crps_is_cos_latitude_weighted_like_rmse_golden(sample_folder, sample_test, tmp_path):
    """Regression: CRPS was a uniform grid mean while RMSE and spread/skill were cos-latitude
    weighted; it now weighs the globe like them (golden values from brute-force numpy)."""
    rng = np.random.default_rng(7)
    channels = [str(c) for c in sample_test.channel.values]
    writer = PredictionWriter.like(
        sample_test, tmp_path / "ens.zarr", members=3, attrs={"model": "ens", "seed": 0}
    )
    members = []
    for time in sample_test.time.values:
        target = sample_test["target"].sel(time=time).values.astype(np.float64)
        polar = 1 + 4 * np.abs(np.sin(np.deg2rad(sample_test.latitude.values)))[:, None]
        spread = target.std(axis=(1, 2), keepdims=True) * 0.1 * polar
        cycle = (target + spread * rng.standard_normal((3, *target.shape))).astype(np.float32)
        writer.write(time, cycle)
        members.append(cycle.astype(np.float64))
    report = _score(tmp_path / "ens.zarr", sample_folder, reference=False)
    latitude = sample_test.latitude.values
    weights = np.clip(np.cos(np.deg2rad(latitude)), 0, None)[:, None] * np.ones((1, 240))
    truth = sample_test["target"].values.astype(np.float64)
    for c, channel in enumerate(channels):
        expected = np.mean(
            [
                _brute_force_fair_crps(members[t][:, c], truth[t, c], weights)
                for t in range(len(members))
            ]
        )
        assert _value(report, channel, "crps") == pytest.approx(expected, rel=1e-9), channel
    uniform = np.mean([_brute_force_fair_crps(m[:, 2], truth[t, 2], np.ones_like(weights))
                       for t, m in enumerate(members)])  # fmt: skip
    assert abs(_value(report, "t2m", "crps") / uniform - 1) > 1e-3  # the weighting matters
    assert schema.CHANNELS.index("t2m") == 2 and channels[2] == "t2m"
