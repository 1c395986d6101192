"""The leaderboard's observed/unobserved table holds the leaderboard's rows, once each.

Regression: with a result named ``background`` as the reference (``baselines/run_sample.py``'s
Background model), the table listed it and also the dataset's ``Background`` row that every
result scores beside its own: the same numbers twice under two names, in a row the leaderboard
does not have.
"""

from __future__ import annotations

from test_scoring_inputs import per_variable

from dambench.scoring import evaluate_predictions
from dambench.scoring.leaderboard import leaderboard, observed_table


def _methods_listed(table: str) -> list[str]:
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    return [row.split(" | ")[0][2:] for row in rows if not row.startswith("| Method")]


def test_observed_table_follows_the_leaderboard_rows(sample_folder, sample_test, tmp_path):
    copy = per_variable(sample_test)
    copy.to_netcdf(tmp_path / "background.nc")
    near = per_variable(sample_test, field="target")
    near["t2m"] = near["t2m"] + 0.5
    near.to_netcdf(tmp_path / "near.nc")
    settings = {"n_resamples": 20, "figure_channel": None}
    reports = [
        evaluate_predictions(tmp_path / f"{name}.nc", sample_folder, name=name, **settings)
        for name in ("background", "near")
    ]
    board = leaderboard([r.summary for r in reports], reference="background", n_resamples=20)
    assert board.methods == ["background", "near"]
    table = observed_table([r.scores for r in reports], board)
    n_channels = sample_test.sizes["channel"]
    assert _methods_listed(table) == ["background"] * n_channels + ["near"] * n_channels
