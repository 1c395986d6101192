"""Era5Reader reads each chunk once: a chunk holding every level of a time (ARCO-ERA5's layout)
is fetched once for all the channels of its variable, counted on a local HTTP server."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from dambench import schema
from dambench.sources.era5 import Era5Reader, open_era5
from dambench.standins.arco import ARCO_STORE_NAME, write_arco_standin
from dambench.standins.server import FaultyHTTPServer

pytest.importorskip("aiohttp")
TIMES = pd.date_range("2023-01-01", periods=2, freq="6h")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("arco")
    write_arco_standin(root / ARCO_STORE_NAME, TIMES, grid_deg=5.0)
    with FaultyHTTPServer(root) as server:
        yield server, root


def test_each_chunk_is_fetched_once_for_all_its_levels(served):
    server, _ = served
    reader = Era5Reader(f"{server.url}/{ARCO_STORE_NAME}", schema.CHANNELS)
    before = server.stats["requests"]
    field = reader(TIMES[:1])
    fetched = server.stats["requests"] - before
    assert field.sizes == {"time": 1, "channel": 69, "latitude": 37, "longitude": 72}
    # 9 variables, one chunk each for one time; the old per-channel reads took 4 + 5 x 13 = 69
    assert fetched <= 2 * len(schema.VARIABLES), fetched


def test_values_equal_the_lazy_reader(served):
    _, root = served
    store = root / ARCO_STORE_NAME
    reader = Era5Reader(store, ["t2m", "z500", "q850", "t50"])
    got = reader(TIMES[1:])
    expected = open_era5(xr.open_zarr(store), channels=reader.channels, grid=None).isel(time=[1])
    np.testing.assert_array_equal(got.values, expected.values)
    assert list(got["channel"].values) == ["t2m", "z500", "q850", "t50"]
    assert got.dtype == expected.dtype and got.attrs == {"source": str(store)}
