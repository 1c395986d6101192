"""Before a remote URL is opened: its filesystem is installed, its host answers, its options.

:func:`prepare_remote` is called by :func:`~dambench.sources.base.open_dataset_any` and
:func:`~dambench.sources.base.local_copy` for every URL with a protocol. It

1. checks that fsspec's filesystem for the protocol can be imported, else raises
   :class:`~dambench.exceptions.MissingDependencyError` naming ``pip install 'dambench[remote]'``;
2. connects once per process to the host that will serve the URL (at most :data:`PROBE_ATTEMPTS`
   tries, each bounded by ``DAMBENCH_CONNECT_TIMEOUT``), so that a machine without network fails
   in seconds with one line naming the URL instead of after the filesystem's own retries (gcsfs:
   six tries over about 50 s); skipped when a proxy is configured, which a direct connection
   would bypass;
3. returns the filesystem options: anonymous access to public buckets (``gs://`` without
   ``GOOGLE_APPLICATION_CREDENTIALS``; ``s3://`` without AWS credentials in the environment),
   which also keeps gcsfs from asking a metadata server for credentials.

:func:`use_retrying_http` makes fsspec read ``http(s)://`` with
:class:`~dambench.sources.httpfs.RetryingHTTPFileSystem`; gcsfs, s3fs and the Hub's filesystem
retry transient failures themselves.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import fsspec

from dambench.exceptions import MissingDependencyError
from dambench.sources.retry import policy, retry_sync

REMOTE_EXTRA = "pip install 'dambench[remote]'"
PROBE_ATTEMPTS = 3
"""Connections tried (with backoff) before a host is declared unreachable."""
_HTTP_CLASS = "dambench.sources.httpfs.RetryingHTTPFileSystem"
_FSSPEC_HTTP_CLASS = "fsspec.implementations.http.HTTPFileSystem"
_PROXY_VARIABLES = (
    "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"
)
_TRUE = ("1", "true", "yes", "on")
_reached: set[tuple[str, int]] = set()


def protocol_of(url: str) -> str:
    """The protocol of ``url`` (``"file"`` for a plain path)."""
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def use_retrying_http() -> None:
    """Register :class:`~dambench.sources.httpfs.RetryingHTTPFileSystem` with fsspec for
    ``http`` and ``https`` (imported when first used, so ``aiohttp`` stays optional). A filesystem
    that someone else registered for these protocols is left in place."""
    for protocol in ("http", "https"):
        current = fsspec.registry.get(protocol)
        if current is None:
            fsspec.register_implementation(
                protocol,
                _HTTP_CLASS,
                clobber=True,
                errtxt=f"Reading {protocol}:// URLs needs aiohttp and requests: {REMOTE_EXTRA}",
            )
        elif f"{current.__module__}.{current.__qualname__}" == _FSSPEC_HTTP_CLASS:
            from dambench.sources.httpfs import RetryingHTTPFileSystem

            fsspec.register_implementation(protocol, RetryingHTTPFileSystem, clobber=True)


def prepare_remote(url: str) -> dict:
    """Check that ``url`` can be opened (filesystem installed, host reachable) and return the
    options to open it with (see the module docstring)."""
    require_filesystem(url)
    ensure_reachable(url)
    return storage_options(url)


def require_filesystem(url: str) -> None:
    """Raise :class:`~dambench.exceptions.MissingDependencyError` naming the extra when fsspec's
    filesystem for the protocol of ``url`` cannot be imported."""
    protocol = protocol_of(url)
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as err:
        raise MissingDependencyError(
            f"Reading {url} needs the {protocol}:// filesystem, which is not installed ({err}); "
            f"install it with: {REMOTE_EXTRA}"
        ) from err


def storage_options(url: str) -> dict:
    """fsspec options for ``url``: anonymous access to public buckets when no credentials are
    configured in the environment; nothing for other protocols."""
    protocol = protocol_of(url)
    if protocol in ("gs", "gcs") and not os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return {"token": "anon"}
    if protocol in ("s3", "s3a") and not (
        os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")
    ):
        return {"anon": True}
    return {}


def endpoint(url: str) -> tuple[str, int] | None:
    """The ``(host, port)`` that serves ``url``, or ``None`` when there is none to check
    (local and in-memory filesystems, the Hub in offline mode)."""
    protocol = protocol_of(url)
    if protocol in ("http", "https"):
        base = url
    elif protocol in ("gs", "gcs"):
        base = os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"
    elif protocol in ("s3", "s3a"):
        base = (
            os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or "https://s3.amazonaws.com"
        )
    elif protocol == "hf" and os.environ.get("HF_HUB_OFFLINE", "").lower() not in _TRUE:
        base = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    else:
        return None
    parts = urlsplit(base if "://" in base else f"http://{base}")
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def ensure_reachable(url: str) -> None:
    """Raise :class:`~dambench.exceptions.DambenchRemoteError` naming ``url`` when its host
    does not accept a TCP connection (see the module docstring); a host reached once in this
    process is not checked again."""
    where = endpoint(url)
    if where is None or where in _reached or any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return

    def connect() -> None:
        with socket.create_connection(where, timeout=policy().connect_timeout_s):
            pass

    retry_sync(url, connect, attempts=PROBE_ATTEMPTS)
    _reached.add(where)
