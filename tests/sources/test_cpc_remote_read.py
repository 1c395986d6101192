"""CPC raw files over HTTP go through prepare_remote (retries, reachability) and fail with one
error naming the URL, not an error wrapped in another."""

from __future__ import annotations

import pytest

from dambench.exceptions import DambenchRemoteError
from dambench.sources.cpc_layout import read_bytes
from dambench.sources.httpfs import RetryingHTTPFileSystem
from dambench.standins.server import FaultyHTTPServer

pytest.importorskip("aiohttp")
PAYLOAD = bytes(range(256)) * 64


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setenv("DAMBENCH_RETRY_DELAY", "0.01")
    monkeypatch.setenv("DAMBENCH_READ_TIMEOUT", "0.3")
    monkeypatch.delenv("DAMBENCH_RETRIES", raising=False)
    RetryingHTTPFileSystem.clear_instance_cache()
    yield
    RetryingHTTPFileSystem.clear_instance_cache()


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "PRCP_CU_GAUGE_V1.0GLB_0.50deg.lnx.20230101.RT").write_bytes(PAYLOAD)
    return tmp_path


def test_transient_faults_are_retried(folder):
    with FaultyHTTPServer(folder, fault_rate=0.5, seed=3, slow_seconds=0.6) as server:
        for _ in range(4):
            url = f"{server.url}/PRCP_CU_GAUGE_V1.0GLB_0.50deg.lnx.20230101.RT"
            assert read_bytes(url) == PAYLOAD
        assert server.stats["faults"] >= 1


def test_a_permanent_failure_is_one_error_naming_the_url(folder):
    name = "PRCP_CU_GAUGE_V1.0GLB_0.50deg.lnx.20230101.RT"
    with FaultyHTTPServer(folder, fail_paths=[name], fail_status=403) as server:
        url = f"{server.url}/{name}"
        with pytest.raises(DambenchRemoteError) as info:
            read_bytes(url)
    message = str(info.value)
    assert message.startswith(f"Cannot read {url}: HTTP 403 Forbidden (permanent, not retried)")
    assert message.count("Cannot read") == 1 and "\n" not in message
