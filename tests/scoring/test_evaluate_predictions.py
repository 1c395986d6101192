"""``evaluate_predictions`` end to end on era5-sample: ensembles, seeds, periods, regions, and
independent recomputation of what it reports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from dambench.exceptions import DambenchInputError
from dambench.scoring import PredictionWriter, compare, evaluate_predictions
from dambench.scoring.report import COLUMNS

N_MEMBERS = 4


def _write_ensemble(ds, path, seed: int):
    """Members = target + background error scaled, plus independent noise (physical units)."""
    rng = np.random.default_rng(seed)
    writer = PredictionWriter.like(
        ds, path, members=N_MEMBERS, attrs={"model": "toy-ensemble", "seed": seed}
    )
    members = []
    for time in ds.time.values:
        target = ds["target"].sel(time=time).values.astype(np.float64)
        error = ds["background"].sel(time=time).values - target
        spread = error.std(axis=(1, 2), keepdims=True)
        cycle = target + 0.5 * error + spread * rng.standard_normal((N_MEMBERS, *target.shape))
        writer.write(time, cycle)
        members.append(cycle.astype(np.float32).astype(np.float64))
    return np.stack(members)  # (time, member, channel, lat, lon)


@pytest.fixture(scope="module")
def ensemble_report(sample_folder, sample_test, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ens")
    members = [_write_ensemble(sample_test, folder / f"s{s}.zarr", s) for s in (0, 1)]
    report = evaluate_predictions(
        [folder / "s0.zarr", folder / "s1.zarr"],
        sample_folder,
        out=folder / "out",
        by="season",
        regions=["global", "tropics"],
        n_resamples=200,
        figure_channel=None,
    )
    return report, members, folder / "out"


def _row(frame, **where):
    chosen = frame
    for key, value in where.items():
        chosen = chosen[chosen[key].isna()] if value is None else chosen[chosen[key] == value]
    assert len(chosen) == 1, (where, len(chosen))
    return chosen.iloc[0]


def _fair_crps(members: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per point: mean_i |x_i - y| - sum_ij |x_i - x_j| / (2 N (N - 1))."""
    n = members.shape[0]
    skill = np.abs(members - truth).mean(axis=0)
    pairs = np.abs(members[:, None] - members[None, :]).sum(axis=(0, 1))
    return skill - pairs / (2 * n * (n - 1))


def test_fair_crps_equals_an_independent_computation(ensemble_report, sample_test):
    """Per cycle the cos-latitude weighted mean (the weights of RMSE) of the pointwise fair
    CRPS, then the mean over cycles."""
    report, members, _ = ensemble_report
    truth = sample_test["target"].values.astype(np.float64)
    weights = np.clip(np.cos(np.deg2rad(sample_test.latitude.values)), 0, None)[:, None]
    weights = np.broadcast_to(weights, truth.shape[-2:])
    for c, channel in enumerate(sample_test.channel.values):
        per_cycle = [
            np.average(_fair_crps(members[0][t, :, c], truth[t, c]), weights=weights)
            for t in range(truth.shape[0])
        ]
        row = _row(
            report.scores, model="toy-ensemble", seed=0, region="global", period="all",
            channel=str(channel), metric="crps",
        )  # fmt: skip
        assert row["value"] == pytest.approx(np.mean(per_cycle), rel=1e-6)


def test_spread_skill_equals_an_independent_computation(ensemble_report, sample_test):
    report, members, _ = ensemble_report
    truth = sample_test["target"].values.astype(np.float64)
    weights = np.clip(np.cos(np.deg2rad(sample_test.latitude.values)), 0, None)[:, None]
    weights = np.broadcast_to(weights, truth.shape[-2:])
    c = list(sample_test.channel.values).index("t2m")
    ens = members[1][:, :, c]  # seed 1: (time, member, lat, lon)
    var = [np.average(ens[t].var(axis=0, ddof=1), weights=weights) for t in range(len(ens))]
    mse = [
        np.average((ens[t].mean(0) - truth[t, c]) ** 2, weights=weights) for t in range(len(ens))
    ]
    expected = np.sqrt((N_MEMBERS + 1) / N_MEMBERS * np.mean(var) / np.mean(mse))
    row = _row(
        report.scores, model="toy-ensemble", seed=1, region="global", period="all",
        channel="t2m", metric="spread_skill",
    )  # fmt: skip
    assert row["value"] == pytest.approx(expected, rel=1e-6)


def test_table3_scores_the_ensemble_mean(ensemble_report, sample_test):
    report, members, _ = ensemble_report
    truth = sample_test["target"].values.astype(np.float64)
    c = list(sample_test.channel.values).index("t2m")
    weights = np.clip(np.cos(np.deg2rad(sample_test.latitude.values)), 0, None)
    weights = np.broadcast_to(weights[:, None], truth.shape[-2:])
    rmse = [
        np.sqrt(np.average((members[0][t, :, c].mean(0) - truth[t, c]) ** 2, weights=weights))
        for t in range(truth.shape[0])
    ]
    row = _row(
        report.scores, model="toy-ensemble", seed=0, region="global", period="all",
        channel="t2m", metric="rmse",
    )  # fmt: skip
    assert row["value"] == pytest.approx(np.mean(rmse), rel=1e-6)
    assert "CRPS(1e-2)" in report.ensemble_table and "Spread/skill" in report.ensemble_table


def test_seed_rows_and_their_mean(ensemble_report):
    report, _, _ = ensemble_report
    where = dict(model="toy-ensemble", region="global", period="all", channel="t2m", metric="mse")
    per_seed = [_row(report.scores, seed=s, **where)["value"] for s in (0, 1)]
    mean_row = _row(report.scores, seed=None, **where)
    assert mean_row["value"] == pytest.approx(np.mean(per_seed))
    assert mean_row["std_over_seeds"] == pytest.approx(np.std(per_seed, ddof=1))
    assert "±" in report.table3


def test_tidy_table_periods_regions_and_units(ensemble_report, sample_test):
    report, _, out = ensemble_report
    frame = pd.read_parquet(out / "scores.parquet")
    assert list(frame.columns) == COLUMNS
    assert set(frame["region"]) == {"global", "tropics"}
    seasons = set(pd.DatetimeIndex(sample_test.time.values).month.map(
        lambda m: ["DJF", "DJF", "MAM", "MAM", "MAM", "JJA", "JJA", "JJA", "SON", "SON", "SON",
                   "DJF"][m - 1]))  # fmt: skip
    assert set(frame["period"]) == {"all"} | seasons
    units = frame.drop_duplicates(["channel", "metric"]).set_index(["channel", "metric"])["units"]
    assert units[("msl", "mse")] == "Pa2" and units[("msl", "rmse")] == "Pa"
    assert units[("u10", "mse")] == "m2 s-2" and units[("all", "mse_norm")] == "1"
    assert (frame["n"] == frame["n"].max()).all() or set(frame["period"]) != {"all"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"]["digest_kind"] == "manifest"
    assert summary["conventions"]["spectral_reduction"].startswith("per_sample")
    assert summary["times"] == [str(pd.Timestamp(t)) for t in sample_test.time.values]


def test_background_row_matches_the_metrics_module(ensemble_report, sample_test):
    from dambench.load import stats_from_attrs
    from dambench.metrics import evaluate, table3_row

    report, _, _ = ensemble_report
    stats = stats_from_attrs(sample_test)
    direct = table3_row(evaluate(sample_test["background"], sample_test["target"], stats=stats))
    scored = report.summary["table3"]["Background"]
    for column, value in direct.items():
        assert scored[column]["value"] == pytest.approx(value, rel=1e-9), column


def test_compare_refuses_results_of_other_data(ensemble_report):
    report, _, _ = ensemble_report
    other = {**report.summary, "dataset_digest": "0" * 64}
    with pytest.raises(DambenchInputError, match="dataset_digest differ"):
        compare(report.summary, other)
    result = compare(report.summary, {**report.summary, "model": "Background"})
    assert result["difference"] < 0  # the toy ensemble mean beats the background


def test_land_and_sea_regions_take_a_land_sea_mask_file(sample_folder, sample_test, tmp_path):
    """``--land-sea-mask``: a stand-in mask (land east of 180 E, not real geography) in a
    netCDF file; the land RMSE equals numpy's over the land points."""
    from test_predictions import foreign_netcdf

    lat, lon = sample_test.latitude.values, sample_test.longitude.values
    land = np.broadcast_to((lon >= 180.0).astype(np.float64), (lat.size, lon.size))
    mask = xr.Dataset({"lsm": (("lat", "lon"), land)}, coords={"lat": lat, "lon": lon})
    mask.to_netcdf(tmp_path / "lsm.nc")
    path = foreign_netcdf(sample_test, tmp_path / "bg.nc")
    with pytest.raises(DambenchInputError, match="need a land-sea mask: pass --land-sea-mask"):
        evaluate_predictions(path, sample_folder, regions=["land"], n_resamples=20)
    report = evaluate_predictions(
        path, sample_folder, regions=["global", "land", "sea"], land_sea_mask=tmp_path / "lsm.nc",
        n_resamples=20, figure_channel=None, reference=False,
    )  # fmt: skip
    truth = sample_test["target"].sel(channel="t2m").values.astype(np.float64)
    field = sample_test["background"].sel(channel="t2m").values.astype(np.float64)
    cos = np.clip(np.cos(np.deg2rad(lat)), 0, None)[:, None] * land
    expected = np.mean([np.sqrt(np.average((f - t) ** 2, weights=cos)) for f, t in
                        zip(field, truth, strict=True)])  # fmt: skip
    row = _row(report.scores, model="bg", seed=0, region="land", period="all", channel="t2m",
               metric="rmse")  # fmt: skip
    assert row["value"] == pytest.approx(expected, rel=1e-9)
    assert report.summary["land_sea_mask"] == str(tmp_path / "lsm.nc")
    assert "land = latitude in [-90, 90], all longitudes, land points only" in report.tables[
        "regions.md"
    ]
