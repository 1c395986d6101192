import subprocess
import sys

import pytest

from dambench.cli import main


def test_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "dambench.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "quickstart" in out and "info" in out


def test_info_prints_schema(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "channels (69): u10, v10, t2m, msl, z50" in out
    assert "split test: 2024-01-01 .. 2024-12-31" in out


def test_quickstart_on_the_embedded_sample(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "test split: 7 cycles" in out and "21-22 h" in out
    assert "Background + observed points" in out and "RMSE t2m" in out
    png = tmp_path / "quickstart.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "table3.md").read_text().splitlines()
    assert table[0].startswith("| Method | SpecDiv | MSE(1e-2) | MAE(1e-2) | RMSE t2m")
    import pandas as pd

    scores = pd.read_csv(tmp_path / "scores.csv")
    background = scores[(scores.method == "Background") & (scores.metric == "rmse")]
    blended = scores[(scores.method == "Background + observed points") & (scores.metric == "rmse")]
    # inserting observations (5 % of points, small noise) lowers every channel's RMSE
    assert (blended.value.to_numpy() < background.value.to_numpy()).all()


def test_build_help_names_the_inputs():
    out = subprocess.run([sys.executable, "-m", "dambench.cli", "build", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--out", "--workers", "--scheduler", "--era5", "--fengwu", "--cpc", "--olr"):
        assert flag in out


def test_bad_arguments_exit_with_usage():
    with pytest.raises(SystemExit):
        main(["quickstart", "--channel", "z500"])
