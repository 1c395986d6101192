"""``dambench build``: plan, then execute a resumable, atomic, locked build of one dataset folder.

Check: the config is checked completely (nothing is written before that). Lock: one builder per
folder (:mod:`dambench.assembly.lock`); a second one is refused at once. Plan: the recipe validates
and opens its inputs, then ``plan.json`` fixes the cycles, their splits, the Zarr shards and the
Parquet files; the config and plan enter ``.dambench-build/`` in one atomic rename. Execute: each
shard of cycles is a plain, picklable task (:mod:`dambench.assembly.shards`) that computes the
arrays and writes its region of the store, then leaves a marker; the tasks run in this process
(``workers`` threads) or on a dask.distributed cluster (:mod:`dambench.assembly.engines`; ``out``
must then be on a filesystem every worker sees). Parquet files are written from the finished
store, atomically. Statistics,
consolidated metadata, the preview, the card and the sha256 manifest come last; ``manifest.json``
marks a finished build.

A killed build resumes: leftovers of interrupted writes (``*.partial``, ``*.tmp``) are removed,
then it continues at the first unfinished shard or file and ends byte-identical to an
uninterrupted build; the manifest lists exactly the dataset's files. A finished build re-run
verifies the folder against its manifest instead of building (a read-only one too: verifying
writes nothing). A folder that cannot be written (read-only, full disk) ends the build with one
line naming the file and the remedy (:mod:`dambench.assembly.folder_errors`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import xarray as xr
from tqdm.auto import tqdm

from dambench import schema
from dambench._version import __version__
from dambench.assembly import engines, folder_errors, shards, writers
from dambench.assembly.config import BuildConfig, load_config
from dambench.assembly.lock import LOCK_NAME, BuildLock, DambenchBuildError
from dambench.assembly.recipes import make_recipe
from dambench.exceptions import DambenchInputError
from dambench.modalities import modality_moments, names_for_groups
from dambench.verify import MANIFEST, read_manifest, sha256_file, verify

logger = logging.getLogger(__name__)

__all__ = ["DambenchBuildError", "build", "is_finished", "make_plan", "sha256_file"]

STATE_DIR = ".dambench-build"
STAGING_DIR = ".dambench-build.tmp"
SPLIT_ORDER = ("train", "validation", "test")
FILES_MULTIPLE = 8
"""A split with at least this many Parquet files gets a multiple of it (2-8 GPU workers then
read equal shares)."""
LEFTOVER_SUFFIXES = (".partial", ".tmp")


@dataclass(frozen=True)
class BuildPlan:
    """Cycles, their splits, Zarr shard starts, the Parquet files and the preview files."""

    cycles: pd.DatetimeIndex
    splits: np.ndarray
    shard_starts: list[int]
    parquet_files: dict[str, list[int]]  # relative path -> cycle indices
    preview_files: dict[str, list[int]]

    def to_dict(self) -> dict:
        return {
            "cycles": [str(t) for t in self.cycles],
            "splits": self.splits.tolist(),
            "shard_starts": self.shard_starts,
            "parquet_files": self.parquet_files,
            "preview_files": self.preview_files,
        }

    def files(self) -> set[str]:
        """The folder-relative paths of every file outside the store."""
        return {"README.md", "stats.json", *self.parquet_files, *self.preview_files}


def n_parquet_files(n_rows: int, rows_per_file: int) -> int:
    """Files for a split of ``n_rows``: ``ceil(n_rows / rows_per_file)``, then, from
    :data:`FILES_MULTIPLE` files on, a multiple of it (rounded up, or down when there are fewer
    rows than that)."""
    n = -(-n_rows // rows_per_file)
    if n >= FILES_MULTIPLE:
        up = -(-n // FILES_MULTIPLE) * FILES_MULTIPLE
        n = up if up <= n_rows else n_rows // FILES_MULTIPLE * FILES_MULTIPLE
    return n


def make_plan(config: BuildConfig, cycles: pd.DatetimeIndex, splits: np.ndarray) -> BuildPlan:
    """Shards of ``cycles_per_shard`` consecutive cycles; per split, :func:`n_parquet_files`
    files named ``data/{split}-{i:05d}-of-{n:05d}.parquet`` whose row counts differ by at most
    one, and one preview file ``preview/{split}-00000-of-00001.parquet``."""
    keep = splits != ""
    cycles, splits = cycles[keep], splits[keep]
    shard_starts = list(range(0, len(cycles), config.cycles_per_shard))
    files, previews = {}, {}
    for split in [s for s in SPLIT_ORDER if s in set(splits)]:
        indices = np.flatnonzero(splits == split)
        n = n_parquet_files(indices.size, config.cycles_per_parquet_file)
        for k, group in enumerate(np.array_split(indices, n)):
            files[f"data/{split}-{k:05d}-of-{n:05d}.parquet"] = group.tolist()
        previews[f"preview/{split}-00000-of-00001.parquet"] = indices.tolist()
    return BuildPlan(cycles, splits, shard_starts, files, previews)


def build(
    name_or_config: str | Path | BuildConfig,
    out: str | Path,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    verbose: bool = True,
    overrides: dict | None = None,
    wait_s: float = 0.0,
) -> Path:
    """Build a dataset folder (a Hugging Face dataset repository) into ``out``.

    Parameters
    ----------
    name_or_config
        A shipped config name (``era5-sample``, ``era5-fengwu``), a JSON path or a config.
    out
        The folder; created, resumed (same config) or, when finished, verified.
    workers
        Threads computing shards in this process (1: in order, in this thread).
    scheduler
        Address of a dask.distributed scheduler (``dambench[distributed]``); ``out`` must be on a
        filesystem every worker sees at the same path, which is checked before any shard runs.
    overrides
        Top-level config keys to replace (e.g. ``inputs``).
    wait_s
        Seconds to wait for another builder of the same folder to finish (default: refuse at
        once); after the wait the finished folder is verified.

    Returns
    -------
    The folder's path.

    Raises
    ------
    DambenchInputError
        A bad config or input, before anything is written.
    DambenchBuildError
        Another builder holds the folder, the folder holds something else, a shard failed (its
        cycles and the cause are named; the build resumes at it), the folder cannot be written
        (read-only, full disk: the file and the remedy are named), or the cluster's workers
        cannot see ``out``.
    DambenchIntegrityError
        A finished folder no longer matches its manifest (the files are named).
    """
    config = (
        name_or_config
        if isinstance(name_or_config, BuildConfig)
        else load_config(name_or_config, **(overrides or {}))
    )
    out = Path(out)
    existed = out.exists()
    if not _finished(out, config):
        _check_folder(out, config)  # refuse a foreign folder before creating anything
    try:
        _locked_build(config, out, workers, scheduler, verbose, wait_s)
    except BaseException as err:
        _remove_if_empty(out, existed)
        if isinstance(err, OSError):
            _after_write_error(err, out, config)
            return out  # a finished folder that cannot be written: verified
        raise
    return out


def _locked_build(config: BuildConfig, out: Path, workers, scheduler, verbose, wait_s) -> None:
    with BuildLock(out, wait_s=wait_s):
        if _finished(out, config):
            _verify_finished(out)
            return
        _check_folder(out, config)
        with engines.connection(scheduler, out, out / LOCK_NAME) as client:
            _run(config, out, workers, client, verbose)


def _after_write_error(err: OSError, out: Path, config: BuildConfig) -> None:
    """Verify a finished folder that cannot be written (verifying writes nothing); otherwise
    raise ``err`` explained in one line (:func:`folder_errors.explain`), or as it is when it is
    not a write failure in ``out``."""
    if _finished(out, config) and folder_errors.is_unwritable(err, out):
        _verify_finished(out, writable=False)
        return
    explained = folder_errors.explain(err, out)
    if explained is None:
        raise err
    raise explained from err


def _remove_if_empty(out: Path, existed: bool) -> None:
    """Leave no empty folder behind when nothing was built in a folder this build created."""
    if not existed and out.is_dir() and not any(out.iterdir()):
        try:
            out.rmdir()
        except OSError:
            pass  # another builder has just started in it


def is_finished(out: str | Path) -> bool:
    """True when ``out`` holds a ``manifest.json`` (a finished build)."""
    return (Path(out) / MANIFEST).is_file()


def _run(config: BuildConfig, out: Path, workers, client, verbose) -> None:
    """Plan, then execute (see the module docstring); shards run on ``client``'s cluster when it
    is given, else on ``workers`` threads."""
    recipe = make_recipe(config)  # validates and opens every input before anything is written
    plan = make_plan(config, recipe.cycles, recipe.splits)
    if len(plan.cycles) == 0:
        raise DambenchInputError(f"Config {config.name}: no cycle falls in any split.")
    state = _start_state(out, config, plan)
    _remove_leftovers(out)
    store = out / f"{config.name}.zarr"
    modalities = _modality_names(config)
    if not (state / "store-created").exists():
        if store.exists():
            shutil.rmtree(store)
        writers.create_store(
            store,
            plan.cycles,
            plan.splits,
            config.channels,
            modalities,
            config.cycles_per_shard,
            _store_attrs(config, recipe),
        )
        (state / "store-created").touch()
    cycle_index = _cycle_index(recipe.cycles, plan.cycles)
    tasks = _shard_tasks(config, plan, store, state, cycle_index)
    with shards.serving(config.digest(), recipe):
        if client is not None:
            engines.run_distributed(client, tasks, verbose)
        else:
            engines.run_local(tasks, workers, verbose)
    _write_parquet(plan, store, out, config, modalities, verbose)
    stats = _train_stats(store, plan, read_step(config))
    writers.atomic_write_json(out / "stats.json", stats)
    writers.update_store_attrs(store, {"normalization": json.dumps(stats, sort_keys=True)})
    writers.consolidate_store(store)
    _write_preview(plan, store, out, read_step(config))
    _write_card(out, config, plan, recipe)
    _remove_leftovers(out)
    _write_manifest(out, config, plan, store)
    shutil.rmtree(state)


def _modality_names(config: BuildConfig) -> list[str]:
    return names_for_groups(list(config.modalities))


def _cycle_index(all_cycles: pd.DatetimeIndex, planned: pd.DatetimeIndex) -> np.ndarray:
    return np.asarray(pd.DatetimeIndex(all_cycles).get_indexer(planned))


def _finished(out: Path, config: BuildConfig) -> bool:
    if not is_finished(out):
        return False
    recorded = read_manifest(out).get("config_digest")
    if recorded != config.digest():
        raise DambenchBuildError(
            f"{out} holds a finished build of a different config ({MANIFEST} records digest "
            f"{str(recorded)[:12]}..., this config is {config.digest()[:12]}...); choose another "
            "folder."
        )
    return True


def _verify_finished(out: Path, writable: bool = True) -> None:
    """A finished folder re-run: verify every file; clear a state folder left by a kill that
    came after the manifest was written (unless the folder is not ``writable``: it stays)."""
    report = verify(out)
    logger.info("%s is already built and verified (%d files).", out, report.n_files)
    if writable and (out / STATE_DIR).exists():
        shutil.rmtree(out / STATE_DIR)


def _ours(entry: Path) -> bool:
    """Entries a builder leaves in a folder before any data: the lock and state folders."""
    return entry.name in (LOCK_NAME, STAGING_DIR) or (
        entry.name == STATE_DIR and not (entry / "config.json").exists()
    )


def _check_folder(out: Path, config: BuildConfig) -> None:
    if not out.exists() or all(_ours(entry) for entry in out.iterdir()):
        return
    recorded = out / STATE_DIR / "config.json"
    if not recorded.exists():
        raise DambenchBuildError(
            f"{out} is not empty and holds no dambench build; choose an empty or new folder."
        )
    try:
        digest = json.loads(recorded.read_text())["digest"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DambenchBuildError(
            f"{recorded} is unreadable ({err}); remove {out} and build again."
        ) from err
    if digest != config.digest():
        raise DambenchBuildError(
            f"{out} holds an unfinished build of a different config; remove it or choose another "
            "folder."
        )


def _start_state(out: Path, config: BuildConfig, plan: BuildPlan) -> Path:
    """The state folder with ``config.json`` and ``plan.json``, created by one atomic rename (a
    kill never leaves a state folder without its config); a resumed build must plan the same."""
    state = out / STATE_DIR
    if (state / "config.json").exists():
        planned = state / "plan.json"
        if not planned.exists():  # dambench 0.1 wrote it after the config: a kill in between
            writers.atomic_write_json(planned, plan.to_dict())
        if json.loads(planned.read_text()) != plan.to_dict():
            raise DambenchBuildError(
                f"This build of {config.name} no longer plans what {planned} records (its inputs "
                f"or the dambench version changed since it started); remove {out} and build "
                "again."
            )
        return state
    staging = out / STAGING_DIR
    for stale in (staging, state):
        if stale.exists():
            shutil.rmtree(stale)
    staging.mkdir()
    writers.atomic_write_json(
        staging / "config.json", {"digest": config.digest(), "config": config.to_dict()}
    )
    writers.atomic_write_json(staging / "plan.json", plan.to_dict())
    os.replace(staging, state)
    return state


def _remove_leftovers(out: Path) -> None:
    """Delete the temporary files of interrupted writes (zarr's ``*.partial``, dambench's
    ``*.tmp``); the builder holds the lock, so no write is in progress."""
    for path in sorted(out.rglob("*")):
        if path.name.endswith(LEFTOVER_SUFFIXES) and path.is_file() and STATE_DIR not in path.parts:
            logger.info("removing %s, left by an interrupted write", path)
            path.unlink()


def _store_attrs(config: BuildConfig, recipe) -> dict[str, str]:
    return {
        "Conventions": "CF-1.10",
        "title": config.title or config.name,
        "dambench_schema_version": schema.SCHEMA_VERSION,
        "dambench_dataset": config.name,
        "source": recipe.attrs.get("source", ""),
        "sources": json.dumps(config.sources, sort_keys=True),
        "license": config.license,
        "history": writers.store_history(),
        "background": recipe.attrs.get("background", ""),
        "observation": json.dumps(config.observation, sort_keys=True),
        "modalities": json.dumps({k: recipe.attrs.get(k, "") for k in config.modalities}),
        "missing_modalities": recipe.attrs.get("missing_modalities", ""),
    }


def _shard_tasks(config, plan, store, state, cycle_index) -> list[shards.ShardTask]:
    """The tasks of the shards without a marker in ``state/shards`` (their folder is made)."""
    done_dir = state / "shards"
    done_dir.mkdir(exist_ok=True)
    todo = [s for s in plan.shard_starts if not (done_dir / f"{s:08d}").exists()]
    return shards.make_tasks(
        config, plan.cycles, cycle_index, todo, config.cycles_per_shard, store, done_dir
    )


def _write_parquet(plan, store, out, config, modalities, verbose) -> None:
    (out / "data").mkdir(exist_ok=True)
    features = writers.hf_features(len(config.channels), modalities)
    ds = xr.open_zarr(store, consolidated=False)
    fields = [*writers.STATE_FIELDS, *modalities]
    for relative, indices in tqdm(
        plan.parquet_files.items(), desc="parquet", unit="file", disable=not verbose
    ):
        path = out / relative
        if path.exists():
            continue
        rows = (
            {name: ds[name].isel({schema.TIME: [i]}).values for name in fields} for i in indices
        )
        times = ds[schema.TIME].values[indices]
        writers.write_parquet_rows(path, times, rows, features)


def read_step(config: BuildConfig) -> int:
    """Cycles the finishing steps (statistics, preview) read at once: at most a shard's, so
    their memory is bounded by the block as the shards' is, flat in the number of cycles; at
    most 16."""
    return max(1, min(16, config.cycles_per_shard))


def _write_preview(plan: BuildPlan, store: Path, out: Path, step: int = 16) -> None:
    ds = xr.open_zarr(store, consolidated=False)
    channels = ds[schema.CHANNEL].values.tolist()
    for relative, indices in plan.preview_files.items():
        tables = []
        for start in range(0, len(indices), step):
            block = ds.isel({schema.TIME: indices[start : start + step]})
            arrays = {name: block[name].values for name in writers.STATE_FIELDS}
            tables.append(writers.preview_table(block[schema.TIME].values, channels, arrays))
        writers.write_preview(out / relative, _concat(tables))


def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables).combine_chunks()


def _train_stats(store: Path, plan: BuildPlan, step: int = 16) -> dict:
    """Per-channel mean and std of ``target`` over the train split (read ``step`` cycles at a
    time, summed in float64 one cycle at a time),
    and each modality's moments in model space (:func:`dambench.modalities.modality_moments`)."""
    ds = xr.open_zarr(store, consolidated=False)
    train = np.flatnonzero(plan.splits == "train")
    if train.size == 0:
        raise DambenchInputError("No train cycle: statistics need a train split.")
    total = total_sq = 0.0
    count = 0
    for start in range(0, train.size, step):
        block = ds["target"].isel({schema.TIME: train[start : start + step]}).values
        for cycle in block:  # float64 one cycle at a time
            cycle = cycle.astype(np.float64)
            total = total + cycle.sum(axis=(1, 2))
            total_sq = total_sq + (cycle**2).sum(axis=(1, 2))
            count += cycle.shape[1] * cycle.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    stats = {
        "split": "train",
        "n_cycles": int(train.size),
        "channels": ds[schema.CHANNEL].values.tolist(),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "modalities": {},
    }
    for name in sorted(str(v) for v in ds.data_vars if v not in writers.STATE_FIELDS):
        stats["modalities"][name] = modality_moments(ds[name].isel({schema.TIME: train}), name)
    return stats


def _write_card(out: Path, config: BuildConfig, plan: BuildPlan, recipe) -> None:
    from dambench.assembly.cards import config_context, template_for, write_card

    splits, previews = {}, {}
    for relative in plan.parquet_files:
        splits.setdefault(relative.split("/")[1].split("-")[0], []).append(relative)
    for relative in plan.preview_files:
        previews[relative.split("/")[1].split("-")[0]] = [relative]
    counts = {s: int((plan.splits == s).sum()) for s in SPLIT_ORDER}
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and not _hidden(out, p))
    context = {
        "name": config.name,
        "title": config.title or config.name,
        "dambench_version": __version__,
        "channels": ", ".join(config.channels),
        "n_channels": str(len(config.channels)),
        "n_cycles": str(len(plan.cycles)),
        "n_cycles_train": str(counts["train"]),
        "n_cycles_validation": str(counts["validation"]),
        "n_cycles_test": str(counts["test"]),
        "first_cycle": str(plan.cycles[0]),
        "last_cycle": str(plan.cycles[-1]),
        "size_human": _human_size(size),
        "background": recipe.attrs.get("background", ""),
        "build_date": str(plan.cycles[-1].date()),
        **config_context(config),
    }
    write_card(
        out,
        config.name,
        context,
        splits,
        license=config.license,
        preview=previews,
        template=template_for(config.name),
    )


def _hidden(out: Path, path: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(out).parts)


def _human_size(n_bytes: int) -> str:
    size = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _write_manifest(out: Path, config: BuildConfig, plan: BuildPlan, store: Path) -> None:
    """``manifest.json`` of exactly the dataset's files: the store's files and
    :meth:`BuildPlan.files`; any other visible file is refused, named."""
    expected = plan.files()
    found = {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and not _hidden(out, p) and p.name != MANIFEST
    }
    in_store = {f for f in found if f.startswith(store.name + "/")}
    stray = sorted(found - expected - in_store)
    missing = sorted(expected - found)
    if stray or missing:
        raise DambenchBuildError(
            f"{out} does not hold exactly the dataset's files: unexpected {stray}, missing "
            f"{missing}. Move unexpected files out of the folder and run the build again."
        )
    files = {}
    for relative in sorted(expected | in_store):
        path = out / relative
        files[relative] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    writers.atomic_write_json(
        out / MANIFEST,
        {
            "name": config.name,
            "schema_version": schema.SCHEMA_VERSION,
            "dambench_version": __version__,
            "config_digest": config.digest(),
            "files": files,
        },
    )
