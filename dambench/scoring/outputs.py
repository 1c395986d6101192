"""Result folders that are whole: one evaluation per folder at a time, all outputs or none.

An evaluation's outputs (:data:`OUTPUT_NAMES`) are written into a hidden staging folder beside
``out`` (``.NAME.dambench-staging-PID``) and only then made visible, all at once: the staging
folder and ``out`` are exchanged in one ``renameat2(RENAME_EXCHANGE)`` call where the system has
it (Linux), else ``out`` is renamed aside and the staging folder renamed into its place (a kill
between the two leaves ``out`` missing and the earlier results beside it, which the next
evaluation puts back). Entries of ``out`` that an evaluation does not write (a model's
``predictions/`` written before scoring, say) are carried into the staging folder as hard links
(copies across file systems) before the exchange. So at every moment ``out`` holds either the
earlier run's complete outputs or the new run's, never a mixture, and a full disk leaves ``out``
as it was.

One evaluation per folder: a lock file ``.NAME.dambench-evaluate.lock`` beside ``out`` (beside,
because ``out`` itself is exchanged) holds the holder's PID and host, with the build lock's
mechanism (:class:`dambench.assembly.lock.BuildLock`): a live holder refuses a second evaluation,
a dead holder's lock is taken over. A folder holding earlier results is refused unless
``overwrite``.
"""

from __future__ import annotations

import ctypes
import errno
import io
import logging
import os
import shutil
from pathlib import Path

from dambench.assembly.lock import BuildLock, DambenchBuildError, describe_holder
from dambench.exceptions import DambenchError, DambenchInputError

logger = logging.getLogger(__name__)

OUTPUT_NAMES = (
    "scores.parquet",
    "summary.json",
    "table3.md",
    "ensemble.md",
    "channels.md",
    "regions.md",
    "observed.md",
    "maps.png",
    "spectra.png",
    "per_cycle_mse.png",
)
"""Every file an evaluation may write into its ``out`` folder (the set replaced as a whole)."""
LEADERBOARD_NAMES = (
    "leaderboard.md",
    "leaderboard.json",
    "observed.md",
    "scorecard.md",
    "scorecard.png",
)
"""Every file ``dambench leaderboard`` writes into its ``out`` folder."""
STAGING = ".dambench-staging-"
PREVIOUS = ".dambench-previous-"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DambenchOutputError(DambenchError, OSError):
    """Outputs could not be written (a full disk, say); the folder was left as it was."""


class EvaluationLock(BuildLock):
    """:class:`~dambench.assembly.lock.BuildLock`'s exclusive lock, on the file
    ``.NAME.dambench-evaluate.lock`` beside the result folder ``out``."""

    def __init__(self, out: str | os.PathLike, wait_s: float = 0.0):
        out = Path(out).absolute()
        super().__init__(out.parent, wait_s=wait_s)
        self.out = out
        self.path = out.parent / f".{out.name}.dambench-evaluate.lock"

    def _refuse(self) -> DambenchBuildError:
        return DambenchBuildError(
            f"{self.out} is being written by another evaluation, {describe_holder(self.path)} "
            f"(lock file {self.path}). Wait for it to finish, or choose another --out."
        )


def earlier_results(out: Path, names: tuple[str, ...] = OUTPUT_NAMES) -> list[str]:
    """The ``names`` (default :data:`OUTPUT_NAMES`) already in ``out``."""
    return [name for name in names if (out / name).exists()]


def is_no_space(err: BaseException) -> bool:
    """True for a full disk or quota (errno ENOSPC/EDQUOT, or a message saying so)."""
    return getattr(err, "errno", None) in _NO_SPACE or "No space left" in str(err)


class ResultFolder:
    """Context manager for writing one evaluation's outputs into ``out`` as a whole.

    Inside the ``with`` block, :meth:`write` puts files in the staging folder; :meth:`commit`
    makes them visible at once. Leaving the block without a commit (an error) removes the
    staging folder and leaves ``out`` as it was.

    Parameters
    ----------
    out
        The result folder (created when missing).
    overwrite
        Replace earlier results in ``out``; without it a folder holding any of ``names`` is
        refused.
    names
        The files this kind of result consists of (:data:`OUTPUT_NAMES`,
        :data:`LEADERBOARD_NAMES`); other entries of ``out`` are carried over untouched.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        *,
        overwrite: bool = False,
        names: tuple[str, ...] = OUTPUT_NAMES,
    ):
        self.out = Path(out).absolute()
        self.overwrite = overwrite
        self.names = names
        self.staging = self.out.parent / f".{self.out.name}{STAGING}{os.getpid()}"
        self._lock = EvaluationLock(self.out)
        self.written: list[Path] = []

    def __enter__(self) -> ResultFolder:
        self._lock.__enter__()
        try:
            self._recover()
            self.check_free()
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging.mkdir()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self._lock.release()

    def check_free(self) -> None:
        """Refuse a folder holding earlier results unless ``overwrite``."""
        found = earlier_results(self.out, self.names) if self.out.is_dir() else []
        if found and not self.overwrite:
            raise DambenchInputError(
                f"{self.out} holds earlier results ({', '.join(found)}); pass --overwrite "
                "(overwrite=True) to replace them as a whole, or choose another --out."
            )

    def _recover(self) -> None:
        """Clear what a killed evaluation left beside ``out`` (we hold the lock): its staging
        folder is removed; earlier results renamed aside are put back if ``out`` is missing."""
        prefix = f".{self.out.name}"
        for leftover in sorted(self.out.parent.glob(f"{prefix}{PREVIOUS}*")):
            if not self.out.exists():
                logger.warning("Putting back %s, left by an interrupted evaluation.", leftover)
                os.rename(leftover, self.out)
            else:
                shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.out.parent.glob(f"{prefix}{STAGING}*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def write(self, name: str, data: bytes) -> Path:
        """Write ``data`` as ``name`` in the staging folder; a full disk ends in one
        :class:`DambenchOutputError` naming the file and asking for free space."""
        if name not in self.names:
            raise ValueError(f"{name!r} is not one of the outputs {self.names}.")
        path = self.staging / name
        try:
            with open(path, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            raise self.no_space(name, err) if is_no_space(err) else err
        self.written.append(self.out / name)
        return self.out / name

    def no_space(self, name: str, err: OSError) -> DambenchOutputError:
        """The one-line error of a full disk while writing ``name``."""
        return DambenchOutputError(
            f"No space left writing {self.out / name} ({err.strerror or err}): free space on "
            f"the disk of {self.out.parent} and run again; {self.out} was left as it was."
        )

    def commit(self) -> list[Path]:
        """Carry ``out``'s other entries into the staging folder, then exchange the two."""
        try:
            if self.out.exists():
                self._carry_others()
            _exchange_or_replace(self.staging, self.out)
        except OSError as err:
            if is_no_space(err):
                raise self.no_space("(the carried entries)", err) from err
            raise
        return list(self.written)

    def _carry_others(self) -> None:
        for entry in self.out.iterdir():
            if entry.name in self.names:
                continue
            target = self.staging / entry.name
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, target, copy_function=_link_or_copy, symlinks=True)
            else:
                _link_or_copy(entry, target)


def _link_or_copy(source, target) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux ``renameat2``); False where unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    function = getattr(libc, "renameat2", None)
    if function is None:
        return False
    status = function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if status == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _exchange_or_replace(staging: Path, out: Path) -> None:
    """Make ``staging`` the folder ``out``; the earlier ``out`` is removed afterwards."""
    if not out.exists():
        os.rename(staging, out)
        return
    if _rename_exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)
        return
    previous = out.parent / f".{out.name}{PREVIOUS}{os.getpid()}"
    os.rename(out, previous)
    os.rename(staging, out)
    shutil.rmtree(previous, ignore_errors=True)


def figure_bytes(fig, run_id: str) -> bytes:
    """A matplotlib figure as PNG bytes, with the evaluation's run id in its metadata."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Description": f"dambench run {run_id}"})
    return buffer.getvalue()
