"""The era5-fengwu recipe end to end on local fixtures: a WeatherBench2-layout zarr made from real
ERA-Interim fields, a tiny ONNX model with FengWu's contract, the real CPC and OLR files."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from dambench.assembly import build, load_config
from dambench.load import open_dataset
from dambench.sources.lexicon import WB2

CHANNELS = ["z200", "z500", "z850", "u200", "u500", "u850", "v200", "v500", "v850"]
TIMES = pd.date_range("2020-06-29", "2020-07-03", freq="6h")


@pytest.fixture(scope="module")
def fixtures(realdata, tmp_path_factory):
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("fengwu")
    # ERA5 stand-in on the exact 1.5 deg grid, WeatherBench2 layout; a smooth blend of the real
    # January and July monthly means gives a 6-hourly series
    src = xr.open_dataset(realdata / "erainterim" / "eraint_uvz.nc").load()
    src = src.isel(latitude=slice(None, None, 2), longitude=slice(None, None, 2))
    src = src.assign_coords(longitude=src.longitude % 360).sortby("longitude").sortby("latitude")
    weight = xr.DataArray(np.linspace(0, 1, len(TIMES)), dims="time", coords={"time": TIMES})
    series = (src.isel(month=0) * (1 - weight) + src.isel(month=1) * weight).astype("float32")
    store = xr.Dataset(
        {
            WB2[v]: series[v].transpose("time", "level", "longitude", "latitude")
            for v in ("z", "u", "v")
        }
    )
    for var in store.data_vars.values():
        var.encoding = {}
    store.to_zarr(folder / "era5.zarr", consolidated=False)
    stacked = series.to_array("var")  # (var, time, level, lat, lon): z, u, v
    mean = np.array(
        [float(stacked.sel(var=v, level=int(c[1:])).mean()) for c in CHANNELS for v in [c[0]]],
        dtype=np.float32,
    )
    std = np.array(
        [float(stacked.sel(var=c[0], level=int(c[1:])).std()) for c in CHANNELS], dtype=np.float32
    )
    np.save(folder / "global_means.npy", mean)
    np.save(folder / "global_stds.npy", std)

    class Extrapolate(torch.nn.Module):
        """FengWu contract: (1, 2C, H, W) normalised [x(t-6h), x(t)] -> 2 x(t) - x(t-6h)."""

        def forward(self, x):
            c = x.shape[1] // 2
            return 2 * x[:, c:] - x[:, :c]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Extrapolate(),
            (torch.zeros(1, 2 * len(CHANNELS), 121, 240),),
            str(folder / "model.onnx"),
            input_names=["input"],
            output_names=["output"],
            dynamo=False,
        )
    config = load_config("era5-fengwu").to_dict()
    config.update(
        channels=CHANNELS,
        splits={
            "dates": {
                "train": ["2020-07-01", "2020-07-01"],
                "validation": ["2020-07-02", "2020-07-02"],
                "test": ["2020-07-03", "2020-07-03"],
            }
        },
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
    return path, folder


def test_fengwu_recipe_end_to_end(fixtures, tmp_path):
    config_path, folder = fixtures
    out = build(config_path, tmp_path / "era5-fengwu", verbose=False)
    ds = open_dataset(out).load()
    assert ds.sizes == {"time": 3, "channel": 9, "latitude": 121, "longitude": 240}
    assert ds["split"].values.tolist() == ["train", "validation", "test"]
    era5 = xr.open_zarr(folder / "era5.zarr", consolidated=False).load()
    for i, cycle in enumerate(ds.time.values):
        t = pd.Timestamp(cycle)
        # 4 steps of x(t+6) = 2x(t) - x(t-6) from (t-30h, t-24h): x(t) = 5 x(t-24h) - 4 x(t-30h)
        for channel in ("z500", "u850"):
            var, level = WB2[channel[0]], int(channel[1:])

            def at(hours, var=var, level=level, t=t):
                field = era5[var].sel(level=level, time=t - pd.Timedelta(hours=hours))
                return field.transpose("latitude", "longitude").values[::-1]

            expected = 5 * at(24).astype(np.float64) - 4 * at(30)
            got = ds["background"].isel(time=i).sel(channel=channel).values
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-2 * np.abs(expected).std())
        # the target is the analysis at the cycle itself
        np.testing.assert_array_equal(
            ds["target"].isel(time=i).sel(channel="z500").values, at_target(era5, t)
        )
    # CPC 2020-07-01 serves the cycle of 2020-07-02 (the last complete day before it)
    gauges = ds["precip_gauges"]
    assert float(gauges.sel(time="2020-07-02").sum()) == pytest.approx(18460, rel=1e-9)
    assert ds["precip"].sel(time="2020-07-02").notnull().sum() > 5000
    assert ds["precip"].sel(time="2020-07-01").isnull().all()
    # the OLR file covers 1979 only: absent (NaN) and reported, never faked
    assert ds["olr"].isnull().all()
    assert "olr: 3 missing" in ds.attrs["missing_modalities"]
    assert "precip: 2 missing" in ds.attrs["missing_modalities"]
    assert abs(float(ds["observation"].notnull().mean()) - 0.05) < 0.005


def at_target(era5, t):
    return era5[WB2["z"]].sel(level=500, time=t).transpose("latitude", "longitude").values[::-1]
