"""The era5-sample build end to end: layout, resumability, loaders agree, statistics, errors."""

import json

import numpy as np
import pytest
import xarray as xr

from dambench import schema
from dambench.assembly import build, builder, load_config, writers
from dambench.assembly.builder import DambenchBuildError, sha256_file
from dambench.exceptions import DambenchInputError
from dambench.load import open_dataset, stats_from_attrs


def tree_digest(folder):
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build("era5-sample", tmp_path_factory.mktemp("clean") / "era5-sample", verbose=False)


def test_layout_of_a_built_folder(built):
    names = {p.relative_to(built).as_posix() for p in built.rglob("*") if p.is_file()}
    assert {"README.md", "stats.json", "manifest.json"} <= names
    assert {
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
        "data/validation-00000-of-00001.parquet",
        "data/test-00000-of-00001.parquet",
    } <= names
    assert not any(name.startswith(".dambench-build") for name in names)
    manifest = json.loads((built / "manifest.json").read_text())
    assert set(manifest["files"]) == names - {"manifest.json"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(built / name)
    # one shard file per array per 8 cycles: 21 cycles -> 3 shards
    shards = sorted(p.name for p in (built / "era5-sample.zarr" / "target" / "c").iterdir())
    assert shards == ["0", "1", "2"]


def test_store_content_and_provenance(built):
    ds = open_dataset(built)
    assert ds.sizes == {"time": 21, "channel": 4, "latitude": 121, "longitude": 240}
    assert ds["channel"].values.tolist() == ["u10", "v10", "t2m", "msl"]
    assert open_dataset(built, chunks={})["target"].chunks[0] == (1,) * 21  # a chunk per cycle
    assert ds.attrs["license"] == "cc-by-4.0" and "Copernicus" in ds.attrs["source"]
    assert ds.attrs["Conventions"].startswith("CF") and "dambench" in ds.attrs["history"]
    assert ds["standard_name"].values.tolist()[2] == "air_temperature"
    assert ds.latitude.attrs["axis"] == "Y" and ds.latitude.attrs["units"] == "degrees_north"
    assert "21-22 h" in ds.attrs["background"]
    splits = ds["split"].values.tolist()
    assert splits.count("test") == 7 and splits.count("validation") == 3
    # persistence: the background of cycle i + 3 is the target of cycle i
    np.testing.assert_array_equal(
        ds["background"].isel(time=5).values, ds["target"].isel(time=2).values
    )
    # stored observations: 5 % of points, NaN elsewhere, close to the target where observed
    obs = ds["observation"].isel(time=0).values
    assert abs(np.isfinite(obs).mean() - 0.05) < 0.005
    err = (obs - ds["target"].isel(time=0).values)[:, np.isfinite(obs[0])]
    assert np.nanstd(err[2]) == pytest.approx(schema.OBSERVATION_ERROR_STD["t2m"], rel=0.2)
    # precipitation only at the capital-city cells, in mm/day
    precip = ds["precip"].isel(time=0).values
    assert 40 <= np.isfinite(precip).sum() <= 70
    assert np.nanmin(precip) >= 0 and np.nanmax(precip) < 500
    assert "olr" not in ds  # absent, not faked
    assert ds["precip"].attrs["units"] == "mm/day"


def test_splits_from_open_dataset(built):
    test = open_dataset(built, split="test")
    assert str(test.time.values[0])[:10] == "2026-03-30"
    assert (test["split"] == "test").all()
    with pytest.raises(DambenchInputError, match="Unknown split"):
        open_dataset(built, split="dev")


def test_stats_equal_recomputation_from_train(built):
    stats = json.loads((built / "stats.json").read_text())
    train = open_dataset(built, split="train")["target"].values.astype(np.float64)
    np.testing.assert_allclose(stats["mean"], train.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(stats["std"], train.std(axis=(0, 2, 3)), rtol=1e-8)
    xr.testing.assert_allclose(
        stats_from_attrs(open_dataset(built))["mean"],
        xr.DataArray(stats["mean"], dims="channel", coords={"channel": stats["channels"]}),
    )


def test_datasets_and_xarray_give_identical_arrays(built):
    from datasets import load_dataset

    ds = open_dataset(built, split="validation").load()
    cache = str(built.parent / "hf-cache")
    table = load_dataset(str(built), split="validation", cache_dir=cache).with_format("numpy")
    assert len(table) == ds.sizes["time"]
    for name in ("target", "background", "observation", "precip", "precip_gauges"):
        np.testing.assert_array_equal(np.stack(table[name]), ds[name].values)
    np.testing.assert_array_equal(
        np.asarray(table["time"]).astype("datetime64[ns]"), ds.time.values
    )
    streamed = load_dataset(str(built), split="test", streaming=True).with_format("numpy")
    test = open_dataset(built, split="test").load()
    rows = list(streamed)
    assert len(rows) == test.sizes["time"]
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(row["observation"], test["observation"].values[i])
        np.testing.assert_array_equal(row["target"], test["target"].values[i])


def test_rerun_of_a_finished_build_does_nothing(built):
    before = {p: p.stat().st_mtime_ns for p in built.rglob("*") if p.is_file()}
    build("era5-sample", built, verbose=False)
    after = {p: p.stat().st_mtime_ns for p in built.rglob("*") if p.is_file()}
    assert before == after


@pytest.mark.parametrize("fail_in", ["write_store_block", "write_parquet_rows"])
def test_killed_build_resumes_byte_identical(built, tmp_path, monkeypatch, fail_in):
    original = getattr(writers, fail_in)
    calls = {"n": 0}

    def dies_on_second_call(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(writers, fail_in, dies_on_second_call)
    out = tmp_path / "era5-sample"
    with pytest.raises(KeyboardInterrupt):
        build("era5-sample", out, verbose=False)
    assert (out / builder.STATE_DIR).exists() and not (out / "manifest.json").exists()
    monkeypatch.setattr(writers, fail_in, original)
    build("era5-sample", out, verbose=False)
    assert tree_digest(out) == tree_digest(built)


def test_parallel_workers_give_the_same_bytes(built, tmp_path):
    out = build("era5-sample", tmp_path / "era5-sample", workers=2, verbose=False)
    assert tree_digest(out) == tree_digest(built)


def test_bad_configs_and_folders_fail_before_writing(tmp_path):
    config = load_config("era5-sample").to_dict()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**config, "colour": "blue"}))
    out = tmp_path / "out"
    with pytest.raises(DambenchInputError, match=r"unknown keys \['colour'\]"):
        build(bad, out, verbose=False)
    bad.write_text(json.dumps({**config, "channels": ["t2m", "z500"]}))
    with pytest.raises(Exception, match=r"Missing channels \['z500'\]"):
        build(bad, out, verbose=False)
    assert not out.exists()
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(DambenchBuildError, match="not empty"):
        build("era5-sample", occupied, verbose=False)
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]


def test_changed_config_does_not_resume_or_overwrite(built, tmp_path):
    with pytest.raises(DambenchBuildError, match="different config"):
        build("era5-sample", built, verbose=False, overrides={"cycles_per_shard": 4})


def test_unreachable_hub_fails_fast_with_build_hint():
    import time

    from dambench.sources import DambenchSourceError

    start = time.perf_counter()
    with pytest.raises(DambenchSourceError, match="dambench build era5-fengwu --out DIR"):
        open_dataset("era5-fengwu")  # HF_HUB_OFFLINE=1 in the tests
    assert time.perf_counter() - start < 10


def test_resolve_locations(built):
    from dambench.load import resolve

    assert resolve("era5-fengwu") == "hf://datasets/dambench/era5-fengwu/era5-fengwu.zarr"
    assert resolve("hf://datasets/dambench/era5-sample") == (
        "hf://datasets/dambench/era5-sample/era5-sample.zarr"
    )
    assert resolve(built).endswith("era5-sample.zarr")
    with pytest.raises(DambenchInputError, match="neither a dataset name"):
        resolve("no-such-thing")
