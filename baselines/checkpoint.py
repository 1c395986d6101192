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
    The scorer's identity of the dataset (:func:`dataset_record`): ``name``, ``digest`` and
    ``digest_kind`` (``"manifest"``: the sha256 of the build's ``manifest.json``, as
    ``dambench evaluate`` records it; ``"metadata"`` for a store without one), and ``channels``
    (names, in order). Checkpoints written before the scorer's identity was used hold no
    ``digest_kind`` and a :func:`dataset_digest` (``"legacy-metadata"``).
``normalization``
    The train-split ``mean`` and ``std`` per channel the model was trained with.
``versions``
    dambench, torch and the checkpoint format.
``modalities``
    (models with ``uses_modalities``) ``names`` of the modalities the model was given, in
    ``batch.modalities`` order, and each one's ``sources`` as the dataset records them.
``init_from``
    (runs started from another checkpoint, ``model.init_from``) its path, model, epoch and
    dataset digest (and its kind).
``content_sha256``
    The sha256 of everything else (:func:`content_digest`: every tensor's bytes, every value),
    recomputed on load: a checkpoint whose bytes changed after it was saved is refused (one
    flipped byte can change a weight by orders of magnitude and still load).

:func:`model_from_checkpoint` rebuilds a model and refuses data whose channels differ from the
checkpoint's; :func:`checkpoint_metadata` gives the provenance for results files;
:func:`initialise_from` loads a checkpoint's weights into a new run's model (the same model, or
the host of a composed ``multi_*`` model).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchError, DambenchInputError

FORMAT_VERSION = 1
_REQUIRED = ("model", "config", "model_name", "dataset", "normalization")
DIGEST_KEY = "content_sha256"


class CheckpointError(DambenchError, ValueError):
    """A checkpoint cannot be read or does not fit the data or run it is used with."""


class ChannelMismatchError(CheckpointError):
    """The data's channels (names or order) differ from those the checkpoint was trained on."""


class ResumeMismatchError(CheckpointError):
    """Resuming a run whose config or dataset differs from the one that wrote the checkpoint."""


LEGACY_DIGEST_KIND = "legacy-metadata"
"""``digest_kind`` of a checkpoint written before checkpoints recorded the scorer's identity:
its ``digest`` is a :func:`dataset_digest`, not comparable with a results file's."""
_IDENTITY_KEYS = ("name", "digest", "digest_kind", "channels")


# --- provenance --------------------------------------------------------------------------------


def dataset_record(name_or_path: str | os.PathLike, channels: Sequence[str]) -> dict[str, Any]:
    """The checkpoint's ``dataset`` entry: the scorer's identity of ``name_or_path`` (all
    splits; :func:`dambench.scoring.identity.dataset_identity`) and the
    ``channels`` the model is trained on, in order.

    Returns
    -------
    dict
        ``name`` (the build's dataset name), ``digest``, ``digest_kind`` (``"manifest"`` or
        ``"metadata"``) and ``channels``: for a build folder the digest equals the
        ``dataset_digest`` that ``dambench evaluate`` writes to results files.
    """
    from dambench.scoring.identity import dataset_identity

    identity = dataset_identity(name_or_path)
    return {
        "name": identity.name,
        "digest": identity.digest,
        "digest_kind": identity.kind,
        "channels": [str(c) for c in channels],
    }


def check_same_dataset(
    path: str | os.PathLike, stored: Mapping[str, Any], current: Mapping[str, Any], ds: xr.Dataset
) -> None:
    """Refuse to resume checkpoint ``path`` (``stored``, its ``dataset`` entry) on another
    dataset than the run's (``current``, a :func:`dataset_record` of ``ds``, all splits).

    A checkpoint from before :func:`dataset_record` (no ``digest_kind``) is compared by its
    :func:`dataset_digest`, recomputed on ``ds``, and its channels.

    Raises
    ------
    ResumeMismatchError
        Naming both datasets.
    """
    if "digest_kind" in stored:
        same = all(stored.get(k) == current.get(k) for k in _IDENTITY_KEYS)
    else:
        same = stored.get("digest") == dataset_digest(ds) and list(stored["channels"]) == list(
            current["channels"]
        )
    if not same:
        raise ResumeMismatchError(
            f"{path} was trained on dataset {dict(stored)}; this run has {dict(current)}. "
            "Choose another train.out to start a new run."
        )


def dataset_digest(ds: xr.Dataset) -> str:
    """The legacy checkpoint digest (``digest_kind`` :data:`LEGACY_DIGEST_KIND`): sha256 of a
    dataset's attributes, channels, times, splits and grid.

    Checkpoints now record :func:`dataset_record` (the scorer's digest); this one is kept to
    check a resume from a checkpoint written before. Cheap on a lazily opened store (no data is
    read); computed on the whole dataset (all splits).
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


def modality_record(names: Sequence[str], ds: xr.Dataset) -> dict[str, Any]:
    """What a multi-modal model is given: the modality ``names`` (in ``batch.modalities`` order)
    and each one's source as the dataset records it (``ds.attrs["modalities"]``, by name or by
    schema group), else the schema's."""
    recorded = ds.attrs.get("modalities") or "{}"
    by_key = json.loads(recorded) if isinstance(recorded, str) else dict(recorded)
    sources = {}
    for name in names:
        info = schema.MODALITIES[str(name)]
        sources[str(name)] = str(by_key.get(name, by_key.get(info.group, info.source)))
    return {"names": [str(n) for n in names], "sources": sources}


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


def content_digest(state: Mapping[str, Any]) -> str:
    """sha256 of a checkpoint dict's content, :data:`DIGEST_KEY` left out: each tensor's dtype,
    shape and bytes and each other value's type and ``repr``, mapping keys in sorted order, so
    that the dict saved and the dict loaded back give the same digest."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k != DIGEST_KEY})
    return digest.hexdigest()


def _feed(digest, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"tensor {flat.dtype} {tuple(value.shape)};".encode())
        digest.update(memoryview(flat.view(torch.uint8).numpy()))
    elif isinstance(value, Mapping):
        digest.update(b"{")
        for key in sorted(value, key=repr):
            digest.update(f"{key!r}:".encode())
            _feed(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` with its :func:`content_digest` atomically (a temporary file, then a
    rename) to ``path``."""
    path = Path(path)
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise CheckpointError(f"A checkpoint needs the keys {list(_REQUIRED)}; missing {missing}.")
    state = {**payload, "format_version": FORMAT_VERSION}
    state[DIGEST_KEY] = content_digest(state)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def _check_digest(path: Path, state: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose content differs from the digest recorded at save; warn about
    one saved before digests were recorded."""
    recorded = state.get(DIGEST_KEY)
    if recorded is None:
        warnings.warn(
            f"{path} records no {DIGEST_KEY} (saved before checkpoints carried one): its "
            "integrity cannot be checked. Save it again with baselines.checkpoint."
            "save_checkpoint to record one.",
            UserWarning,
            stacklevel=3,
        )
        return
    found = content_digest(state)
    if found != recorded:
        raise CheckpointError(
            f"{path} is damaged: its content has sha256 {found[:16]}... but {recorded[:16]}... "
            "was recorded when it was saved (a changed byte alters a weight silently). Restore "
            "the file from a copy or train again."
        )


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
        When the file is unreadable (truncated, not a torch file), not a dambench training
        checkpoint (e.g. written by an older ``train.py`` without channel names) or its content
        differs from the :data:`DIGEST_KEY` recorded at save; the message names the file.

    Warns
    -----
    UserWarning
        A checkpoint saved before digests were recorded (loaded unchecked).
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
    _check_digest(path, state)
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


def takes_modality_chans(name: str) -> bool:
    """Whether model ``name`` uses modalities (``ModelInfo.uses_modalities``) and its registered
    variant takes a ``modality_chans`` count (e.g. SLAMS)."""
    from baselines.registry import model_info, variant_defaults

    try:
        defaults = variant_defaults(name)
    except DambenchInputError:  # not a registered variant: no defaults to read the kwarg from
        return False
    return "modality_chans" in defaults and model_info(name).uses_modalities


def _modality_count(name: str, out: Mapping[str, Any], modalities: Sequence[str]) -> int:
    given = out.get("modality_chans")  # None means unset, as in create_model
    if given is not None and given != len(modalities):
        raise DambenchInputError(
            f"model.kwargs.modality_chans={given} for {name!r}, but the data gives "
            f"{len(modalities)} modalities {list(modalities)}; leave model.kwargs.modality_chans "
            "out (it is filled from the loader), or set task.modalities to "
            f"{given} of them."
        )
    return len(modalities)


def model_kwargs(
    name: str,
    kwargs: Mapping[str, Any],
    *,
    channels: Sequence[str],
    modalities: Sequence[str] | None,
) -> dict[str, Any]:
    """``create_model(name, ...)`` kwargs for data with ``channels``: ``in_chans``, the config's
    ``kwargs`` and the modalities the model is given (the loader's names in
    ``batch.modalities`` order): their names for a composed multi-modal model, their count
    ``modality_chans`` for a model that takes one (:func:`takes_modality_chans`; kept from
    ``kwargs`` when ``modalities`` is ``None``).

    Raises
    ------
    DambenchInputError
        A multi-modal model without ``modalities``, or whose ``kwargs`` name other ones; a
        ``modality_chans`` in ``kwargs`` that differs from the number of ``modalities``.
    """
    from baselines.registry import composed_kwargs

    out = {"in_chans": len(channels), **kwargs}
    if modalities is not None and takes_modality_chans(name):
        out["modality_chans"] = _modality_count(name, out, modalities)
    if "modalities" not in composed_kwargs(name):
        return out
    if modalities is None:
        raise DambenchInputError(
            f"{name!r} is multi-modal but no modality names were recorded or given; retrain it "
            "with baselines/train.py."
        )
    given = out.setdefault("modalities", [str(m) for m in modalities])
    if list(given) != list(modalities):
        raise DambenchInputError(
            f"model.kwargs.modalities={list(given)}, but the data gives {list(modalities)}; set "
            "task.modalities to the model's, or leave model.kwargs.modalities out."
        )
    return out


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
    The model built with :func:`baselines.registry.create_model` from the stored config (a
    multi-modal model with the modalities it was trained with, ``checkpoint["modalities"]``:
    load the data with the same ones), with the checkpoint's ``model`` weights (the EMA weights
    when the run kept an EMA), and ``model_name``/``info`` set.

    Raises
    ------
    ChannelMismatchError
        When ``channels`` differ from the checkpoint's (names or order), both lists named.
    """
    from baselines.registry import create_model

    state = load_checkpoint(path, map_location=map_location)
    stored = state["dataset"]["channels"]
    check_channels(path, stored, channels)
    name, record = state["config"]["model"]["name"], state.get("modalities")
    kwargs = state["config"]["model"]["kwargs"]
    modalities = None if record is None else record["names"]
    model = create_model(name, **model_kwargs(name, kwargs, channels=stored, modalities=modalities))
    model.load_state_dict(state["model"])
    return model.eval()


def _registered_defaults(name: str) -> dict:
    """The registered default kwargs of ``name`` (a composed model: its host's, with what the
    composition sets), ``{}`` for a plain factory."""
    from baselines.registry import variant_defaults

    try:
        return variant_defaults(name)
    except ValueError:
        return {}


def _check_initial_state(
    path: str | os.PathLike,
    state: Mapping[str, Any],
    model_name: str,
    kwargs: Mapping[str, Any],
    normalization: Mapping[str, list],
) -> bool:
    """Refuse an ``init_from`` checkpoint of another model, kwargs or normalisation; returns
    whether it holds the host of composed ``model_name`` (else the same model)."""
    from baselines.registry import composed_host, composed_kwargs

    source, host = state["model_name"], composed_host(model_name)
    if source not in (model_name, host):
        allowed = [model_name] + ([host] if host else [])
        raise CheckpointError(
            f"model.init_from={path} holds model {source!r}; {model_name!r} starts from a "
            f"checkpoint of {' or '.join(map(repr, allowed))}."
        )
    own = {**_registered_defaults(model_name), **kwargs}  # the effective kwargs, defaults included
    if source != model_name:  # the host's kwargs only
        own = {k: v for k, v in own.items() if k not in composed_kwargs(model_name)}
    stored = {**_registered_defaults(source), **state["config"]["model"]["kwargs"]}
    differences = config_differences(stored, own)
    if differences:
        raise CheckpointError(
            f"model.init_from={path} was trained with other model kwargs "
            f"({'; '.join(differences)}, checkpoint -> this run); use the checkpoint's "
            f"model.kwargs{' for the host' if source != model_name else ''}."
        )
    if dict(state["normalization"]) != dict(normalization):
        raise CheckpointError(
            f"model.init_from={path} was trained with another normalisation (train-split "
            f"mean/std {state['normalization']}, this run {dict(normalization)}); its weights "
            "expect other units. Start from a checkpoint trained on this dataset."
        )
    return source != model_name


def initialise_from(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    model_name: str,
    kwargs: Mapping[str, Any],
    channels: Sequence[str],
    normalization: Mapping[str, list],
) -> dict[str, Any]:
    """Load the ``model`` weights of checkpoint ``path`` into a new run's ``model`` (in place).

    Parameters
    ----------
    model
        The run's model, built as ``create_model(model_name, **kwargs)``.
    path
        A checkpoint of the same model, or of the host of composed ``model_name``
        (``convcnp_small`` for ``multi_convcnp_small``): then every weight but the adapter's is
        loaded and the adapter keeps its initialisation (zero heads: the model's analysis is
        the host's, bit for bit).
    model_name, kwargs
        The run's model and its config kwargs (compared with the checkpoint's; a composed
        model's own kwargs, e.g. ``adapter``, are left out of the comparison with a host).
    channels, normalization
        The run's channels and train-split normalisation (:func:`normalization_record`).

    Returns
    -------
    dict
        Provenance: ``path``, ``model``, ``epoch``, ``dataset_digest`` of the checkpoint.

    Raises
    ------
    ChannelMismatchError
        The checkpoint's channels differ from ``channels``.
    CheckpointError
        Another model, other kwargs or another normalisation, or weights that do not fit.
    """
    from baselines.layers.adapter import ADAPTER_ATTRIBUTE

    state = load_checkpoint(path)
    check_channels(path, state["dataset"]["channels"], channels)
    from_host = _check_initial_state(path, state, model_name, kwargs, normalization)
    result = model.load_state_dict(state["model"], strict=not from_host)
    missing = [k for k in result.missing_keys if not k.startswith(ADAPTER_ATTRIBUTE + ".")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"model.init_from={path} does not fit {model_name!r}: missing {missing}, "
            f"unexpected {list(result.unexpected_keys)}."
        )
    return {
        "path": str(path),
        "model": state["model_name"],
        "epoch": state.get("epoch"),
        "dataset_digest": state["dataset"]["digest"],
        "dataset_digest_kind": state["dataset"].get("digest_kind", LEGACY_DIGEST_KIND),
    }


def checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Provenance of a checkpoint for results files, as plain JSON types: ``model``, ``seed``,
    ``epoch``, ``step``, ``ema_decay``, ``dataset`` (name), ``dataset_digest`` and
    ``dataset_digest_kind`` (``"manifest"``: comparable with a results file's
    ``dataset_digest``; :data:`LEGACY_DIGEST_KIND` for checkpoints from before), ``channels``,
    ``config``, ``model_info``, ``versions``, ``modalities`` (names and sources, or ``None``)
    and ``init_from`` (or ``None``)."""
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
        "dataset_digest_kind": state["dataset"].get("digest_kind", LEGACY_DIGEST_KIND),
        "channels": list(state["dataset"]["channels"]),
        "config": config,
        "model_info": state.get("model_info"),
        "versions": state.get("versions", {}),
        "modalities": state.get("modalities"),
        "init_from": state.get("init_from"),
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
