"""Remote reads against a real loopback HTTP server that injects faults: transient failures are
retried and the data read equals the local files; permanent ones and spent retries raise one line
naming the URL; missing filesystems name the remote extra; unreachable hosts fail in seconds."""

import errno
import socket
import time

import aiohttp
import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from fsspec.registry import _registry, known_implementations

from dambench.exceptions import (
    DambenchInputError,
    DambenchRemoteError,
    DambenchSourceError,
    MissingDependencyError,
)
from dambench.sources import base, remote, retry
from dambench.sources.base import cache_root, local_copy, open_dataset_any
from dambench.sources.httpfs import RetryingHTTPFileSystem
from dambench.standins.server import FaultyHTTPServer


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """Small delays and a short read timeout (the server's slow answers take 0.6 s)."""
    monkeypatch.setenv("DAMBENCH_RETRY_DELAY", "0.01")
    monkeypatch.setenv("DAMBENCH_READ_TIMEOUT", "0.3")
    monkeypatch.delenv("DAMBENCH_RETRIES", raising=False)
    RetryingHTTPFileSystem.clear_instance_cache()  # sessions take the timeouts when made
    yield
    RetryingHTTPFileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A chunked Zarr store, a chunked netCDF-4 file and a .npy file."""
    root = tmp_path_factory.mktemp("served")
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {
            "t": (("time", "lat", "lon"), rng.standard_normal((6, 24, 36)).astype("float32")),
            "q": (("time", "lat", "lon"), rng.standard_normal((6, 24, 36))),
        },
        coords={
            "time": pd.date_range("2020-01-01", periods=6, freq="D"),
            "lat": np.linspace(-60.0, 60.0, 24),
            "lon": np.arange(36.0) * 10,
        },
    )
    ds.chunk({"time": 1, "lat": 12, "lon": 18}).to_zarr(root / "store.zarr", consolidated=False)
    ds.to_netcdf(
        root / "file.nc",
        engine="h5netcdf",
        encoding={name: {"chunksizes": (1, 24, 36)} for name in ds.data_vars},
    )
    np.save(root / "stats.npy", rng.standard_normal(69).astype("float32"))
    return root


def served(files, **kwargs):
    return FaultyHTTPServer(files, slow_seconds=0.6, **kwargs)


def test_zarr_store_with_transient_faults_reads_like_the_local_store(files):
    local = xr.open_zarr(files / "store.zarr", consolidated=False).load()
    with served(files, fault_rate=0.1, seed=1) as server:
        got = open_dataset_any(f"{server.url}/store.zarr").load()
        stats = dict(server.stats)
    xr.testing.assert_identical(got, local)
    assert stats["faults"] >= 3 and stats["faults"] / stats["requests"] >= 0.05


def test_netcdf_file_with_transient_faults_reads_like_the_local_file(files):
    local = xr.open_dataset(files / "file.nc").load()
    with served(files, fault_rate=0.2, seed=2) as server:
        got = open_dataset_any(f"{server.url}/file.nc").load()
        stats = dict(server.stats)
    xr.testing.assert_identical(got, local)
    assert stats["faults"] >= 1


def test_download_with_transient_faults_is_byte_identical(files, tmp_path):
    with served(files, fault_rate=0.5, seed=3) as server:
        path = local_copy(f"{server.url}/stats.npy", cache_dir=tmp_path)
        assert server.stats["faults"] >= 1
    assert path.read_bytes() == (files / "stats.npy").read_bytes()


@pytest.mark.parametrize("kind", ["503", "500", "reset", "slow"])
def test_each_fault_kind_is_retried(files, kind):
    with served(files, fault_rate=0.3, seed=4, kinds=(kind,)) as server:
        fs = fsspec.filesystem("http")
        for start in range(0, 4000, 500):
            data = fs.cat_file(f"{server.url}/file.nc", start=start, end=start + 500)
            assert data == (files / "file.nc").read_bytes()[start : start + 500]
        assert server.stats["faults"] >= 1


def test_404_is_not_retried_and_names_the_url(files, tmp_path):
    with served(files) as server:
        url = f"{server.url}/absent.npy"
        with pytest.raises(DambenchSourceError, match="absent.npy") as info:
            local_copy(url, cache_dir=tmp_path)
        assert server.stats["requests"] == 1
        assert url in str(info.value) and "not found" in str(info.value)
        with pytest.raises(DambenchSourceError, match="absent.nc .not found"):
            open_dataset_any(f"{server.url}/absent.nc")
        assert server.stats["requests"] == 2


def test_403_is_permanent_and_not_retried(files, tmp_path):
    with served(files, fail_paths=["stats.npy"], fail_status=403) as server:
        url = f"{server.url}/stats.npy"
        with pytest.raises(DambenchRemoteError) as info:
            local_copy(url, cache_dir=tmp_path)
        # HEAD refused, then GET refused: a server may refuse HEAD alone, never more requests
        assert server.stats["requests"] == 2
    message = str(info.value)
    assert message.startswith(f"Cannot read {url}: HTTP 403 Forbidden (permanent, not retried)")
    assert "\n" not in message


def test_spent_retries_name_the_url_and_the_count(files, tmp_path, monkeypatch):
    monkeypatch.setenv("DAMBENCH_RETRIES", "2")
    with served(files, fail_paths=["file.nc"]) as server:
        url = f"{server.url}/file.nc"
        with pytest.raises(DambenchRemoteError) as info:
            open_dataset_any(url)
        assert server.stats["requests"] == 3
    message = str(info.value)
    assert message.startswith(f"Cannot read {url}: HTTP 503 Service Unavailable")
    assert "after 3 attempts" in message and "\n" not in message


def test_a_chunk_that_keeps_failing_names_its_url_when_read(files):
    chunk = "store.zarr/t/c/4/1/0"
    with served(files, fail_paths=[chunk]) as server:
        ds = open_dataset_any(f"{server.url}/store.zarr")
        ds["t"].isel(time=slice(0, 4)).load()  # other chunks read fine
        with pytest.raises(DambenchRemoteError, match=f"Cannot read {server.url}/{chunk}: HTTP 503"):
            ds["t"].load()
        assert server.stats["faults"] == 6  # the first attempt and 5 retries


def test_unreachable_http_host_fails_in_seconds_naming_the_url(unused_port):
    url = f"http://127.0.0.1:{unused_port}/era5.zarr"
    start = time.monotonic()
    with pytest.raises(DambenchRemoteError, match=f"Cannot read {url}: connection failed"):
        open_dataset_any(url)
    assert time.monotonic() - start < 10


def test_gcs_without_network_fails_fast_with_anonymous_access(monkeypatch, unused_port):
    """gcsfs alone retries a dead network for about 50 s; the connection check answers first."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{unused_port}")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    url = "gs://gcp-public-data-arco-era5/ar/full_37-1h-0p25deg-chunk-1.zarr-v3"
    assert remote.storage_options(url) == {"token": "anon"}
    start = time.monotonic()
    with pytest.raises(DambenchRemoteError, match=f"Cannot read {url}: connection failed"):
        open_dataset_any(url)
    assert time.monotonic() - start < 10


def test_unknown_host_is_permanent(monkeypatch):
    calls = []

    def no_dns(*args, **kwargs):
        calls.append(args)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    url = "https://downloads.example.invalid/olr.day.mean.nc"
    with pytest.raises(DambenchRemoteError, match=f"Cannot read {url}: unknown host"):
        local_copy(url)
    assert len(calls) == 1


@pytest.mark.parametrize(
    "url", ["gs://bucket/era5.zarr", "s3://bucket/file.nc", "https://example.org/era5.zarr"]
)
def test_missing_filesystem_names_the_remote_extra(monkeypatch, url):
    """fsspec raises ImportError when a filesystem's package is absent (simulated here)."""
    protocol = url.split("://")[0]
    monkeypatch.delitem(_registry, protocol, raising=False)
    monkeypatch.setitem(
        known_implementations,
        protocol,
        {"class": "dambench_absent_package.FileSystem", "err": f"Install it for {protocol}"},
    )
    for call in (open_dataset_any, local_copy):
        with pytest.raises(MissingDependencyError) as info:
            call(url)
        message = str(info.value)
        assert "pip install 'dambench[remote]'" in message and url in message
        assert "grib" not in message


def test_http_is_read_through_the_retrying_filesystem():
    assert fsspec.get_filesystem_class("http") is RetryingHTTPFileSystem
    assert fsspec.get_filesystem_class("https") is RetryingHTTPFileSystem


def response_error(status, message=""):
    return aiohttp.ClientResponseError(None, (), status=status, message=message)


@pytest.mark.parametrize(
    "err, transient",
    [
        (response_error(503, "Service Unavailable"), "HTTP 503 Service Unavailable"),
        (response_error(500), "HTTP 500"),
        (response_error(429, "Too Many Requests"), "HTTP 429 Too Many Requests"),
        (response_error(408), "HTTP 408"),
        (aiohttp.ServerDisconnectedError(), "connection failed"),
        (aiohttp.ClientPayloadError("cut"), "connection failed"),
        (ConnectionResetError(errno.ECONNRESET, "reset"), "connection failed"),
        (ConnectionAbortedError(errno.ECONNABORTED, "aborted"), "connection failed"),
        (TimeoutError("slow"), "timed out"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "connection failed"),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), "DNS lookup failed"),
        (response_error(404), None),
        (response_error(403), None),
        (FileNotFoundError("x"), None),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), None),
        (ValueError("bad"), None),
    ],
)
def test_what_is_transient(err, transient):
    reason = retry.transient_reason(err)
    assert reason == transient if transient is None else reason.startswith(transient)


def test_what_is_permanent():
    assert retry.permanent_reason(response_error(403, "Forbidden")) == "HTTP 403 Forbidden"
    assert retry.permanent_reason(response_error(401)) == "HTTP 401"
    for not_permanent in (response_error(404), response_error(416), response_error(503)):
        assert retry.permanent_reason(not_permanent) is None
    dns = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert retry.permanent_reason(dns).startswith("unknown host")


def test_backoff_doubles_with_jitter_and_a_ceiling(monkeypatch):
    monkeypatch.setenv("DAMBENCH_RETRY_DELAY", "1.5")
    monkeypatch.setenv("DAMBENCH_RETRIES", "7")
    rules = retry.policy()
    assert rules.attempts == 8
    for failures, ceiling in ((1, 1.5), (2, 3.0), (3, 6.0), (6, 30.0), (9, 30.0)):
        delays = [rules.delay_s(failures) for _ in range(200)]
        assert 0.5 * ceiling <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > 0.1 * ceiling  # jittered


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("DAMBENCH_RETRIES", "-1", "an integer >= 0"),
        ("DAMBENCH_RETRIES", "many", "an integer >= 0"),
        ("DAMBENCH_RETRY_DELAY", "-0.5", "a number of seconds >= 0"),
        ("DAMBENCH_READ_TIMEOUT", "0", "a number of seconds > 0"),
        ("DAMBENCH_CONNECT_TIMEOUT", "soon", "a number of seconds > 0"),
    ],
)
def test_bad_retry_settings_are_refused(monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    with pytest.raises(DambenchInputError, match=f"{name} must be {expected}; found '{value}'"):
        retry.policy()


def test_retries_zero_means_one_attempt(files, monkeypatch):
    monkeypatch.setenv("DAMBENCH_RETRIES", "0")
    with served(files, fail_paths=["stats.npy"]) as server:
        with pytest.raises(DambenchRemoteError, match="after 1 attempts"):
            fsspec.filesystem("http").cat_file(f"{server.url}/stats.npy")
        assert server.stats["requests"] == 1


def test_cache_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("DAMBENCH_CACHE", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "own"
    monkeypatch.delenv("DAMBENCH_CACHE")
    assert cache_root() == tmp_path / "xdg" / "dambench"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the XDG rule says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "dambench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == tmp_path / "home" / ".cache" / "dambench"


def test_source_error_is_still_importable_from_base():
    assert base.DambenchSourceError is DambenchSourceError
    assert issubclass(DambenchRemoteError, DambenchSourceError)
    assert issubclass(DambenchRemoteError, OSError)


@pytest.fixture()
def unused_port():
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_arco_store_names_open_as_zarr(files, tmp_path):
    """ARCO-ERA5's store is named ``...chunk-1.zarr-v3``: a Zarr store, locally and over HTTP."""
    import shutil

    shutil.copytree(files / "store.zarr", tmp_path / "full_37-1h-0p25deg-chunk-1.zarr-v3")
    expected = xr.open_zarr(files / "store.zarr", consolidated=False).load()
    local = open_dataset_any(tmp_path / "full_37-1h-0p25deg-chunk-1.zarr-v3").load()
    xr.testing.assert_identical(local, expected)
    with served(tmp_path) as server:
        got = open_dataset_any(f"{server.url}/full_37-1h-0p25deg-chunk-1.zarr-v3").load()
    xr.testing.assert_identical(got, expected)
