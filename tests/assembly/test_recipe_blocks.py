"""era5-fengwu read block by block: a block reads only its days, equals the whole-record
computation, and memory does not grow with the record; the forecaster-grid refusal and its
recorded allowance.

Stand-ins, labelled as such and never data: a 1.5 degree ERA5 store of smooth synthetic fields,
PSL-layout CPC yearly files made of the real CPC 2020-07-01 field scaled per day, the real 1979
NOAA OLR file re-dated to 2020, and a two-state ONNX model with FengWu's contract.
"""

import json
import pickle
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from dambench.assembly import build, load_config
from dambench.assembly.recipes import make_recipe
from dambench.backgrounds import OnnxForecaster
from dambench.exceptions import DambenchInputError
from dambench.grid import CANONICAL_GRID
from dambench.load import open_dataset
from dambench.observe import observe
from dambench.regrid import regrid
from dambench.sources import daily
from dambench.sources.align import align
from dambench.sources.cpc import read_cpc_binary, read_cpc_psl
from dambench.sources.cpc_grid import cpc_on_grid
from dambench.sources.era5 import open_era5
from dambench.sources.lexicon import WB2
from dambench.sources.olr import olr_on_grid, read_olr

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CHANNELS = ["z500", "t850"]
CYCLE_DAYS = pd.date_range("2020-07-02", "2020-07-06", freq="D")


def era5_standin(path, first, last):
    """A WeatherBench2-layout 1.5 degree store of smooth synthetic z500 and t850 (a stand-in)."""
    times = pd.date_range(first, last, freq="6h")
    lat, lon = CANONICAL_GRID.latitude, CANONICAL_GRID.longitude
    phase = np.arange(len(times))[:, None, None, None] * 0.1
    wave = np.cos(np.deg2rad(lat))[None, None, :, None] * np.sin(
        np.deg2rad(lon)[None, None, None, :] + phase
    )
    coords = {"time": times, "latitude": lat, "longitude": lon}
    z = xr.DataArray(
        (50000 + 3000 * wave).astype(np.float32),
        dims=("time", "level", "latitude", "longitude"),
        coords={**coords, "level": [500]},
        attrs={"units": "m**2 s**-2"},
    )
    t = xr.DataArray(
        (270 + 20 * wave).astype(np.float32),
        dims=("time", "level", "latitude", "longitude"),
        coords={**coords, "level": [850]},
        attrs={"units": "K"},
    )
    xr.Dataset({WB2["z"]: z, WB2["t"]: t}).to_zarr(path, consolidated=False)


def onnx_standin(path, n_channels):
    """FengWu's contract, (1, 2C, H, W) -> (1, C, H, W), as x(t+6h) = 2 x(t) - x(t-6h)."""
    from onnx import TensorProto, helper

    c = n_channels
    consts = {
        "c0": [0],
        "c1": [c],
        "c2": [2 * c],
        "axis": [1],
    }
    nodes = [
        helper.make_node("Constant", [], [k], value=helper.make_tensor(k, TensorProto.INT64, [1], v))
        for k, v in consts.items()
    ]
    nodes += [
        helper.make_node("Slice", ["input", "c0", "c1", "axis"], ["previous"]),
        helper.make_node("Slice", ["input", "c1", "c2", "axis"], ["current"]),
        helper.make_node("Add", ["current", "current"], ["twice"]),
        helper.make_node("Sub", ["twice", "previous"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "extrapolate",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2 * c, "h", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, c, "h", "w"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def cpc_psl_standin(realdata, path, days):
    """PSL-layout ``precip.2020.nc`` (north to south, units 'mm'): the real CPC 2020-07-01
    precipitation scaled by (1 + day index / 10) on each of ``days`` (a stand-in)."""
    real = read_cpc_binary(realdata / "cpc" / "PRCP_CU_GAUGE_V1.0GLB_0.50deg.lnx.20200701.RT")
    field = real["precip"].isel(time=0).values
    scale = (1 + np.arange(len(days)) / 10).astype(np.float32)[:, None, None]
    da = xr.DataArray(
        field[None] * scale,
        dims=("time", "lat", "lon"),
        coords={"time": days, "lat": real.latitude.values, "lon": real.longitude.values},
        attrs={"units": "mm"},
        name="precip",
    )
    da.to_dataset().to_netcdf(path, engine="h5netcdf")


def olr_standin(realdata, path, days):
    """The real 1979 daily OLR file re-dated to ``days`` (same day of year; a stand-in)."""
    with xr.open_dataset(realdata / "olr" / "olr_equatorial_1979.nc") as src:
        real = src.load()
    picked = real.isel(time=[d.day_of_year - 1 for d in days]).assign_coords(time=days)
    for var in picked.variables.values():
        var.encoding = {}
    picked.to_netcdf(path, engine="h5netcdf")


def write_config(folder, *, cpc, olr, era5, first="2020-07-02", last="2020-07-06", **background):
    config = load_config("era5-fengwu").to_dict()
    config.update(
        channels=CHANNELS,
        splits={"dates": {"train": [first, last]}},
        inputs={"era5": str(era5), "cpc": str(cpc), "olr": str(olr)},
        background={
            **config["background"],
            "model": str(folder / "model.onnx"),
            "mean": str(folder / "mean.npy"),
            "std": str(folder / "std.npy"),
            "model_grid_deg": None,
            **background,
        },
        cycles_per_shard=2,
        cycles_per_parquet_file=2,
    )
    path = folder / f"config-{len(list(folder.glob('config-*')))}.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def standins(realdata, tmp_path_factory):
    folder = tmp_path_factory.mktemp("blocks")
    era5_standin(folder / "era5.zarr", "2020-06-29", "2020-07-06")
    onnx_standin(folder / "model.onnx", len(CHANNELS))
    np.save(folder / "mean.npy", np.array([50000.0, 270.0], np.float32))
    np.save(folder / "std.npy", np.array([3000.0, 20.0], np.float32))
    # CPC for every day the cycles need; OLR ends 2020-07-03, so two cycles lack it
    cpc_psl_standin(realdata, folder / "precip.2020.nc", pd.date_range("2020-06-28", periods=10))
    olr_standin(realdata, folder / "olr.nc", pd.date_range("2020-06-28", "2020-07-03"))
    # records of 3 and 60 days around the same cycles (memory test)
    for n, first in ((3, "2020-07-01"), (60, "2020-06-01")):
        days = pd.date_range(first, periods=n)
        (folder / f"cpc{n}").mkdir()
        cpc_psl_standin(realdata, folder / f"cpc{n}" / "precip.2020.nc", days)
        olr_standin(realdata, folder / f"olr{n}.nc", days)
    return folder


def config_for(folder, **kwargs):
    defaults = {
        "cpc": folder / "precip.{year}.nc",
        "olr": folder / "olr.nc",
        "era5": folder / "era5.zarr",
    }
    return load_config(write_config(folder, **{**defaults, **kwargs}))


def whole_record_modalities(folder, cycles):
    """The old computation: every CPC and OLR day read and regridded, then aligned."""
    cpc = cpc_on_grid(read_cpc_psl(folder / "precip.2020.nc"))
    olr = olr_on_grid(read_olr(folder / "olr.nc"))
    aligned, report = align(cycles, {"precip": (cpc["precip"], "daily"), "olr": (olr, "daily")})
    return aligned, report


def test_a_block_reads_only_its_days_and_equals_the_whole_record(standins, monkeypatch):
    recipe = make_recipe(config_for(standins))
    asked = []
    for name, reader in (("read_cpc_psl", daily.read_cpc_psl), ("read_olr", daily.read_olr)):

        def spy(path, *, times=None, source=None, reader=reader, name=name):
            asked.append((name, pd.DatetimeIndex(times).normalize().tolist()))
            return reader(path, times=times, source=source)

        monkeypatch.setattr(daily, name, spy)
    indices = np.array([1, 3])
    block = recipe.block(indices)
    cycles = recipe.cycles[indices]
    days_before = (cycles - pd.Timedelta(days=1)).tolist()
    # CPC: exactly the two days before the cycles; OLR: only the held one of them (07-01)
    assert asked == [("read_cpc_psl", days_before), ("read_olr", days_before[:1])]

    aligned, report = whole_record_modalities(standins, recipe.cycles)
    for name in ("precip", "olr"):
        expected = aligned[name].values[indices].astype(np.float32)
        np.testing.assert_array_equal(block[name], expected)
    assert np.isfinite(block["olr"][0]).any() and np.isnan(block["olr"][1]).all()
    assert recipe.attrs["missing_modalities"] == str(report)
    assert "olr: 2 missing" in recipe.attrs["missing_modalities"]

    era5 = open_era5(standins / "era5.zarr", channels=CHANNELS, grid=None)
    target = regrid(era5).sel(time=cycles.values).load()
    np.testing.assert_array_equal(block["target"], target.values.astype(np.float32))
    expected_obs = observe(target, **recipe.config.observation).values.astype(np.float32)
    np.testing.assert_array_equal(block["observation"], expected_obs)
    forecaster = OnnxForecaster(
        str(standins / "model.onnx"),
        mean=np.load(standins / "mean.npy"),
        std=np.load(standins / "std.npy"),
        analysis=era5,
        channels=CHANNELS,
    )
    np.testing.assert_array_equal(
        block["background"], forecaster.at(cycles).values.astype(np.float32)
    )


def test_the_recipe_pickles_without_data_and_blocks_the_same_after(standins):
    recipe = make_recipe(config_for(standins))
    text = pickle.dumps(recipe)
    assert len(text) < 100_000  # config, paths and the cycle index: no field, no ONNX session
    again = pickle.loads(text)
    for name, values in recipe.block(np.array([0])).items():
        np.testing.assert_array_equal(again.block(np.array([0]))[name], values, err_msg=name)


def peak_bytes(config) -> int:
    tracemalloc.start()
    try:
        recipe = make_recipe(config)
        recipe.block(np.array([0]))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_record(standins):
    short, long = (
        config_for(
            standins,
            cpc=standins / f"cpc{n}" / "precip.{year}.nc",
            olr=standins / f"olr{n}.nc",
            last="2020-07-04",
        )
        for n in (3, 60)
    )
    peak_bytes(short)  # warm imports and caches
    small, large = peak_bytes(short), peak_bytes(long)
    # the whole-record reader held 60 days of 0.5 degree CPC (62 MB) against 3 (3 MB)
    assert large < 1.2 * small + 2_000_000, (small, large)


def test_a_forecaster_finer_than_the_store_is_refused_before_anything_is_written(
    standins, tmp_path
):
    path = write_config(
        standins, cpc=standins / "precip.{year}.nc", olr=standins / "olr.nc",
        era5=standins / "era5.zarr", model_grid_deg=0.25,
    )
    out = tmp_path / "refused"
    with pytest.raises(DambenchInputError) as err:
        build(path, out, verbose=False)
    message = str(err.value)
    assert "0.25 deg grid" in message and "1.5 deg grid" in message
    assert "allow_coarse_forecaster_input" in message and "ARCO-ERA5" in message
    assert not out.exists() or not any(out.iterdir())


def test_an_allowed_coarse_input_is_recorded_in_the_store_and_the_card(standins, tmp_path):
    path = write_config(
        standins, cpc=standins / "precip.{year}.nc", olr=standins / "olr.nc",
        era5=standins / "era5.zarr", model_grid_deg=0.25, allow_coarse_forecaster_input=True,
        first="2020-07-02", last="2020-07-03",
    )
    out = build(path, tmp_path / "allowed", verbose=False)
    note = "coarse forecaster input allowed"
    assert note in open_dataset(out).attrs["background"]
    card = (out / "README.md").read_text()
    assert note in card and "fed ERA5 at 1.5 deg interpolated" in card


def test_era5_times_the_cycles_need_are_checked_at_construction(standins):
    # the store starts 2020-06-29 00 UTC: the cycle of 2020-06-30 needs 06-28 18 UTC and 06-29
    with pytest.raises(DambenchInputError, match="lacks 1 times the cycles need"):
        make_recipe(config_for(standins, first="2020-06-30", last="2020-07-01"))


@pytest.fixture
def http_base(standins):
    """The stand-ins served by a plain local HTTP server (no range requests, like some mirrors)."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(standins))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


def test_every_input_is_read_over_http_and_blocks_equal_the_local_ones(standins, http_base):
    local = make_recipe(config_for(standins))
    remote = make_recipe(
        config_for(
            standins,
            cpc=http_base + "/precip.{year}.nc",
            olr=http_base + "/olr.nc",
            era5=http_base + "/era5.zarr",
            model=http_base + "/model.onnx",
            mean=http_base + "/mean.npy",
            std=http_base + "/std.npy",
        )
    )
    assert remote.attrs["missing_modalities"] == local.attrs["missing_modalities"]
    indices = np.array([0, 4])
    expected = local.block(indices)
    for name, values in remote.block(indices).items():
        np.testing.assert_array_equal(values, expected[name], err_msg=name)


def test_times_past_the_stores_declared_valid_time_stop_are_refused(standins, tmp_path):
    import shutil

    import zarr

    store = shutil.copytree(standins / "era5.zarr", tmp_path / "arco-like.zarr")
    zarr.open_group(store, mode="r+").attrs["valid_time_stop"] = "2020-07-04T00"
    with pytest.raises(DambenchInputError, match="declares valid data up to 2020-07-04 00:00:00"):
        make_recipe(config_for(standins, era5=store))
    make_recipe(config_for(standins, era5=store, last="2020-07-04"))
