"""``dambench build --scheduler`` on a real dask.distributed cluster of worker processes (issue 16,
item 3): the era5-fengwu recipe with an ONNX forecaster (the case whose closure could not be
pickled) builds byte-identical to a threaded and to a serial build; a worker process killed
mid-build is replaced, or stops the build in one line that a re-run resumes exactly; a source
failing in a worker names the shard's cycles and the URL; workers that cannot see ``--out`` and
an unreachable scheduler are refused before anything is written.

The ERA5 input is a stand-in (a WeatherBench2-layout store made from real ERA-Interim monthly
means, as in test_fengwu_recipe.py), the forecaster a tiny ONNX model with FengWu's contract: the
tests check the engine, never skill.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from dambench.assembly import build, engines, load_config, shards
from dambench.assembly.lock import DambenchBuildError
from dambench.exceptions import DambenchRemoteError
from dambench.sources.lexicon import WB2
from dambench.verify import sha256_file

distributed = pytest.importorskip("distributed")

CHANNELS = ["z500", "z850", "u500", "u850", "v500", "v850"]
TIMES = pd.date_range("2020-06-29", "2020-07-03", freq="6h")
DAYS = {
    "train": ["2020-07-01", "2020-07-01"],
    "validation": ["2020-07-02", "2020-07-02"],
    "test": ["2020-07-03", "2020-07-03"],
}  # 3 daily cycles; 2 per shard: shards of 2020-07-01..02 and 2020-07-03


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_era5_standin(realdata: Path, path: Path) -> xr.Dataset:
    """A 6-hourly WeatherBench2-layout stand-in on the 1.5 deg grid: a blend of the real ERA-Interim
    January and July monthly means (a stand-in, never data)."""
    src = xr.open_dataset(realdata / "erainterim" / "eraint_uvz.nc").load()
    src = src.isel(latitude=slice(None, None, 2), longitude=slice(None, None, 2))
    src = src.assign_coords(longitude=src.longitude % 360).sortby("longitude").sortby("latitude")
    weight = xr.DataArray(np.linspace(0, 1, len(TIMES)), dims="time", coords={"time": TIMES})
    series = (src.isel(month=0) * (1 - weight) + src.isel(month=1) * weight).astype("float32")
    store = xr.Dataset(
        {
            WB2[v]: series[v].transpose("time", "level", "longitude", "latitude")
            for v in ("z", "u", "v")
        },
        attrs={"comment": "stand-in for tests: a blend of ERA-Interim monthly means, not data"},
    )
    for var in store.data_vars.values():
        var.encoding = {}
    store.to_zarr(path, consolidated=False)
    return series


def write_forecaster(series: xr.Dataset, folder: Path) -> None:
    """A tiny ONNX model with FengWu's contract (``(1, 2C, H, W)`` normalised ``[x(t-6h), x(t)]``
    to ``2 x(t) - x(t-6h)``) and its ``global_means.npy`` / ``global_stds.npy``."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    fields = [series[c[0]].sel(level=int(c[1:])) for c in CHANNELS]
    np.save(folder / "global_means.npy", np.array([float(f.mean()) for f in fields], np.float32))
    np.save(folder / "global_stds.npy", np.array([float(f.std()) for f in fields], np.float32))
    c = len(CHANNELS)
    graph = helper.make_graph(
        [
            helper.make_node("Split", ["input", "halves"], ["previous", "current"], axis=1),
            helper.make_node("Mul", ["current", "two"], ["doubled"]),
            helper.make_node("Sub", ["doubled", "previous"], ["output"]),
        ],
        "extrapolate",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2 * c, 121, 240])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, c, 121, 240])],
        initializer=[
            numpy_helper.from_array(np.array([c, c], np.int64), "halves"),
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")


@pytest.fixture(scope="module")
def config_path(realdata, tmp_path_factory) -> Path:
    """An era5-fengwu config over local stand-in inputs and the real CPC and OLR files."""
    folder = tmp_path_factory.mktemp("fengwu-cluster")
    series = write_era5_standin(realdata, folder / "era5.zarr")
    write_forecaster(series, folder)
    config = load_config("era5-fengwu").to_dict()
    config.update(
        channels=CHANNELS,
        splits={"dates": DAYS},
        inputs={
            "era5": str(folder / "era5.zarr"),
            "cpc": str(realdata / "cpc") + "/PRCP_CU_GAUGE_V1.0GLB_0.50deg.lnx.{date:%Y%m%d}.RT",
            "olr": str(realdata / "olr" / "olr_equatorial_1979.nc"),
        },
        background={
            **config["background"],
            "model": str(folder / "model.onnx"),
            "mean": str(folder / "global_means.npy"),
            "std": str(folder / "global_stds.npy"),
            "model_grid_deg": None,
        },
        cycles_per_shard=2,
        cycles_per_parquet_file=2,
    )
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def serial(config_path, tmp_path_factory) -> dict[str, str]:
    """The digests of a serial build (one thread, in order)."""
    out = build(config_path, tmp_path_factory.mktemp("serial") / "fengwu", verbose=False)
    return tree_digest(out)


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes of one thread each; this module is pickled by value, so the test
    functions sent to the workers need no import path there."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            worker_dashboard_address=None,
        ) as local,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", ResourceWarning)
        yield local
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def worker_pids(cluster) -> set[int]:
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        return set(client.run(os.getpid).values())


def test_cluster_threads_and_serial_builds_are_byte_identical(
    config_path, serial, cluster, tmp_path
):
    threaded = build(config_path, tmp_path / "threads", workers=2, verbose=False)
    assert tree_digest(threaded) == serial
    out = build(
        config_path, tmp_path / "cluster", scheduler=cluster.scheduler_address, verbose=False
    )
    assert tree_digest(out) == serial
    assert "era5-fengwu.zarr/background/c/1/0/0/0" in serial  # both shards of the forecast
    assert "era5-fengwu.zarr/background/c/2/0/0/0" not in serial
    # every worker process made the recipe (sources, ONNX session) at most once, for itself
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        cached = client.run(lambda: list(shards._RECIPES))
    assert all(len(digests) <= 1 for digests in cached.values())
    assert {d for ds in cached.values() for d in ds} == {load_config(config_path).digest()}
    # and the task that travels is a few kilobytes of plain values, no recipe
    task = shards.make_tasks(
        load_config(config_path),
        pd.DatetimeIndex(["2020-07-01", "2020-07-02"]),
        np.array([0, 1]),
        [0],
        2,
        tmp_path / "store.zarr",
        tmp_path / "done",
    )[0]
    assert len(cloudpickle.dumps(task)) < 8000


def dies_on_its_first_attempt(task):
    """A shard task whose first attempt (of the whole build) kills its worker process."""
    marker = Path(task.done_dir).parent / "a-worker-died-here"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return shards.run_shard(task)


def test_a_worker_killed_mid_build_is_replaced_and_the_build_completes(
    config_path, serial, cluster, tmp_path, monkeypatch
):
    before = worker_pids(cluster)
    monkeypatch.setattr(shards, "run_shard", dies_on_its_first_attempt)
    out = build(
        config_path, tmp_path / "cluster", scheduler=cluster.scheduler_address, verbose=False
    )
    assert tree_digest(out) == serial
    assert before - worker_pids(cluster)  # a worker process died and was replaced


def test_a_build_stopped_by_a_dead_worker_resumes_exactly(
    config_path, serial, cluster, tmp_path, monkeypatch
):
    out, run_shard = tmp_path / "cluster", shards.run_shard
    monkeypatch.setattr(shards, "run_shard", dies_on_its_first_attempt)
    monkeypatch.setattr(cluster.scheduler, "allowed_failures", 0)  # no second chance
    with pytest.raises(DambenchBuildError) as caught:
        build(config_path, out, scheduler=cluster.scheduler_address, verbose=False)
    message = str(caught.value)
    assert "\n" not in message and "KilledWorker" in message and "resumes" in message
    assert "shard of cycles 2020-07-0" in message
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(shards, "run_shard", run_shard)
    build(config_path, out, scheduler=cluster.scheduler_address, verbose=False)
    assert tree_digest(out) == serial


URL = "https://data.example.org/era5.zarr/geopotential/c/4/0/0/0"


def source_fails_after_the_first_shard(task):
    """Runs the real shard task in the worker, with its recipe's source failing for good on every
    shard but the first, as a remote read past its retries does."""
    recipe = shards.recipe_for(task.config, task.digest)
    if task.start == 0:
        return shards.run_shard(task)

    def unreachable(indices):
        raise DambenchRemoteError(f"Could not read {URL}: connection reset (tried 5 times).")

    recipe.block = unreachable
    try:
        return shards.run_shard(task)
    finally:
        del recipe.block


def test_a_source_failing_in_a_worker_names_the_cycles_and_the_url(
    config_path, serial, cluster, tmp_path, monkeypatch
):
    out, run_shard = tmp_path / "cluster", shards.run_shard
    monkeypatch.setattr(shards, "run_shard", source_fails_after_the_first_shard)
    with pytest.raises(DambenchBuildError) as caught:
        build(config_path, out, scheduler=cluster.scheduler_address, verbose=False)
    message = str(caught.value)
    assert "\n" not in message
    assert "shard of cycles 2020-07-03 00:00:00 .. 2020-07-03 00:00:00 (1 cycle)" in message
    assert f"DambenchRemoteError: Could not read {URL}" in message
    assert sorted(p.name for p in (out / ".dambench-build" / "shards").iterdir()) == ["00000000"]
    monkeypatch.setattr(shards, "run_shard", run_shard)
    build(config_path, out, scheduler=cluster.scheduler_address, verbose=False)
    assert tree_digest(out) == serial


def blind_worker_view(marker, expected):
    """The check of a worker on another machine, where ``--out`` is not mounted."""
    return engines.worker_view(marker + ".elsewhere", expected)


def test_workers_that_cannot_see_out_are_refused_before_any_shard(
    config_path, cluster, tmp_path, monkeypatch
):
    out = tmp_path / "cluster"
    monkeypatch.setattr(engines, "worker_view", blind_worker_view)
    with pytest.raises(DambenchBuildError, match="--out must be on a filesystem every") as caught:
        build(config_path, out, scheduler=cluster.scheduler_address, verbose=False)
    assert f"do not see the output folder {out}" in str(caught.value)
    assert not out.exists()  # refused before anything was written


def test_an_unreachable_scheduler_is_named(config_path, tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "CONNECT_TIMEOUT_S", 1)
    out = tmp_path / "cluster"
    with pytest.raises(DambenchBuildError, match="connect to the dask scheduler at tcp://127.0"):
        build(config_path, out, scheduler="tcp://127.0.0.1:9", verbose=False)
    assert not out.exists()


def test_the_worker_check_sees_what_is_there(tmp_path):
    marker = tmp_path / "marker"
    marker.write_bytes(b"mine")
    assert engines.worker_view(str(marker), b"mine")["sees"]
    assert not engines.worker_view(str(marker), b"other")["sees"]
    assert not engines.worker_view(str(tmp_path / "absent"), b"mine")["sees"]
