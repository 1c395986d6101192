"""What the scorer saw is recorded and said: the checks' warnings in ``summary.json`` and on
``dambench evaluate``'s stderr; ``--skipna`` leaving undefined cycles out of ``n`` with a note
naming them, and paired comparisons on the cycles defined in both series.

Regressions of issue 18: the warnings of the unit and plausibility checks were Python warnings
only (nothing in ``summary.json``); a whole-NaN cycle under ``--skipna`` was refused ("Per-cycle
values hold NaN or inf") where the README says it is left out of ``n``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_scoring_inputs import per_variable

from dambench.cli import main
from dambench.exceptions import DambenchInputError
from dambench.scoring import evaluate_predictions
from dambench.scoring.api import CONVENTIONS
from dambench.scoring.comparison import paired
from dambench.scoring.engine import CycleScores
from dambench.scoring.finite import left_out_notes, paired_finite
from dambench.scoring.leaderboard import leaderboard


def _evaluate_cli(capsys, path, folder, out, *extra) -> tuple[int, str, str]:
    code = main(
        ["evaluate", "--predictions", str(path), "--dataset", str(folder), "--out", str(out),
         "--bootstrap", "20", "--quiet", "--channel", "t2m", *extra]
    )  # fmt: skip
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _row(report, model: str, channel: str = "all", metric: str = "mse_norm"):
    frame = report.scores
    hit = frame[
        (frame["model"] == model)
        & (frame["channel"] == channel)
        & (frame["metric"] == metric)
        & (frame["region"] == "global")
        & (frame["period"] == "all")
    ]
    assert len(hit) == 1, hit
    return hit.iloc[0]


def test_missing_units_and_outliers_are_in_summary_and_printed(
    sample_folder, sample_test, tmp_path, capsys
):
    """Regression: these notes were Python warnings only; summary.json had no warnings."""
    data = per_variable(sample_test)
    del data["u10"].attrs["units"]
    data["t2m"][1, 5, 5] = 400.0  # one implausible value in a plausible field
    data.to_netcdf(tmp_path / "notes.nc")
    code, out, err = _evaluate_cli(capsys, tmp_path / "notes.nc", sample_folder, tmp_path / "o")
    assert code == 0, err
    recorded = json.loads((tmp_path / "o" / "summary.json").read_text())["warnings"]
    assert len(recorded) == 2, recorded
    assert "no units for ['u10']" in recorded[0]
    assert "1 value(s) outside the plausible range" in recorded[1]
    assert "first t2m = 400 K" in recorded[1]
    printed = [line for line in err.splitlines() if line.startswith("dambench evaluate: warning")]
    for note in recorded:
        assert sum(note in line for line in printed) == 1, (note, printed)
    assert "Wrote" in out


def test_clean_predictions_record_no_warnings(sample_folder, sample_test, tmp_path):
    per_variable(sample_test).to_netcdf(tmp_path / "clean.nc")
    report = evaluate_predictions(
        tmp_path / "clean.nc", sample_folder, n_resamples=20, figure_channel=None
    )
    assert report.summary["warnings"] == []


def _whole_nan_cycle(sample_test, tmp_path):
    data = per_variable(sample_test)
    for name in data.data_vars:
        data[name][2] = np.nan
    data.to_netcdf(tmp_path / "holed.nc")
    return tmp_path / "holed.nc", sample_test.time.values[2]


def test_a_whole_nan_cycle_under_skipna_is_left_out_of_n_with_a_note(
    sample_folder, sample_test, tmp_path, capsys
):
    """Regression: the cycle was refused ("Per-cycle values hold NaN or inf") although the
    README says it is left out of n; the paired comparison now uses the cycles defined in both
    series."""
    path, when = _whole_nan_cycle(sample_test, tmp_path)
    label = str(when)[:16]
    code, out, err = _evaluate_cli(capsys, path, sample_folder, tmp_path / "o", "--skipna")
    assert code == 0, err
    assert f"cycle {label} is entirely non-finite; it is left out of n" in err
    assert "on the 6 cycles defined in both" in out
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["skipna"] is True
    assert any(label in note and "entirely non-finite" in note for note in summary["warnings"])
    (comparison,) = summary["comparisons"]
    assert comparison["n"] == 6 and comparison["left_out"] == 1
    report = evaluate_predictions(
        path, sample_folder, skipna=True, n_resamples=20, figure_channel=None, name="holed"
    )
    n_cycles = sample_test.sizes["time"]
    assert _row(report, "holed")["n"] == n_cycles - 1
    assert _row(report, "holed", "t2m", "rmse")["n"] == n_cycles - 1
    assert _row(report, "Background")["n"] == n_cycles
    per_cycle = np.asarray(report.summary["per_cycle"]["holed"]["MSE(1e-2)"])
    kept = np.isfinite(per_cycle)
    assert kept.sum() == n_cycles - 1 and not kept[2]
    by_hand = np.delete(per_cycle, 2).mean()
    assert _row(report, "holed")["value"] * 100 == pytest.approx(by_hand, rel=1e-12)


def test_a_nan_cycle_without_skipna_is_refused_naming_cycle_and_channel(
    sample_folder, sample_test, tmp_path, capsys
):
    path, when = _whole_nan_cycle(sample_test, tmp_path)
    pattern = rf"holds NaN or Inf at {str(when)[:16]} \(non-finite points per channel: .*'t2m'"
    with pytest.raises(DambenchInputError, match=pattern):
        evaluate_predictions(path, sample_folder, n_resamples=20, figure_channel=None)
    code, _, err = _evaluate_cli(capsys, path, sample_folder, tmp_path / "o")
    assert code != 0 and "--skipna" in err and str(when)[:16] in err


def test_one_channel_without_finite_values_is_named(sample_folder, sample_test, tmp_path):
    data = per_variable(sample_test)
    data["v10"][4] = np.inf
    data.to_netcdf(tmp_path / "v10.nc")
    report = evaluate_predictions(
        tmp_path / "v10.nc", sample_folder, skipna=True, n_resamples=20, figure_channel=None
    )
    label = str(sample_test.time.values[4])[:16]
    (note,) = [n for n in report.summary["warnings"] if label in n]
    assert "no finite value of v10" in note and "entirely" not in note
    name = report.summary["model"]
    n_cycles = sample_test.sizes["time"]
    assert _row(report, name, "v10", "rmse")["n"] == n_cycles - 1
    assert _row(report, name, "t2m", "rmse")["n"] == n_cycles


def _cycles(values: dict) -> CycleScores:
    times = np.arange("2020-01-01T00", "2020-01-01T04", 1, dtype="datetime64[h]")
    out = CycleScores(times=list(times.astype("datetime64[ns]")))
    out.values.update(values)
    return out


def test_left_out_notes_name_cycle_channels_and_metrics():
    nan = float("nan")
    cycles = _cycles(
        {
            ("p", 0, "global", "u10", "rmse"): [1.0, nan, 1.0, nan],
            ("p", 0, "global", "v10", "rmse"): [1.0, 1.0, 1.0, nan],
            ("p", 0, "global", "v10", "spec_div"): [nan, 1.0, 1.0, nan],
            ("p", 0, "global", "all", "mse_norm"): [nan, nan, 1.0, nan],
            ("p", 0, "tropics", "v10", "rmse"): [1.0, 1.0, nan, nan],
            ("Background", None, "global", "u10", "rmse"): [1.0, 1.0, 1.0, 1.0],
        }
    )
    notes = left_out_notes(cycles)
    assert notes == [
        "p: cycle 2020-01-01T00:00 is left out of n of the scores it leaves undefined "
        "(spec_div undefined for v10; and of the channel means over them) (--skipna).",
        "p: cycle 2020-01-01T01:00 is left out of n of the scores it leaves undefined "
        "(no finite value of u10; and of the channel means over them) (--skipna).",
        "p: cycle 2020-01-01T03:00 is entirely non-finite; it is left out of n of every score "
        "(--skipna).",
    ]
    assert left_out_notes(_cycles({("p", 0, "global", "u10", "rmse"): [1.0] * 4})) == []


def test_paired_finite_uses_the_cycles_defined_in_both():
    rng = np.random.default_rng(3)
    a, b = rng.normal(1, 0.1, 40), rng.normal(1.2, 0.1, 40)
    a[[3, 17]], b[[17, 30]] = np.nan, np.inf
    found = paired_finite("a", "b", "MSE(1e-2)", a, b, n_resamples=200)
    keep = np.setdiff1d(np.arange(40), [3, 17, 30])
    expected = paired("a", "b", "MSE(1e-2)", a[keep], b[keep], n_resamples=200)
    assert found["n"] == 37 and found["left_out"] == 3
    assert found["difference"] == expected["difference"]
    assert (found["ci_low"], found["ci_high"]) == (expected["ci_low"], expected["ci_high"])
    with pytest.raises(DambenchInputError, match="no cycle where both MSE"):
        paired_finite("a", "b", "MSE(1e-2)", np.full(4, np.nan), np.ones(4))
    with pytest.raises(DambenchInputError, match="same cycles; got shapes"):
        paired_finite("a", "b", "MSE(1e-2)", np.ones(4), np.ones(3))


def test_the_leaderboard_takes_a_result_scored_with_skipna(sample_folder, sample_test, tmp_path):
    """A result with an undefined cycle is ranked on its defined cycles (before: refused by the
    bootstrap's NaN check)."""
    path, _ = _whole_nan_cycle(sample_test, tmp_path)
    holed = evaluate_predictions(
        path, sample_folder, skipna=True, n_resamples=20, figure_channel=None, name="holed"
    )
    board = leaderboard([holed.summary], reference="background", n_resamples=50)
    (comparison,) = board.comparisons
    assert comparison["n"] == sample_test.sizes["time"] - 1 and comparison["left_out"] == 1
    assert all(np.isfinite(cell["relative_pct"]) for cell in board.scorecard)


def test_crps_convention_says_cos_latitude_weighted():
    """The engine weighs CRPS by cos(latitude) like RMSE; the recorded convention says so."""
    assert "cos-latitude weighted" in CONVENTIONS["crps"]
    assert "unweighted" not in CONVENTIONS["crps"]


def test_compare_and_imp_take_a_result_scored_with_skipna(sample_folder, sample_test, tmp_path):
    """``compare`` and Table 4's ``relative_improvement`` use the cycles defined in both series
    (before: the bootstrap refused the NaN of the undefined cycle)."""
    from dambench.scoring.comparison import compare, relative_improvement

    path, _ = _whole_nan_cycle(sample_test, tmp_path)
    holed = evaluate_predictions(
        path, sample_folder, skipna=True, n_resamples=20, figure_channel=None, name="holed"
    ).summary
    n_cycles = sample_test.sizes["time"]
    result = compare(holed, holed, model_b="Background")
    assert result["n"] == n_cycles - 1 and result["left_out"] == 1
    imp = relative_improvement(holed, holed, model_b="Background")
    assert imp["n"] == n_cycles - 1 and imp["left_out"] == 1
    a = np.asarray(holed["per_cycle"]["holed"]["MSE(1e-2)"])
    b = np.asarray(holed["per_cycle"]["Background"]["MSE(1e-2)"])
    keep = np.isfinite(a)
    assert imp["value"] == pytest.approx(100 * (1 - a[keep].mean() / b[keep].mean()), rel=1e-12)
