"""Shard tasks: plain, picklable descriptions of a shard's work, run by a module-level function.

A :class:`ShardTask` names the config (as a plain dict), the absolute paths of the store and of
the folder of finished-shard markers, and the shard's cycles; no recipe, source or ONNX session
travels with it. :func:`run_shard` computes the shard's arrays, writes its region of the store and
leaves its marker. The recipe comes from :func:`recipe_for`, a per-process cache keyed by the
config's digest: a dask.distributed worker process makes the recipe (opens its sources and its
forecaster) on its first shard and reuses it for the next ones; the builder's own process reuses
the recipe it planned with (:func:`serving`).

A failure while computing a shard is re-raised as one :class:`DambenchBuildError` naming the
shard's cycles and the original error (chained where the process allows it); nothing of that
shard is marked finished, so the build resumes at it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dambench.assembly import writers
from dambench.assembly.config import BuildConfig
from dambench.assembly.lock import DambenchBuildError
from dambench.assembly.recipes import make_recipe

MAX_RECIPES = 2
"""Recipes a process keeps (least recently used first out): a worker serving two builds in turn
does not reopen its sources at every shard."""

_RECIPES: OrderedDict[str, Any] = OrderedDict()
_RECIPES_LOCK = threading.Lock()


@dataclass(frozen=True)
class ShardTask:
    """What one shard task needs, as plain values (it pickles to a few kilobytes).

    Attributes
    ----------
    config
        The build config as :meth:`BuildConfig.to_dict` gives it.
    digest
        The config's digest (the key of the per-process recipe cache).
    store
        Absolute path of the Zarr store.
    done_dir
        Absolute path of the folder of finished-shard markers.
    start
        Position of the shard's first cycle in the plan (its region of the store starts there).
    recipe_indices
        The shard's cycles as indices into the recipe's ``cycles``.
    first_cycle, last_cycle
        The shard's first and last cycle times (for messages and a consistency check).
    """

    config: dict
    digest: str
    store: str
    done_dir: str
    start: int
    recipe_indices: tuple[int, ...]
    first_cycle: str
    last_cycle: str

    @property
    def cycles_text(self) -> str:
        """``2020-07-01 00:00:00 .. 2020-07-02 00:00:00 (2 cycles)``."""
        n = len(self.recipe_indices)
        return f"{self.first_cycle} .. {self.last_cycle} ({n} cycle{'s' if n != 1 else ''})"


def make_tasks(
    config: BuildConfig,
    cycles: pd.DatetimeIndex,
    cycle_index: np.ndarray,
    starts: list[int],
    step: int,
    store: Path,
    done_dir: Path,
) -> list[ShardTask]:
    """One task per shard start in ``starts``: cycles ``start .. start + step`` of the plan's
    ``cycles`` (the last one shorter), ``cycle_index`` mapping them to the recipe's cycles."""
    as_dict, digest = config.to_dict(), config.digest()
    tasks = []
    for start in starts:
        stop = min(start + step, len(cycles))
        tasks.append(
            ShardTask(
                config=as_dict,
                digest=digest,
                store=str(Path(store).resolve()),
                done_dir=str(Path(done_dir).resolve()),
                start=int(start),
                recipe_indices=tuple(int(i) for i in cycle_index[start:stop]),
                first_cycle=str(cycles[start]),
                last_cycle=str(cycles[stop - 1]),
            )
        )
    return tasks


def recipe_for(config: dict, digest: str):
    """The recipe of ``config`` (a :meth:`BuildConfig.to_dict`), made at most once per process
    while it stays among the :data:`MAX_RECIPES` most recently used."""
    with _RECIPES_LOCK:
        if digest in _RECIPES:
            _RECIPES.move_to_end(digest)
            return _RECIPES[digest]
        recipe = make_recipe(config_from_dict(config, digest))
        _remember(digest, recipe)
        return recipe


def config_from_dict(config: dict, digest: str) -> BuildConfig:
    """The :class:`BuildConfig` of a :meth:`BuildConfig.to_dict`; its digest must be ``digest``."""
    made = BuildConfig(**{**config, "channels": tuple(config["channels"])})
    if made.digest() != digest:
        raise DambenchBuildError(
            f"A shard task's config has digest {made.digest()[:12]}..., expected {digest[:12]}...: "
            "the workers run another dambench version than the client; install the same version "
            "on both."
        )
    return made


def _remember(digest: str, recipe) -> None:
    _RECIPES[digest] = recipe
    _RECIPES.move_to_end(digest)
    while len(_RECIPES) > MAX_RECIPES:
        _RECIPES.popitem(last=False)


@contextmanager
def serving(digest: str, recipe) -> Iterator[None]:
    """Within the block, shard tasks of ``digest`` run in this process use ``recipe`` (the one the
    builder planned with) instead of making their own; it is forgotten afterwards."""
    with _RECIPES_LOCK:
        _remember(digest, recipe)
    try:
        yield
    finally:
        with _RECIPES_LOCK:
            _RECIPES.pop(digest, None)


def run_shard(task: ShardTask) -> int:
    """Compute the shard's arrays, write its region of the store, leave its marker; return its
    start.

    Raises
    ------
    DambenchBuildError
        Computing the arrays failed: one line naming the shard's cycles and the original error
        (chained); nothing of the shard is marked finished.
    OSError
        Writing the store failed (a full disk, a read-only folder): the builder names the file and
        the remedy.
    """
    try:
        arrays = _compute(task)
    except Exception as err:
        raise shard_error(task, err) from err
    writers.write_store_block(Path(task.store), task.start, arrays)
    (Path(task.done_dir) / f"{task.start:08d}").touch()
    return task.start


def _compute(task: ShardTask) -> dict[str, np.ndarray]:
    recipe = recipe_for(task.config, task.digest)
    indices = np.asarray(task.recipe_indices)
    found = (str(recipe.cycles[indices[0]]), str(recipe.cycles[indices[-1]]))
    if found != (task.first_cycle, task.last_cycle):
        raise DambenchBuildError(
            f"this process's recipe places cycles {found[0]} .. {found[1]} where the plan has "
            f"{task.first_cycle} .. {task.last_cycle}: it reads other inputs than the client "
            "(give every worker the same input paths and dambench version)"
        )
    return recipe.block(indices)


def shard_error(task: ShardTask, err: BaseException) -> DambenchBuildError:
    """One line: the shard's cycles, the original error (type and message, e.g. the URL it could
    not read) and that the build resumes at this shard."""
    message = " ".join(str(err).split()) or "no message"
    return DambenchBuildError(
        f"Computing the shard of cycles {task.cycles_text} failed: {type(err).__name__}: "
        f"{message}. Nothing of this shard was written; fix the cause and run the same build "
        "again: it resumes at this shard."
    )
