"""Training checkpoints: what they hold, how they are written, read and turned back into models.

A checkpoint written by ``baselines/train.py`` is a ``torch.save`` dict of plain types and
tensors (readable with ``weights_only=True``):

``model``
    The weights evaluation uses: the EMA of the weights when ``train.ema_decay`` is set, else the
    trained weights.
``raw_model``
    (``last.pt`` of a run with an EMA only) The trained weights, for resuming.
``optimizer``, ``scaler``, ``epoch``, ``step``, ``best``, ``rng``, ``sampler_epoch``
    (``last.pt`` only) The training state; ``rng`` holds the torch (CPU and CUDA), numpy and
    Python generator states, so that a resumed run continues bit-identically.
``config``, ``model_name``, ``model_info``
    The resolved :class:`~baselines.config.RunConfig` and the registered
    :class:`~baselines.interface.ModelInfo`, as dicts.
``dataset``
    ``name``, ``digest`` (:func:`dataset_digest`) and ``channels`` (names, in order).
``normalization``
    The train-split ``mean`` and ``std`` per channel the model was trained with.
``versions``
    dambench, torch and the checkpoint format.

:func:`model_from_checkpoint` rebuilds a model and refuses data whose channels differ from the
checkpoint's; :func:`checkpoint_metadata` gives the provenance for results files.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchError

FORMAT_VERSION = 1
_REQUIRED = ("model", "config", "model_name", "dataset", "normalization")


class CheckpointError(DambenchError, ValueError):
    """A checkpoint cannot be read or does not fit the data or run it is used with."""


class ChannelMismatchError(CheckpointError):
    """The data's channels (names or order) differ from those the checkpoint was trained on."""


class ResumeMismatchError(CheckpointError):
    """Resuming a run whose config or dataset differs from the one that wrote the checkpoint."""


# --- provenance --------------------------------------------------------------------------------


def dataset_digest(ds: xr.Dataset) -> str:
    """sha256 of a dataset's identity: its attributes, channels, times, splits and grid.

    A digest of the metadata, not of the array bytes: two builds with the same recipe, cycles,
    grid and recorded train statistics (``attrs["normalization"]``) share it; a different
    channel set, time range, split assignment, observation setting or build differs. Cheap on a
    lazily opened store (no data is read). Compute it on the whole dataset (all splits) to
    compare runs.
    """
    identity = {
        "attrs": {str(k): str(v) for k, v in sorted(ds.attrs.items())},
        "variables": sorted(str(name) for name in ds.data_vars),
    }
    for name in (schema.CHANNEL, schema.TIME, "split", schema.LATITUDE, schema.LONGITUDE):
        if name in ds.coords:
            identity[name] = [str(v) for v in np.asarray(ds[name].values).ravel()]
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def normalization_record(stats: xr.Dataset, channels: Sequence[str]) -> dict[str, list]:
    """The train-split ``mean``/``std`` per channel as plain lists, in ``channels`` order."""
    selected = stats.sel({schema.CHANNEL: list(channels)})
    return {
        "channels": [str(c) for c in channels],
        "mean": [float(v) for v in selected["mean"].values],
        "std": [float(v) for v in selected["std"].values],
    }


# --- random number generators ------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The torch (CPU and every CUDA device), numpy and Python global generator states, as
    tensors and plain types (``weights_only``-loadable)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (global)
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state["numpy"]
    keys = saved["keys"].numpy().astype(np.uint32)
    np.random.set_state(  # noqa: NPY002 (restores the legacy global generator)
        (saved["kind"], keys, saved["position"], saved["has_gauss"], saved["cached_gaussian"])
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))


# --- writing and reading -----------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` atomically (a temporary file, then a rename) to ``path``."""
    path = Path(path)
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise CheckpointError(f"A checkpoint needs the keys {list(_REQUIRED)}; missing {missing}.")
    tmp = path.with_name(path.name + ".tmp")
    torch.save({**payload, "format_version": FORMAT_VERSION}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(
    path: str | os.PathLike, *, map_location: Any = "cpu", mmap: bool = True
) -> dict[str, Any]:
    """The dict saved by ``baselines/train.py``.

    With ``mmap`` (default) the tensors are memory-mapped copy-on-write, not read up front
    (cheap metadata reads of large checkpoints); resuming reads them whole (``mmap=False``).

    Raises
    ------
    FileNotFoundError
        When there is no file at ``path``.
    CheckpointError
        When the file is unreadable (truncated, not a torch file) or not a dambench training
        checkpoint (e.g. written by an older ``train.py`` without channel names); the message
        names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CheckpointError(
            f"Cannot read checkpoint {path}: {type(err).__name__}: {err}. The file is truncated "
            "or not a checkpoint written by baselines/train.py."
        ) from err
    missing = [key for key in _REQUIRED if key not in state] if isinstance(state, dict) else None
    if missing is None or missing:
        raise CheckpointError(
            f"{path} is not a dambench training checkpoint (missing keys {missing or 'all'}); "
            "checkpoints from before channel names were recorded cannot be checked against "
            "the data: retrain with baselines/train.py."
        )
    return state


def check_channels(path: str | os.PathLike, stored: Sequence[str], given: Sequence[str]) -> None:
    """Refuse data whose channel names or order differ from the checkpoint's."""
    stored, given = [str(c) for c in stored], [str(c) for c in given]
    if stored != given:
        hint = " (the same names in another order)" if sorted(stored) == sorted(given) else ""
        raise ChannelMismatchError(
            f"{path} was trained on channels {stored}, but the data has channels {given}{hint}. "
            "Evaluate it on data with the checkpoint's channels, in its order (select them with "
            "ds.sel(channel=...)), or train a model on these channels."
        )


def model_from_checkpoint(
    path: str | os.PathLike, *, channels: Sequence[str], map_location: Any = "cpu"
) -> torch.nn.Module:
    """Rebuild a trained model for data with ``channels``, in eval mode.

    Parameters
    ----------
    path
        A checkpoint written by ``baselines/train.py`` (``best.pt`` or ``last.pt``).
    channels
        The channel names of the data it will analyse, in order.

    Returns
    -------
    The model built with :func:`baselines.registry.create_model` from the stored config, with
    the checkpoint's ``model`` weights (the EMA weights when the run kept an EMA), and
    ``model_name``/``info`` set.

    Raises
    ------
    ChannelMismatchError
        When ``channels`` differ from the checkpoint's (names or order), both lists named.
    """
    from baselines.registry import create_model

    state = load_checkpoint(path, map_location=map_location)
    stored = state["dataset"]["channels"]
    check_channels(path, stored, channels)
    model_cfg = state["config"]["model"]
    model = create_model(model_cfg["name"], **{"in_chans": len(stored), **model_cfg["kwargs"]})
    model.load_state_dict(state["model"])
    return model.eval()


def checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Provenance of a checkpoint for results files, as plain JSON types: ``model``, ``seed``,
    ``epoch``, ``step``, ``ema_decay``, ``dataset`` (name), ``dataset_digest``, ``channels``,
    ``config``, ``model_info``, ``versions``."""
    state = load_checkpoint(path)
    config = state["config"]
    return {
        "checkpoint": str(path),
        "model": state["model_name"],
        "seed": config["train"]["seed"],
        "epoch": state.get("epoch"),
        "step": state.get("step"),
        "ema_decay": config["train"].get("ema_decay"),
        "dataset": state["dataset"]["name"],
        "dataset_digest": state["dataset"]["digest"],
        "channels": list(state["dataset"]["channels"]),
        "config": config,
        "model_info": state.get("model_info"),
        "versions": state.get("versions", {}),
    }


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list:
    """Dotted keys whose values differ between two nested config dicts, as
    ``"key: old -> new"`` strings."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
