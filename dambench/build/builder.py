"""``dambench build``: plan, then execute a resumable, atomic build of one dataset folder.

Plan: the recipe validates its inputs (nothing is written before that), then ``plan.json`` fixes
the cycles, their splits, the Zarr shards and the Parquet files. Execute: each shard of cycles is a
dask task that computes the arrays and writes its region of the store, then leaves a marker; Parquet
files are written from the finished store, atomically. Statistics, the card and the sha256 manifest
come last; ``manifest.json`` marks a finished build. A killed build resumes at the first unfinished
shard or file and ends byte-identical to an uninterrupted one; a finished build re-run does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import xarray as xr
from dask.callbacks import Callback
from tqdm.auto import tqdm

from dambench import __version__, schema
from dambench.build import writers
from dambench.build.config import BuildConfig, load_config
from dambench.build.recipes import make_recipe
from dambench.exceptions import DambenchError, DambenchInputError

logger = logging.getLogger(__name__)

STATE_DIR = ".dambench-build"
MANIFEST = "manifest.json"
SPLIT_ORDER = ("train", "validation", "test")


class DambenchBuildError(DambenchError, RuntimeError):
    """A build cannot proceed (a folder holding something else, a failed task)."""


@dataclass(frozen=True)
class BuildPlan:
    """Cycles, their splits, Zarr shard starts and the Parquet files of a build."""

    cycles: pd.DatetimeIndex
    splits: np.ndarray
    shard_starts: list[int]
    parquet_files: dict[str, list[int]]  # relative path -> cycle indices

    def to_dict(self) -> dict:
        return {
            "cycles": [str(t) for t in self.cycles],
            "splits": self.splits.tolist(),
            "shard_starts": self.shard_starts,
            "parquet_files": self.parquet_files,
        }


def make_plan(config: BuildConfig, cycles: pd.DatetimeIndex, splits: np.ndarray) -> BuildPlan:
    """Shards of ``cycles_per_shard`` consecutive cycles; per-split Parquet files of up to
    ``cycles_per_parquet_file`` rows named ``data/{split}-{i:05d}-of-{n:05d}.parquet``."""
    keep = splits != ""
    cycles, splits = cycles[keep], splits[keep]
    shard_starts = list(range(0, len(cycles), config.cycles_per_shard))
    files = {}
    for split in [s for s in SPLIT_ORDER if s in set(splits)]:
        indices = np.flatnonzero(splits == split).tolist()
        step = config.cycles_per_parquet_file
        groups = [indices[i : i + step] for i in range(0, len(indices), step)]
        for k, group in enumerate(groups):
            files[f"data/{split}-{k:05d}-of-{len(groups):05d}.parquet"] = group
    return BuildPlan(cycles, splits, shard_starts, files)


class _TqdmCallback(Callback):
    """A tqdm bar over the shard tasks of a dask graph."""

    def __init__(self, total: int, disable: bool):
        super().__init__()
        self.bar = tqdm(total=total, desc="shards", unit="shard", disable=disable)

    def _posttask(self, key, result, dsk, state, worker_id):
        if str(key[0] if isinstance(key, tuple) else key).startswith("shard"):
            self.bar.update(1)

    def _finish(self, dsk, state, errored):
        self.bar.close()


def build(
    name_or_config: str | Path | BuildConfig,
    out: str | Path,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    verbose: bool = True,
    overrides: dict | None = None,
) -> Path:
    """Build a dataset folder (a Hugging Face dataset repository) into ``out``.

    Parameters
    ----------
    name_or_config
        A shipped config name (``era5-sample``, ``era5-fengwu``), a JSON path or a config.
    out
        The folder; created, resumed (same config) or left alone when finished.
    workers
        Threads of the local dask scheduler computing shards.
    scheduler
        Address of a dask.distributed scheduler (needs the ``distributed`` package).
    overrides
        Top-level config keys to replace (e.g. ``inputs``).

    Returns
    -------
    The folder's path.
    """
    config = (
        name_or_config
        if isinstance(name_or_config, BuildConfig)
        else load_config(name_or_config, **(overrides or {}))
    )
    out = Path(out)
    if _finished(out, config):
        logger.info("%s is already built; nothing to do.", out)
        return out
    _check_folder(out, config)
    recipe = make_recipe(config)  # validates and opens every input before anything is written
    plan = make_plan(config, recipe.cycles, recipe.splits)
    if len(plan.cycles) == 0:
        raise DambenchInputError(f"Config {config.name}: no cycle falls in any split.")
    state = out / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    writers.atomic_write_json(
        state / "config.json", {"digest": config.digest(), "config": config.to_dict()}
    )
    writers.atomic_write_json(state / "plan.json", plan.to_dict())
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
    _write_shards(recipe, plan, store, state, cycle_index, workers, scheduler, verbose)
    _write_parquet(plan, store, out, config, modalities, verbose)
    stats = _train_stats(store, plan)
    writers.atomic_write_json(out / "stats.json", stats)
    writers.update_store_attrs(store, {"normalization": stats})
    _write_card(out, config, plan, recipe)
    _write_manifest(out, config)
    shutil.rmtree(state)
    return out


def _modality_names(config: BuildConfig) -> list[str]:
    names = []
    if "precip" in config.modalities:
        names += ["precip", "precip_gauges"]
    if "olr" in config.modalities:
        names.append("olr")
    return names


def _cycle_index(all_cycles: pd.DatetimeIndex, planned: pd.DatetimeIndex) -> np.ndarray:
    return np.asarray(pd.DatetimeIndex(all_cycles).get_indexer(planned))


def _finished(out: Path, config: BuildConfig) -> bool:
    manifest = out / MANIFEST
    if not manifest.exists():
        return False
    recorded = json.loads(manifest.read_text()).get("config_digest")
    if recorded != config.digest():
        raise DambenchBuildError(
            f"{out} holds a finished build of a different config; choose another folder."
        )
    return True


def _check_folder(out: Path, config: BuildConfig) -> None:
    if not out.exists() or not any(out.iterdir()):
        return
    recorded = out / STATE_DIR / "config.json"
    if not recorded.exists():
        raise DambenchBuildError(
            f"{out} is not empty and holds no dambench build; choose an empty or new folder."
        )
    if json.loads(recorded.read_text())["digest"] != config.digest():
        raise DambenchBuildError(
            f"{out} holds an unfinished build of a different config; remove it or choose another "
            "folder."
        )


def _store_attrs(config: BuildConfig, recipe) -> dict:
    return {
        "Conventions": "CF-1.10",
        "title": config.title or config.name,
        "dambench_schema_version": schema.SCHEMA_VERSION,
        "dambench_dataset": config.name,
        "source": recipe.attrs.get("source", ""),
        "sources": config.sources,
        "license": config.license,
        "history": writers.store_history(),
        "background": recipe.attrs.get("background", ""),
        "observation": json.dumps(config.observation, sort_keys=True),
        "modalities": json.dumps({k: recipe.attrs.get(k, "") for k in config.modalities}),
        "missing_modalities": recipe.attrs.get("missing_modalities", ""),
    }


def _write_shards(recipe, plan, store, state, cycle_index, workers, scheduler, verbose) -> None:
    done_dir = state / "shards"
    done_dir.mkdir(exist_ok=True)
    todo = [s for s in plan.shard_starts if not (done_dir / f"{s:08d}").exists()]
    n_cycles = len(plan.cycles)
    step = plan.shard_starts[1] - plan.shard_starts[0] if len(plan.shard_starts) > 1 else n_cycles

    def shard_task(start: int) -> int:
        indices = np.arange(start, min(start + step, n_cycles))
        writers.write_store_block(store, start, recipe.block(cycle_index[indices]))
        (done_dir / f"{start:08d}").touch()
        return start

    tasks = [dask.delayed(shard_task, name=f"shard-{s}")(s) for s in todo]
    if not tasks:
        return
    if scheduler:
        try:
            from distributed import Client
        except ImportError as err:
            raise DambenchInputError(
                "--scheduler needs dask.distributed: pip install distributed"
            ) from err
        with Client(scheduler):
            dask.compute(*tasks)
        return
    with _TqdmCallback(len(tasks), disable=not verbose):
        dask.compute(*tasks, scheduler="threads", num_workers=max(1, workers))


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
        block = ds.isel({schema.TIME: indices})
        arrays = {name: block[name].values for name in fields}
        writers.write_parquet(path, block[schema.TIME].values, arrays, features)


def _train_stats(store: Path, plan: BuildPlan) -> dict:
    """Per-channel mean and std of ``target`` over the train split (float64, streamed by shard)."""
    ds = xr.open_zarr(store, consolidated=False)
    train = np.flatnonzero(plan.splits == "train")
    if train.size == 0:
        raise DambenchInputError("No train cycle: statistics need a train split.")
    total = total_sq = 0.0
    count = 0
    for start in range(0, train.size, 16):
        block = ds["target"].isel({schema.TIME: train[start : start + 16]}).values
        block = block.astype(np.float64)
        total = total + block.sum(axis=(0, 2, 3))
        total_sq = total_sq + (block**2).sum(axis=(0, 2, 3))
        count += block.shape[0] * block.shape[2] * block.shape[3]
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
        values = ds[name].isel({schema.TIME: train}).values.astype(np.float64)
        finite = values[np.isfinite(values)]
        stats["modalities"][name] = {
            "mean": float(finite.mean()) if finite.size else None,
            "std": float(finite.std()) if finite.size else None,
            "n_finite": int(finite.size),
        }
    return stats


def _write_card(out: Path, config: BuildConfig, plan: BuildPlan, recipe) -> None:
    from dambench.build.cards import write_card

    splits = {}
    for relative in plan.parquet_files:
        splits.setdefault(relative.split("/")[1].split("-")[0], []).append(relative)
    counts = {s: int((plan.splits == s).sum()) for s in SPLIT_ORDER}
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and STATE_DIR not in p.parts)
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
    }
    write_card(out, config.name, context, splits, license=config.license)


def _human_size(n_bytes: int) -> str:
    size = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(4 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(out: Path, config: BuildConfig) -> None:
    files = {}
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out).as_posix()
        if path.is_file() and not relative.startswith(STATE_DIR) and relative != MANIFEST:
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
