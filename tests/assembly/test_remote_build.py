"""era5-fengwu builds whose inputs are served over HTTP by a server that injects faults: transient
faults leave the folder byte-identical; a permanent one stops the build with one line naming the
URL, and once the server is healthy the build resumes and ends byte-identical. Without network,
the shipped config fails in seconds with one line naming the URL it could not reach."""

import hashlib
import json
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from dambench.assembly import build, load_config  # noqa: E402
from dambench.cli import main  # noqa: E402
from dambench.sources.httpfs import RetryingHTTPFileSystem  # noqa: E402
from dambench.standins.rehearsal import (  # noqa: E402
    build_overrides,
    rehearsal_cycles,
    write_rehearsal_inputs,
)
from dambench.standins.server import FaultyHTTPServer  # noqa: E402


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setenv("DAMBENCH_RETRY_DELAY", "0.01")
    monkeypatch.setenv("DAMBENCH_READ_TIMEOUT", "0.5")
    monkeypatch.delenv("DAMBENCH_RETRIES", raising=False)
    RetryingHTTPFileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Stand-ins of the era5-fengwu inputs for 3 cycles at 1.5 degrees (labelled stand-ins)."""
    root = tmp_path_factory.mktemp("served")
    inputs = write_rehearsal_inputs(root, rehearsal_cycles(3), grid_deg=1.5, full_records=False)
    with FaultyHTTPServer(root, slow_seconds=1.0) as server:
        yield server, inputs


def config_file(folder: Path, server, inputs) -> Path:
    """The shipped config on the served stand-ins, one cycle per shard (so a build can stop
    between shards)."""
    config = load_config("era5-fengwu").to_dict()
    config.update(build_overrides(config, inputs, server.url))
    config.update(cycles_per_shard=1, cycles_per_parquet_file=1)
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


def digests(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def fresh_build(config: Path, out: Path, monkeypatch) -> Path:
    """Build with an empty download cache, so every input is fetched from the server."""
    monkeypatch.setenv("DAMBENCH_CACHE", str(out.with_name(out.name + "-cache")))
    return build(config, out, verbose=False)


def test_transient_faults_and_a_resumed_permanent_fault_end_byte_identical(
    served, tmp_path, monkeypatch, capsys
):
    server, inputs = served
    config = config_file(tmp_path, server, inputs)
    reference = digests(fresh_build(config, tmp_path / "reference", monkeypatch))
    assert any(name.endswith("manifest.json") for name in reference)

    server.fault_rate = 0.1  # transient: 503, 500, resets and answers later than the timeout
    before = dict(server.stats)
    faulty = fresh_build(config, tmp_path / "faulty", monkeypatch)
    faults = server.stats["faults"] - before["faults"]
    requests = server.stats["requests"] - before["requests"]
    assert faults >= 5 and faults / requests >= 0.05
    assert digests(faulty) == reference

    # a chunk of the last cycle's ERA5 time keeps failing: the first shards finish, then it stops
    server.fault_rate = 0.0
    chunk = f"{inputs.era5}/geopotential/c/6/0/0/0"
    server.fail_paths = (chunk,)
    out = tmp_path / "resumed"
    monkeypatch.setenv("DAMBENCH_CACHE", str(tmp_path / "resumed-cache"))
    capsys.readouterr()
    assert main(["build", str(config), "--out", str(out), "--quiet"]) == 1
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1
    assert f"Cannot read {server.url}/{chunk}: HTTP 503 Service Unavailable" in stderr
    assert "2022-12-17" in stderr  # the cycle that needed it
    assert not (out / "manifest.json").exists()

    server.fail_paths = ()  # healthy again
    assert main(["build", str(config), "--out", str(out), "--quiet"]) == 0
    assert digests(out) == reference


def test_unreachable_input_fails_fast_with_one_line(tmp_path, capsys, unused_port):
    url = f"http://127.0.0.1:{unused_port}/arco/full_37-1h-0p25deg-chunk-1.zarr-v3"
    start = time.monotonic()
    status = main(["build", "era5-fengwu", "--out", str(tmp_path / "out"), "--era5", url])
    assert status == 1 and time.monotonic() - start < 20
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"Cannot read {url}: connection failed" in lines[0]


def test_shipped_config_without_network_names_the_url_it_could_not_reach(
    tmp_path, capsys, monkeypatch
):
    """No network (every name lookup fails, as on an offline machine; the Hub not in offline
    mode): the shipped defaults get as far as their first remote input and stop in seconds."""

    def no_network(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    config = load_config("era5-fengwu").to_dict()
    urls = [
        value.split("{", 1)[0]
        for value in [*config["inputs"].values(), *config["background"].values()]
        if isinstance(value, str) and "://" in value
    ]
    start = time.monotonic()
    status = main(["build", "era5-fengwu", "--out", str(tmp_path / "out"), "--quiet"])
    assert status == 1 and time.monotonic() - start < 30
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert any(f"Cannot read {url}" in lines[0] for url in urls), lines[0]
    assert "unknown host" in lines[0]


@pytest.fixture()
def unused_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
