"""Which days the remote CPC PSL yearly files hold is read from their metadata by range
requests: the missing-day report downloads no year file; a block downloads only its year."""

from __future__ import annotations

import pandas as pd
import pytest

from dambench.sources.daily import CpcPslYears, OlrDays
from dambench.sources.httpfs import RetryingHTTPFileSystem
from dambench.standins.cpc import write_cpc_standin
from dambench.standins.olr import OLR_FILE, write_olr_standin
from dambench.standins.server import FaultyHTTPServer

pytest.importorskip("aiohttp")
HELD = pd.DatetimeIndex(
    list(pd.date_range("2021-03-01", periods=20))
    + list(pd.date_range("2022-03-01", periods=20))
    + list(pd.date_range("2023-03-01", periods=20))
)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DAMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DAMBENCH_RETRY_DELAY", "0.01")
    RetryingHTTPFileSystem.clear_instance_cache()
    yield tmp_path / "cache" / "downloads"
    RetryingHTTPFileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("psl")
    write_cpc_standin(root, [2021, 2022, 2023], days=HELD)
    write_olr_standin(root, HELD[-1], first_day=HELD[0])
    with FaultyHTTPServer(root, fault_rate=0.1, seed=1, slow_seconds=0.5) as server:
        yield server


def _downloads(folder) -> list:
    """Downloaded files (fsspec's index, named ``cache``, left out)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and p.name != "cache")


def test_available_reads_no_year_file(served, own_cache):
    reader = CpcPslYears(f"{served.url}/precip.{{year}}.nc")
    asked = pd.date_range("2021-02-25", "2023-03-10")
    assert reader.available(asked).equals(HELD[HELD <= asked[-1]])
    assert _downloads(own_cache) == []  # the old code downloaded all three years here


def test_a_block_downloads_only_its_year(served, own_cache):
    reader = CpcPslYears(f"{served.url}/precip.{{year}}.nc")
    reader.available(pd.date_range("2021-01-01", "2023-12-31"))
    field = reader.read(pd.date_range("2022-03-05", periods=3))
    assert field.sizes["time"] == 3
    assert len(_downloads(own_cache)) == 1  # the 2022 file, once


def test_olr_days_from_metadata(served, own_cache):
    reader = OlrDays(f"{served.url}/{OLR_FILE}")
    assert reader.available(HELD[:5]).equals(HELD[:5])
    assert _downloads(own_cache) == []
