"""Write failures in a build folder, explained in one line: which file, why, and the remedy.

A read-only folder (permissions, a read-only mount) or a full disk (or quota) raises an
``OSError`` deep inside a writer. :func:`explain` turns it into a
:class:`~dambench.assembly.lock.DambenchBuildError` naming the file and what to do; every write is
atomic (a temporary name, then a rename), so what was already written stays whole and the build
resumes once the cause is fixed.
"""

from __future__ import annotations

import errno
from pathlib import Path

from dambench.assembly.lock import DambenchBuildError

FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded"}
"""Errors of a full disk: whatever file they name, the remedy is space."""
UNWRITABLE = {
    errno.EACCES: "permission denied",
    errno.EPERM: "the operation is not permitted",
    errno.EROFS: "the filesystem is read-only",
}
"""Errors of a folder this process may not write: explained when they name a file of the folder."""


def is_unwritable(err: BaseException, out: Path) -> bool:
    """True when ``err`` is an :data:`UNWRITABLE` error on ``out``, a file inside it or a folder
    above it (creating ``out`` itself)."""
    return (
        isinstance(err, OSError)
        and err.errno in UNWRITABLE
        and any(_inside(name, out) for name in (err.filename, err.filename2) if name)
    )


def explain(err: OSError, out: Path) -> DambenchBuildError | None:
    """The one-line error of a write failure in the build folder ``out``, or ``None`` when ``err``
    is not one (e.g. a permission error on an input file, which is left as it is)."""
    where = err.filename or out
    if err.errno in FULL:
        return DambenchBuildError(
            f"Cannot write {where}: {FULL[err.errno]} holding {out}. Free space there (or build "
            "into a folder on a larger filesystem) and run the same build again: it resumes where "
            "it stopped; nothing written so far is lost or corrupted."
        )
    if is_unwritable(err, out):
        return DambenchBuildError(
            f"Cannot write {where}: {UNWRITABLE[err.errno]}; {out} is not writable by this "
            "process. Make it writable (chmod u+w, chown, or a read-write mount) or choose "
            "another output folder, then run the same build again."
        )
    return None


def _inside(name, out: Path) -> bool:
    """``name`` is ``out``, inside it, or one of its parent folders."""
    path, folder = Path(str(name)).absolute(), Path(out).absolute()
    return path == folder or folder in path.parents or path in folder.parents
