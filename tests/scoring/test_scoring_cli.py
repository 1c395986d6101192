"""``dambench evaluate`` on a file written by a script that knows nothing of dambench equals the
baselines' path (a model's analyses streamed to a prediction store) on the same analyses."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from test_predictions import foreign_netcdf

from dambench.cli import main


def test_foreign_netcdf_scores_equal_the_baselines_path(sample_folder, sample_test, tmp_path):
    from baselines import evaluate

    path = foreign_netcdf(sample_test, tmp_path / "analysis.nc")
    status = main(
        [
            "evaluate",
            "--predictions",
            path,
            "--dataset",
            str(sample_folder),
            "--out",
            str(tmp_path / "cli"),
            "--name",
            "mine",
            "--bootstrap",
            "200",
            "--quiet",
        ]
    )
    assert status == 0
    evaluate.main(
        [
            "run",
            "--model",
            "background",
            "--dataset",
            str(sample_folder),
            "--out",
            str(tmp_path / "baseline"),
            "--bootstrap",
            "200",
        ]
    )
    cli = pd.read_parquet(tmp_path / "cli" / "scores.parquet")
    baseline = pd.read_parquet(tmp_path / "baseline" / "scores.parquet")
    keys = ["channel", "metric", "region", "period"]
    mine = cli[cli["model"] == "mine"].set_index(keys)["value"].sort_index()
    theirs = baseline[baseline["model"] == "background"].set_index(keys)["value"].sort_index()
    assert len(mine) == len(theirs) > 20
    pd.testing.assert_series_equal(mine, theirs, check_exact=False, rtol=1e-9)
    results = json.loads((tmp_path / "baseline" / "results.json").read_text())
    assert results["models"][0]["model_info"]["output"] == "deterministic"
    for name in ("table3.md", "summary.json", "maps.png", "spectra.png", "per_cycle_mse.png"):
        assert (tmp_path / "cli" / name).exists(), name


def test_cli_error_is_one_line_naming_the_missing_cycle(sample_folder, sample_test, tmp_path):
    path = foreign_netcdf(sample_test.isel(time=slice(0, -1)), tmp_path / "short.nc")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dambench.cli",
            "evaluate",
            "--predictions",
            path,
            "--dataset",
            str(sample_folder),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    last = str(pd.Timestamp(sample_test.time.values[-1]))[:16]
    assert "1 cycles of the split are missing" in done.stderr and last in done.stderr
    assert "Traceback" not in done.stderr


def test_help_lists_the_layouts():
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--help"])
    assert exit_info.value.code == 0
