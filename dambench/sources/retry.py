"""Retries with exponential backoff and jitter for remote reads, and what counts as transient.

Transient (retried): HTTP 5xx, 429 and 408 answers, timeouts, refused, reset or aborted
connections, a server that disconnects or breaks off a body, and temporary DNS failures.
Permanent (raised at once): every other HTTP 4xx answer (404 stays a ``FileNotFoundError``, as
fsspec and zarr expect), a host name that does not exist, and any other error.

The budget comes from the environment, read at each call:

``DAMBENCH_RETRIES``
    retries after the first attempt (default 5);
``DAMBENCH_RETRY_DELAY``
    seconds before the first retry, doubled at each further one up to 30 s and multiplied by a
    random factor in [0.5, 1] (default 1.0);
``DAMBENCH_CONNECT_TIMEOUT`` / ``DAMBENCH_READ_TIMEOUT``
    seconds to establish a connection (default 10) and to wait for the next bytes of an answer
    (default 60); both count as transient failures when exceeded.

When the budget is spent, or at once on a permanent failure, a
:class:`~dambench.exceptions.DambenchRemoteError` names the URL and what happened.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from dambench.exceptions import DambenchInputError, DambenchRemoteError

T = TypeVar("T")

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 507, 509, 520, 521, 522, 523, 524})
"""HTTP statuses worth retrying (every 5xx is retried as well)."""
MAX_DELAY_S = 30.0
_SETTINGS = {  # name: (type, default, smallest allowed, what is expected)
    "DAMBENCH_RETRIES": (int, 5, 0, "an integer >= 0"),
    "DAMBENCH_RETRY_DELAY": (float, 1.0, 0.0, "a number of seconds >= 0"),
    "DAMBENCH_CONNECT_TIMEOUT": (float, 10.0, 1e-3, "a number of seconds > 0"),
    "DAMBENCH_READ_TIMEOUT": (float, 60.0, 1e-3, "a number of seconds > 0"),
}
_TRANSIENT_ERROR_NAMES = frozenset(
    {
        "ServerDisconnectedError",
        "ClientPayloadError",
        "ClientConnectionError",
        "ServerTimeoutError",
        "ConnectionTimeoutError",
        "SocketTimeoutError",
        "ClientOSError",
        "ContentLengthError",
        "TransferEncodingError",
        "IncompleteRead",
        "ChunkedEncodingError",
        "ReadTimeout",
        "ConnectTimeout",
    }
)
_TRANSIENT_ERRNOS = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNABORTED, errno.ECONNRESET, errno.ETIMEDOUT}
)
_rng = random.Random()


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a remote read is tried."""

    retries: int
    first_delay_s: float
    connect_timeout_s: float
    read_timeout_s: float

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def delay_s(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed attempt (1-based): exponential,
        capped at :data:`MAX_DELAY_S`, with jitter in [0.5, 1] of that."""
        ceiling = min(MAX_DELAY_S, self.first_delay_s * 2 ** (failures - 1))
        return ceiling * (0.5 + 0.5 * _rng.random())


def policy() -> RetryPolicy:
    """The retry policy set by the environment now (see the module docstring)."""
    return RetryPolicy(
        retries=_setting("DAMBENCH_RETRIES"),
        first_delay_s=_setting("DAMBENCH_RETRY_DELAY"),
        connect_timeout_s=_setting("DAMBENCH_CONNECT_TIMEOUT"),
        read_timeout_s=_setting("DAMBENCH_READ_TIMEOUT"),
    )


def _setting(name: str):
    kind, default, smallest, expected = _SETTINGS[name]
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or value < smallest:
        raise DambenchInputError(f"{name} must be {expected}; found {text!r}.")
    return value


def status_of(err: BaseException) -> int | None:
    """The HTTP status an error reports (aiohttp's ``status``, requests' ``response``), if any."""
    status = getattr(err, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(err, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def transient_reason(err: BaseException) -> str | None:
    """What went wrong, in a few words, when ``err`` is worth retrying; ``None`` otherwise."""
    status = status_of(err)
    if status is not None:
        if status in TRANSIENT_STATUSES or 500 <= status < 600:
            return f"HTTP {status} {_reason_phrase(err)}".strip()
        return None
    if isinstance(err, FileNotFoundError | PermissionError | IsADirectoryError):
        return None
    if isinstance(err, socket.gaierror) or isinstance(
        getattr(err, "os_error", None), socket.gaierror
    ):
        return None if _name_unknown(err) else f"DNS lookup failed ({_brief(err)})"
    if isinstance(err, TimeoutError | asyncio.TimeoutError):
        return f"timed out ({_brief(err)})"
    names = {cls.__name__ for cls in type(err).__mro__}
    if (
        isinstance(err, ConnectionError)
        or names & _TRANSIENT_ERROR_NAMES
        or (isinstance(err, OSError) and err.errno in _TRANSIENT_ERRNOS)
    ):
        return f"connection failed ({_brief(err)})"
    return None


def permanent_reason(err: BaseException) -> str | None:
    """What went wrong when ``err`` is a permanent HTTP answer other than 404 or 416, or a host
    name that does not exist; ``None`` for anything else (raised as it is)."""
    status = status_of(err)
    if status is not None and status not in (404, 416) and transient_reason(err) is None:
        return f"HTTP {status} {_reason_phrase(err)}".strip()
    if _name_unknown(err):
        return f"unknown host ({_brief(err)})"
    return None


def _name_unknown(err: BaseException) -> bool:
    for link in (err, getattr(err, "os_error", None), err.__cause__):
        if isinstance(link, socket.gaierror) and link.errno == socket.EAI_NONAME:
            return True
    return False


def _reason_phrase(err: BaseException) -> str:
    message = getattr(err, "message", None) or getattr(err, "reason", None) or ""
    return str(message).splitlines()[0] if str(message).strip() else ""


def _brief(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def retries_exhausted(url: str, reason: str, attempts: int) -> DambenchRemoteError:
    """The error for ``url`` after ``attempts`` transient failures, the last being ``reason``."""
    return DambenchRemoteError(
        f"Cannot read {url}: {reason}, still failing after {attempts} attempts with backoff "
        "(transient failures; DAMBENCH_RETRIES and DAMBENCH_RETRY_DELAY set the budget). "
        "Check the network and the server, then run again: a build resumes where it stopped."
    )


def permanent_failure(url: str, reason: str) -> DambenchRemoteError:
    """The error for ``url`` after a permanent failure ``reason`` (not retried)."""
    return DambenchRemoteError(
        f"Cannot read {url}: {reason} (permanent, not retried). Check the URL, the network and "
        "your access to it, or download the file and pass its local path."
    )


async def retry_async(url: str, call: Callable[[], Awaitable[T]]) -> T:
    """``await call()``, retried on transient failures under :func:`policy`.

    Raises :class:`~dambench.exceptions.DambenchRemoteError` naming ``url`` on a permanent
    failure (other than 404, which stays ``FileNotFoundError``) or when the retries are spent;
    any other error propagates unchanged.
    """
    rules = policy()
    for failures in range(1, rules.attempts):
        try:
            return await call()
        except Exception as err:  # noqa: BLE001 - classified: re-raised unless transient
            _reason_or_raise(url, err)
        await asyncio.sleep(rules.delay_s(failures))
    try:
        return await call()
    except Exception as err:  # noqa: BLE001 - classified: re-raised unless transient
        raise retries_exhausted(url, _reason_or_raise(url, err), rules.attempts) from err


def retry_sync(url: str, call: Callable[[], T], attempts: int | None = None) -> T:
    """``call()``, retried on transient failures like :func:`retry_async`, at most ``attempts``
    times when given (and never more than the policy allows)."""
    rules = policy()
    total = min(attempts, rules.attempts) if attempts else rules.attempts
    for failures in range(1, total):
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - classified: re-raised unless transient
            _reason_or_raise(url, err)
        time.sleep(rules.delay_s(failures))
    try:
        return call()
    except Exception as err:  # noqa: BLE001 - classified: re-raised unless transient
        raise retries_exhausted(url, _reason_or_raise(url, err), total) from err


def _reason_or_raise(url: str, err: Exception) -> str:
    """The transient reason of ``err``; raises the error to report for anything else."""
    if isinstance(err, DambenchRemoteError):
        raise err
    reason = transient_reason(err)
    if reason is not None:
        return reason
    permanent = permanent_reason(err)
    if permanent is not None:
        raise permanent_failure(url, permanent) from err
    if status_of(err) == 404:
        raise FileNotFoundError(url) from err
    raise err
