"""A real HTTP server on loopback that serves a folder and injects faults: for tests and benchmarks.

:class:`FaultyHTTPServer` serves the files under ``root`` at ``http://127.0.0.1:PORT`` with what
fsspec's HTTP filesystem and Zarr need: ``GET`` with ``Range`` (``bytes=a-b``, ``a-``, ``-n``;
206 with ``Content-Range``, 416 outside the file), ``HEAD`` with ``Content-Length`` and
``Accept-Ranges: bytes``, an HTML listing of links for a folder (what fsspec's ``ls`` parses and
Zarr needs to find the arrays of a store without consolidated metadata), 404 for anything else.
Connections are kept alive (HTTP/1.1).

Faults: a fraction ``fault_rate`` of requests fails transiently, each with one of ``kinds``:
``"503"`` and ``"500"`` (an error status), ``"reset"`` (the connection is reset without an answer)
and ``"slow"`` (the answer starts after ``slow_seconds``, which a client with a shorter read
timeout sees as a timeout). Whether a request fails, and how, is a function of ``seed``, the
request (method, path, range) and how many times that request was seen before, so a run is
reproducible whatever the order threads serve requests in, and a retried request gets a fresh draw.
Requests under ``fail_paths`` (paths relative to ``root``, a file or a folder) always fail with
``fail_status`` (default 503): a permanent fault.

Threads are daemons and idle connections close after :data:`IDLE_TIMEOUT_S`, so the server never
keeps a process alive; use it as a context manager (or ``start()``/``stop()``).
"""

from __future__ import annotations

import hashlib
import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

KINDS = ("503", "500", "reset", "slow")
IDLE_TIMEOUT_S = 10.0
"""Seconds an idle keep-alive connection is held open."""
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class FaultyHTTPServer:
    """Serve ``root`` over HTTP on 127.0.0.1, failing a fraction of requests (module docstring).

    ``url`` is ``"http://127.0.0.1:PORT"`` once started; ``stats`` counts ``requests``,
    ``faults`` (injected, permanent ones included) and ``bytes_sent`` (body bytes).
    """

    def __init__(
        self,
        root,
        *,
        fault_rate: float = 0.0,
        seed: int = 0,
        kinds=KINDS,
        fail_paths=(),
        slow_seconds: float = 2.0,
        fail_status: int = 503,
    ):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ValueError(f"root must be an existing folder; found {root!s}.")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be in [0, 1]; found {fault_rate}.")
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}; found {tuple(kinds)}.")
        self.fault_rate = float(fault_rate)
        self.seed = int(seed)
        self.kinds = tuple(kinds)
        self.fail_paths = tuple(p.strip("/") for p in fail_paths)
        self.slow_seconds = float(slow_seconds)
        self.fail_status = int(fail_status)
        self.url = ""
        self.stats = {"requests": 0, "faults": 0, "bytes_sent": 0}
        self._lock = threading.Lock()
        self._seen: dict[tuple, int] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FaultyHTTPServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> FaultyHTTPServer:
        """Listen on a free port of 127.0.0.1 and serve in a daemon thread; sets ``url``."""
        if self._httpd is not None:
            return self
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        httpd.daemon_threads = True
        httpd.block_on_close = False
        self._httpd = httpd
        self.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close the socket (connections being served end by themselves)."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._httpd = None

    def fault_for(self, method: str, path: str, byte_range: str | None) -> str | None:
        """The fault to inject for this request (``None``: answer it), counting it in ``stats``."""
        key = (method, path, byte_range)
        with self._lock:
            self.stats["requests"] += 1
            seen = self._seen.get(key, 0)
            self._seen[key] = seen + 1
            fault = self._draw(key, seen)
            if fault is not None:
                self.stats["faults"] += 1
        return fault

    def _draw(self, key: tuple, seen: int) -> str | None:
        relative = key[1].strip("/")
        if any(relative == p or relative.startswith(p + "/") for p in self.fail_paths):
            return "permanent"
        digest = hashlib.sha256(repr((self.seed, key, seen)).encode()).digest()
        uniform, pick = struct.unpack("<QQ", digest[:16])
        if uniform / 2**64 >= self.fault_rate:
            return None
        return self.kinds[pick % len(self.kinds)]

    def count_sent(self, n_bytes: int) -> None:
        with self._lock:
            self.stats["bytes_sent"] += n_bytes

    def path_for(self, url_path: str) -> Path | None:
        """The file or folder under ``root`` that ``url_path`` names, or ``None``."""
        candidate = (self.root / unquote(url_path).lstrip("/")).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            return None
        return candidate if candidate.exists() else None


def _handler_class(server: FaultyHTTPServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_FaultyHandler):
        owner = server

    return Handler


class _FaultyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S
    owner: FaultyHTTPServer

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        """Quiet: tests and benchmarks read ``stats`` instead."""

    def do_HEAD(self):  # noqa: N802 - http.server's naming
        self._answer(send_body=False)

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        fault = self.owner.fault_for(self.command, path, self.headers.get("Range"))
        if fault == "reset":
            self._reset()
            return
        if fault == "slow":
            time.sleep(self.owner.slow_seconds)
        elif fault is not None:
            status = self.owner.fail_status if fault == "permanent" else int(fault)
            self._send_status(status, send_body)
            return
        found = self.owner.path_for(path)
        if found is None:
            self._send_status(404, send_body)
        elif found.is_dir():
            self._send_listing(found, send_body)
        else:
            self._send_file(found, send_body)

    def _send_listing(self, folder: Path, send_body: bool) -> None:
        base = urlsplit(self.path).path.rstrip("/") + "/"
        links = "".join(
            f'<a href="{quote(base + entry.name)}{"/" * entry.is_dir()}">{entry.name}</a>\n'
            for entry in sorted(folder.iterdir())
        )
        body = f"<html><body>\n{links}</body></html>\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self._write(body)

    def _send_file(self, path: Path, send_body: bool) -> None:
        size = path.stat().st_size
        span = _parse_range(self.headers.get("Range"), size)
        if span == "invalid":
            self._send_status(416, send_body, {"Content-Range": f"bytes */{size}"})
            return
        start, stop = span if span else (0, size)
        self.send_response(206 if span else 200)
        if span:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(stop - start))
        self.end_headers()
        if send_body:
            with open(path, "rb") as handle:
                handle.seek(start)
                body = handle.read(stop - start)
            self._write(body)

    def _send_status(self, status: int, send_body: bool, headers: dict | None = None) -> None:
        body = f"{status} {self.responses.get(status, ('',))[0]}\n".encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self._write(body)

    def _write(self, body: bytes) -> None:
        self.owner.count_sent(len(body))  # before the client can see it: counts never lag
        try:
            self.wfile.write(body)
        except OSError:  # the client gave up (a timeout it saw): nothing was sent
            self.owner.count_sent(-len(body))
            self.close_connection = True

    def _reset(self) -> None:
        """Close the connection with a TCP reset and no answer."""
        self.close_connection = True
        try:
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        except OSError:
            pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except OSError:  # a client that went away (after a slow answer or a reset)
            self.close_connection = True


def _parse_range(header: str | None, size: int):
    """``(start, stop)`` of a ``Range`` header, ``None`` without one, ``"invalid"`` when it
    cannot be served (multiple ranges are not supported and read as invalid)."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return "invalid"
    first, last = match.groups()
    if first == "":
        start, stop = max(size - int(last), 0), size
    else:
        start = int(first)
        stop = size if last == "" else min(int(last) + 1, size)
    if start >= size or stop <= start:
        return "invalid"
    return start, stop
