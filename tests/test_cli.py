import json
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
    assert table[0].startswith("Dataset era5-sample, digest ")
    assert ", split test, 7 cycles" in table[0]
    assert table[1].startswith("Units: ") and "msl Pa" in table[1]
    head = [line for line in table if line.startswith("| Method")]
    assert head[0].startswith("| Method | SpecDiv | MSE(1e-2) | MAE(1e-2) | RMSE t2m")
    import pandas as pd

    scores = pd.read_parquet(tmp_path / "scores.parquet")
    rmse = scores[scores.metric == "rmse"].pivot_table("value", "channel", "model")
    assert sorted(rmse.index) == ["msl", "t2m", "u10", "v10"]
    # inserting observations (5 % of points, small noise) lowers every channel's RMSE
    assert (rmse["Background + observed points"] < rmse["Background"]).all()


def test_build_help_names_the_inputs():
    out = subprocess.run(
        [sys.executable, "-m", "dambench.cli", "build", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in ("--out", "--workers", "--scheduler", "--era5", "--fengwu", "--cpc", "--olr"):
        assert flag in out


def test_bad_arguments_exit_with_usage():
    with pytest.raises(SystemExit):
        main(["quickstart", "--channel", "z500"])


def test_a_dambench_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    from dambench.assembly import load_config

    config = tmp_path / "bad.json"
    config.write_text(json.dumps({**load_config("era5-sample").to_dict(), "name": "../x"}))
    out = tmp_path / "out"
    assert main(["build", str(config), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dambench build: error: Config ")
    assert "'name' must be" in err and "Traceback" not in err
    from dambench.exceptions import DambenchInputError

    for argv in (["--debug", "build", str(config)], ["build", str(config), "-v"]):
        with pytest.raises(DambenchInputError, match="'name' must be"):
            main([*argv, "--out", str(out)])
    assert not out.exists()


def test_build_refuses_arguments_the_recipe_does_not_use(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["build", "era5-sample", "--out", str(out), "--era5", "gs://x.zarr"]) == 1
    assert "--era5 not used by recipe era5-sample" in capsys.readouterr().err
    assert main(["build", "era5-sample", "--out", str(out), "--fengwu", "m.onnx"]) == 1
    assert "--fengwu not used by recipe era5-sample" in capsys.readouterr().err
    assert not out.exists()


def test_a_rebuilt_folder_is_verified_not_rebuilt(tmp_path, capsys):
    import shutil

    from dambench.load import ensure_embedded

    folder = shutil.copytree(ensure_embedded(), tmp_path / "era5-sample")
    assert main(["build", "era5-sample", "--out", str(folder), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"Verified {folder}")
    (folder / "stats.json").write_text("{}")
    assert main(["build", "era5-sample", "--out", str(folder), "--quiet"]) == 1
    assert "changed files ['stats.json']" in capsys.readouterr().err


def test_verify_of_a_hub_dataset_offline_is_one_line(capsys):
    assert main(["verify", "era5-fengwu", "--revision", "v1.0"]) == 1  # HF_HUB_OFFLINE=1 here
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HF_HUB_OFFLINE is set" in err
    assert "hf://datasets/dambench/era5-fengwu@v1.0" in err and "dambench build era5-fengwu" in err
