"""One builder per folder: an exclusive lock file naming its holder.

``FOLDER/.dambench-build.lock`` holds the holder's PID, host and start time (JSON). Exclusivity
comes from an advisory ``flock`` on the open file, which the operating system releases when the
holder exits for any reason (a kill included): a lock file whose lock is free is stale, and the
next builder takes it over and says so. A holder removes the file while still holding the lock;
a waiter that locked the removed file notices (the path no longer names the file it locked) and
tries again, so two builders never both hold the lock.

Where ``fcntl`` is missing (Windows), the file is created exclusively instead and a lock of a dead
PID on the same host is taken over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from dambench.exceptions import DambenchError

logger = logging.getLogger(__name__)

LOCK_NAME = ".dambench-build.lock"


class DambenchBuildError(DambenchError, RuntimeError):
    """A build cannot proceed (a folder holding something else, another builder, a failed task)."""


def describe_holder(path: Path) -> str:
    """``PID 123 on host h since 2026-01-01T00:00:00`` from a lock file, or ``an unknown
    process`` when it is empty or unreadable."""
    try:
        info = json.loads(path.read_text())
        return f"PID {info['pid']} on host {info['host']} since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"


class BuildLock:
    """Context manager holding ``folder/.dambench-build.lock``; creates ``folder``.

    Parameters
    ----------
    folder
        The build folder.
    wait_s
        Seconds to wait for a live holder to finish (default: refuse at once).

    Raises
    ------
    DambenchBuildError
        On entry, when another live process holds the lock (naming its PID and host).
    """

    def __init__(self, folder: str | os.PathLike, wait_s: float = 0.0):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.wait_s = wait_s
        self._fd: int | None = None

    def __enter__(self) -> BuildLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            self._acquire_exclusive_create()
        else:
            self._acquire_flock(fcntl)
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _refuse(self) -> DambenchBuildError:
        return DambenchBuildError(
            f"{self.folder} is being built by {describe_holder(self.path)} (lock file "
            f"{self.path}). Wait for that build to finish, or stop it and run the build again."
        )

    def _acquire_flock(self, fcntl) -> None:
        deadline = time.monotonic() + self.wait_s
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise self._refuse() from None
                time.sleep(0.2)
                continue
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed the file we locked: lock the new one
        self._fd = fd
        self._write_holder(fd)

    def _acquire_exclusive_create(self) -> None:  # pragma: no cover - Windows
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if not self._stale_on_this_host():
                    raise self._refuse() from None
                self.path.unlink(missing_ok=True)
                continue
            self._fd = fd
            self._write_holder(fd)
            return
        raise self._refuse()

    def _stale_on_this_host(self) -> bool:  # pragma: no cover - Windows
        try:
            info = json.loads(self.path.read_text())
            if info["host"] != socket.gethostname():
                return False
            os.kill(int(info["pid"]), 0)
        except ProcessLookupError:
            return True
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return False

    def _write_holder(self, fd: int) -> None:
        previous = os.read(fd, 4096)
        if previous.strip():
            logger.warning(
                "Taking over the stale build lock %s of %s (that process has ended).",
                self.path,
                describe_holder(self.path),
            )
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)

    def release(self) -> None:
        """Remove the lock file, then release the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
