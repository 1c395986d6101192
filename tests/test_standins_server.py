"""FaultyHTTPServer: a real loopback HTTP server with ranges, listings and injected faults, checked
with the standard library's own HTTP client (independent of dambench's readers)."""

import http.client
import socket
import time

import pytest

from dambench.standins.server import FaultyHTTPServer

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "root"
    (root / "store.zarr" / "t").mkdir(parents=True)
    (root / "data.bin").write_bytes(PAYLOAD)
    (root / "store.zarr" / "zarr.json").write_text("{}")
    (tmp_path / "outside.bin").write_bytes(b"not served")
    return root


def request(server, path, method="GET", headers=None, timeout=5.0):
    port = int(server.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_get_head_ranges_and_missing(folder):
    with FaultyHTTPServer(folder) as server:
        assert server.url.startswith("http://127.0.0.1:")
        status, headers, body = request(server, "/data.bin")
        assert (status, body) == (200, PAYLOAD)
        status, headers, body = request(server, "/data.bin", "HEAD")
        assert (status, headers["Content-Length"], body) == (200, str(len(PAYLOAD)), b"")
        assert headers["Accept-Ranges"] == "bytes"
        for spec, part in (
            ("bytes=10-19", PAYLOAD[10:20]),
            ("bytes=10000-", PAYLOAD[10000:]),
            ("bytes=-7", PAYLOAD[-7:]),
            ("bytes=10200-99999", PAYLOAD[10200:]),
        ):
            status, headers, body = request(server, "/data.bin", headers={"Range": spec})
            assert (status, body) == (206, part), spec
            assert headers["Content-Range"].endswith(f"/{len(PAYLOAD)}")
        status, headers, _ = request(server, "/data.bin", headers={"Range": "bytes=20000-"})
        assert (status, headers["Content-Range"]) == (416, f"bytes */{len(PAYLOAD)}")
        assert request(server, "/absent.bin")[0] == 404
        assert request(server, "/../outside.bin")[0] == 404
        assert server.stats["faults"] == 0
        assert server.stats["requests"] == 9
        sent = len(PAYLOAD) + 10 + 240 + 7 + 40
        assert server.stats["bytes_sent"] >= sent


def test_folder_listing_links_its_entries(folder):
    with FaultyHTTPServer(folder) as server:
        status, headers, body = request(server, "/store.zarr")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'href="/store.zarr/t/"' in body and b'href="/store.zarr/zarr.json"' in body


def test_fault_rate_and_kinds_follow_the_seed_not_the_order(folder):
    def faults(order, seed):
        server = FaultyHTTPServer(folder, fault_rate=0.2, seed=seed, kinds=("503", "500"))
        return {key: server.fault_for("GET", f"/f{key}", None) for key in order}

    keys = list(range(2000))
    forward = faults(keys, seed=7)
    assert forward == faults(keys[::-1], seed=7)
    assert forward != faults(keys, seed=8)
    rate = sum(v is not None for v in forward.values()) / len(keys)
    assert 0.17 < rate < 0.23
    assert {v for v in forward.values() if v} == {"503", "500"}


def test_a_repeated_request_gets_a_fresh_draw(folder):
    server = FaultyHTTPServer(folder, fault_rate=0.5, seed=1)
    draws = [server.fault_for("GET", "/data.bin", "bytes=0-9") for _ in range(40)]
    assert any(d is None for d in draws) and any(d is not None for d in draws)
    assert server.stats["requests"] == 40
    assert server.stats["faults"] == sum(d is not None for d in draws)


def test_status_faults_are_served(folder):
    with FaultyHTTPServer(folder, fault_rate=1.0, kinds=("500",)) as server:
        assert request(server, "/data.bin")[0] == 500
        body = b"500 Internal Server Error\n"
        assert server.stats == {"requests": 1, "faults": 1, "bytes_sent": len(body)}


def test_reset_closes_without_an_answer(folder):
    with FaultyHTTPServer(folder, fault_rate=1.0, kinds=("reset",)) as server:
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
            request(server, "/data.bin")
        assert server.stats["faults"] == 1


def test_slow_answers_arrive_late(folder):
    with FaultyHTTPServer(folder, fault_rate=1.0, kinds=("slow",), slow_seconds=0.4) as server:
        start = time.monotonic()
        status, _, body = request(server, "/data.bin")
        assert time.monotonic() - start >= 0.4
        assert (status, body) == (200, PAYLOAD)
        with pytest.raises(TimeoutError):
            request(server, "/data.bin", timeout=0.1)


def test_fail_paths_always_fail(folder):
    with FaultyHTTPServer(folder, fail_paths=["store.zarr"], fail_status=403) as server:
        for _ in range(3):
            assert request(server, "/store.zarr/zarr.json")[0] == 403
        assert request(server, "/data.bin")[0] == 200
        assert server.stats["faults"] == 3


def test_stop_frees_the_port(folder):
    with FaultyHTTPServer(folder) as server:
        port = int(server.url.rsplit(":", 1)[1])
        assert request(server, "/data.bin")[0] == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fault_rate": 1.5}, "fault_rate must be in"),
        ({"kinds": ("404",)}, "kinds must be a non-empty subset"),
        ({"kinds": ()}, "kinds must be a non-empty subset"),
    ],
)
def test_bad_settings_are_refused(folder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        FaultyHTTPServer(folder, **kwargs)


def test_root_must_be_a_folder(tmp_path):
    with pytest.raises(ValueError, match="root must be an existing folder"):
        FaultyHTTPServer(tmp_path / "absent")
