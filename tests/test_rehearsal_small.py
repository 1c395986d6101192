"""The production rehearsal at a small size: the shipped era5-fengwu config at 69 channels on
stand-ins of its remote inputs (ARCO-ERA5 layout and name, CPC PSL yearly files, NOAA OLR, FengWu's
ONNX contract) on the 1.5 degree grid, 3 cycles, served over HTTP with 5 % of the requests failing
transiently: it builds, verifies and loads, identically to a build from the same files on disk.
``benchmarks/bench_rehearsal.py`` runs the same pipeline at full size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from dambench.assembly import build, load_config  # noqa: E402
from dambench.load import open_dataset  # noqa: E402
from dambench.standins import arco, fengwu  # noqa: E402
from dambench.standins.rehearsal import (  # noqa: E402
    build_overrides,
    rehearsal_cycles,
    rehearsal_splits,
    write_rehearsal_inputs,
)
from dambench.standins.server import FaultyHTTPServer  # noqa: E402
from dambench.verify import verify  # noqa: E402

FAULT_RATE = 0.05


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    inputs = write_rehearsal_inputs(root, rehearsal_cycles(3), grid_deg=1.5, full_records=False)
    return root, inputs


@pytest.fixture(scope="module")
def builds(served, tmp_path_factory):
    """The same config built from the files on disk and over the faulty server."""
    root, inputs = served
    folder = tmp_path_factory.mktemp("builds")
    shipped = load_config("era5-fengwu").to_dict()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAMBENCH_RETRY_DELAY", "0.01")
        patch.setenv("DAMBENCH_CACHE", str(folder / "cache"))
        local = build(
            "era5-fengwu",
            folder / "local",
            overrides=build_overrides(shipped, inputs, str(root)),
            verbose=False,
        )
        with FaultyHTTPServer(root, fault_rate=FAULT_RATE, seed=3, slow_seconds=0.05) as server:
            overrides = build_overrides(shipped, inputs, server.url)
            remote = build("era5-fengwu", folder / "remote", overrides=overrides, verbose=False)
            stats = dict(server.stats)
    return local, remote, stats, overrides


def test_standins_have_real_layouts_and_labels(served):
    root, inputs = served
    store = xr.open_zarr(root / inputs.era5)
    assert inputs.era5.endswith(arco.ARCO_STORE_NAME)
    assert store["geopotential"].dims == ("time", "level", "latitude", "longitude")
    assert store["geopotential"].encoding["chunks"] == (1, 13, 121, 240)
    assert store["latitude"].values[0] == 90 and store["longitude"].values[0] == 0
    assert store.attrs["standin"] == "true" and "not data" in store.attrs["note"]
    # each cycle and its forecast's initial states (t - 30 h, t - 24 h) and nothing else
    assert len(store["time"]) == 2 * len(inputs.cycles) + 1
    for name in ("cpc/precip.2022.nc", "olr/olr.day.mean.nc"):
        with xr.open_dataset(root / name, engine="h5netcdf") as ds:
            assert ds.attrs["standin"] == "true"
    label = json.loads((root / "fengwu" / "1.5deg" / fengwu.LABEL_FILE).read_text())
    assert label["standin"] == "true"
    mean = np.load(root / "fengwu" / "1.5deg" / fengwu.MEAN_FILE)
    assert mean.shape == (69,) and mean.dtype == np.float32


def test_small_rehearsal_over_faulty_http_builds_verifies_loads(builds):
    local, remote, stats, overrides = builds
    assert overrides["inputs"]["era5"].startswith("http://127.0.0.1:")
    assert stats["faults"] >= 1 and stats["requests"] > 20
    assert verify(remote).ok
    ds = open_dataset(remote).load()
    assert ds.sizes == {"time": 3, "channel": 69, "latitude": 121, "longitude": 240}
    assert ds["split"].values.tolist() == ["train", "validation", "test"]
    assert np.isfinite(ds["target"].values).all() and np.isfinite(ds["background"].values).all()
    assert ds["precip"].notnull().any() and ds["olr"].notnull().all()
    expected = open_dataset(local).load()
    for name in ("target", "background", "observation", "precip", "olr"):
        np.testing.assert_array_equal(ds[name].values, expected[name].values)


def test_rehearsal_splits_cover_every_cycle_once():
    cycles = rehearsal_cycles(32)
    dates = rehearsal_splits(cycles)["dates"]
    assert dates == {
        "train": ["2022-12-15", "2022-12-30"],
        "validation": ["2022-12-31", "2023-01-07"],
        "test": ["2023-01-08", "2023-01-15"],
    }
    with pytest.raises(Exception, match="at least 3 cycles"):
        rehearsal_cycles(2)
