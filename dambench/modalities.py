"""Modalities in model space: the transforms of :data:`dambench.schema.MODALITIES` and the
train-split statistics that complete them.

A modality (``precip``, ``precip_gauges``, ``olr``) is stored in physical units as a
``(time, latitude, longitude)`` variable, NaN where absent. A model sees it in *model space*:
``transform(x)`` (``log1p`` or the identity), then, for the standardised ones, a z-score with the
mean and std of ``transform(x)`` over the finite values of the train split. The build records those
statistics in ``ds.attrs["normalization"]["modalities"]``; :func:`resolve_modality_stats` reads them
and, for stores built before they were recorded, computes them once from the train split (with a
:class:`ModalityStatsWarning`).

Statistics are a Dataset over the ``modality`` dim with ``mean`` and ``std`` (of the transformed
values) and a ``transform`` coordinate naming the transform they belong to, so statistics of one
transform are never applied after another.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchInputError, DambenchSchemaError
from dambench.units import same_units

__all__ = [
    "ModalityStatsWarning",
    "check_modality_units",
    "from_model_space",
    "inverse_transform",
    "modality_info",
    "modality_moments",
    "modality_stats",
    "modality_stats_from_attrs",
    "model_space_scale",
    "names_for_groups",
    "resolve_modality_stats",
    "stored_modalities",
    "to_model_space",
    "transform",
]

_FORWARD = {"identity": np.positive, "log1p": np.log1p}
_INVERSE = {"identity": np.positive, "log1p": np.expm1}
_BLOCK_CYCLES = 64


class ModalityStatsWarning(UserWarning):
    """A store lacks the train-split statistics of its transformed modalities; they were
    computed from its train split instead (rebuild the dataset to record them)."""


def external_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside dambench (call it
    in the function that calls :func:`warnings.warn`)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("dambench."):
        frame, level = frame.f_back, level + 1
    return level


def modality_info(name: str) -> schema.ModalityInfo:
    """The schema's :class:`~dambench.schema.ModalityInfo` of modality ``name``.

    Raises
    ------
    DambenchInputError
        ``name`` is not a schema modality (the known names are listed).
    """
    info = schema.MODALITIES.get(str(name))
    if info is None:
        raise DambenchInputError(
            f"Unknown modality {name!r}; the schema defines {list(schema.MODALITIES)}."
        )
    return info


def names_for_groups(groups: Sequence[str]) -> list[str]:
    """The modality variables a build config's ``modalities`` entry produces, in schema order
    (``["olr", "precip"]`` -> ``["precip", "precip_gauges", "olr"]``)."""
    unknown = sorted(set(groups) - set(schema.MODALITY_GROUPS))
    if unknown:
        raise DambenchInputError(
            f"Unknown modality groups {unknown}; a build takes {list(schema.MODALITY_GROUPS)}."
        )
    return [name for name, info in schema.MODALITIES.items() if info.group in set(groups)]


def stored_modalities(ds: xr.Dataset) -> list[str]:
    """Schema modalities held by ``ds`` as ``(time, latitude, longitude)`` variables, in schema
    order. Other variables with those dims are not modalities and are left out."""
    return [
        name
        for name in schema.MODALITIES
        if name in ds.data_vars and ds[name].dims == schema.MODALITY_DIMS
    ]


def check_modality_units(ds: xr.Dataset, names: Iterable[str]) -> None:
    """Raise unless every modality ``names`` held by ``ds`` has the schema's units.

    Raises
    ------
    DambenchSchemaError
        A modality without a ``units`` attribute or with other units (both are named).
    """
    for name in names:
        if name not in ds.data_vars:
            continue
        expected = modality_info(name).units
        found = ds[name].attrs.get("units")
        if not same_units(found, expected):
            raise DambenchSchemaError(
                f"Modality {name!r} has units {found!r}; expected {expected!r} (the schema's "
                f"units, before the model-space transform). Convert it and set "
                f"ds[{name!r}].attrs['units']."
            )


# --- transforms -----------------------------------------------------------------------------------


def transform(values: Any, name: str) -> Any:
    """``transform(x)`` of modality ``name`` (numpy or xarray, physical units in); NaN stays NaN.
    The first step into model space, before any z-score."""
    return _FORWARD[modality_info(name).transform](values)


def inverse_transform(values: Any, name: str) -> Any:
    """Inverse of :func:`transform`: back to physical units."""
    return _INVERSE[modality_info(name).transform](values)


def model_space_scale(name: str, stats: xr.Dataset | None) -> tuple[float, float]:
    """(mean, std) of the z-score of modality ``name`` in ``stats``; (0, 1) when it is not
    standardised.

    Raises
    ------
    DambenchInputError
        Statistics missing, of another transform, or degenerate.
    """
    info = modality_info(name)
    if not info.standardize:
        return 0.0, 1.0
    if stats is None or name not in stats[schema.MODALITY].values.tolist():
        raise DambenchInputError(
            f"Modality {name!r} is standardised and needs its train-split statistics; pass "
            "stats from dambench.modalities.resolve_modality_stats."
        )
    entry = stats.sel({schema.MODALITY: name})
    recorded = str(entry["transform"].values)
    if recorded != info.transform:
        raise DambenchInputError(
            f"Statistics of modality {name!r} are of transform {recorded!r}; the schema's is "
            f"{info.transform!r}. Recompute them with dambench.modalities.modality_stats."
        )
    mean, std = float(entry["mean"]), float(entry["std"])
    if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
        raise DambenchInputError(
            f"Statistics of modality {name!r} are degenerate ({mean=}, {std=}): it has no "
            "finite or no varying value in the train split; leave it out of modalities=."
        )
    return mean, std


def to_model_space(values: Any, name: str, stats: xr.Dataset | None = None) -> Any:
    """Modality ``name`` from physical units into model space, computed in float64.

    Parameters
    ----------
    values
        numpy array or xarray object in the schema's units; NaN where absent.
    name
        A schema modality.
    stats
        Train-split statistics (:func:`resolve_modality_stats`); needed when the modality is
        standardised.

    Returns
    -------
    float64 values ``(transform(x) - mean) / std`` (or ``transform(x)``); NaN where ``values``
    is NaN.
    """
    mean, std = model_space_scale(name, stats)
    return (transform(_float64(values), name) - mean) / std


def from_model_space(values: Any, name: str, stats: xr.Dataset | None = None) -> Any:
    """Inverse of :func:`to_model_space`: model space back to the schema's units (float64)."""
    mean, std = model_space_scale(name, stats)
    return inverse_transform(_float64(values) * std + mean, name)


def _float64(values: Any) -> Any:
    if isinstance(values, (xr.DataArray, xr.Dataset)):
        return values.astype(np.float64)
    return np.asarray(values, np.float64)


# --- statistics -----------------------------------------------------------------------------------


def modality_moments(field: xr.DataArray, name: str) -> dict[str, Any]:
    """Mean and std of ``transform(field)`` over its finite values, streamed over ``time`` in
    float64 (blocks combined with Chan's parallel update, no cancellation).

    Returns
    -------
    ``{"transform", "standardize", "mean", "std", "n_finite"}`` (a JSON-ready entry of
    ``ds.attrs["normalization"]["modalities"]``); ``mean``/``std`` are ``None`` without a finite
    value.
    """
    info = modality_info(name)
    count, mean, m2 = 0, 0.0, 0.0
    for start in range(0, field.sizes[schema.TIME], _BLOCK_CYCLES):
        block = field.isel({schema.TIME: slice(start, start + _BLOCK_CYCLES)}).values
        values = transform(np.asarray(block, np.float64), name)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        n, block_mean = values.size, float(values.mean())
        block_m2 = float(((values - block_mean) ** 2).sum())
        delta = block_mean - mean
        total = count + n
        mean += delta * n / total
        m2 += block_m2 + delta**2 * count * n / total
        count = total
    return {
        "transform": info.transform,
        "standardize": info.standardize,
        "mean": mean if count else None,
        "std": float(np.sqrt(m2 / count)) if count else None,
        "n_finite": count,
    }


def _as_stats(entries: dict[str, dict[str, Any]]) -> xr.Dataset:
    names = list(entries)
    return xr.Dataset(
        {
            "mean": (schema.MODALITY, [_number(entries[n]["mean"]) for n in names]),
            "std": (schema.MODALITY, [_number(entries[n]["std"]) for n in names]),
        },
        coords={
            schema.MODALITY: names,
            "transform": (schema.MODALITY, [str(entries[n]["transform"]) for n in names]),
        },
    )


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _train_cycles(ds: xr.Dataset) -> xr.Dataset:
    split = ds.coords.get("split")
    if split is None:
        raise DambenchInputError(
            "Modality statistics come from the train split, but ds has no 'split' coordinate."
        )
    chosen = np.flatnonzero(np.asarray(split.values) == "train")
    if chosen.size == 0:
        raise DambenchInputError("ds has no train cycle to compute modality statistics from.")
    return ds.isel({schema.TIME: chosen})


def modality_stats(ds: xr.Dataset, names: Sequence[str] | None = None) -> xr.Dataset:
    """Train-split statistics of the transformed modalities, computed from ``ds``.

    Parameters
    ----------
    ds
        A dataset whose ``split`` coordinate marks train cycles (all of a store, or its train
        split); lazy stores are read block by block.
    names
        Modalities (default: :func:`stored_modalities`).

    Returns
    -------
    Dataset over ``modality``: ``mean``, ``std`` (of the transformed values, NaN without a finite
    value) and the ``transform`` coordinate.
    """
    train = _train_cycles(ds)
    names = stored_modalities(ds) if names is None else [str(n) for n in names]
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        raise DambenchInputError(f"ds lacks the modalities {missing}.")
    return _as_stats({name: modality_moments(train[name], name) for name in names})


def _normalization(ds: xr.Dataset) -> dict[str, Any]:
    raw = ds.attrs.get("normalization") or {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as err:
            raise DambenchInputError("ds.attrs['normalization'] is not JSON.") from err
    return dict(raw)


def modality_stats_from_attrs(ds: xr.Dataset, names: Sequence[str]) -> xr.Dataset:
    """The recorded statistics of ``names`` usable with the schema's transforms.

    An entry is usable when it names the schema's transform, or, written before transforms were
    recorded, when the transform is the identity (raw statistics are then the same). Names
    without a usable entry are left out of the result.
    """
    recorded = _normalization(ds).get("modalities") or {}
    usable = {}
    for name in names:
        entry = recorded.get(name)
        if not isinstance(entry, dict) or entry.get("mean") is None:
            continue
        kind = entry.get("transform", "identity")
        if kind == modality_info(name).transform:
            usable[name] = {**entry, "transform": kind}
    return _as_stats(usable)


def _fallback_source(ds: xr.Dataset) -> tuple[xr.Dataset, str]:
    """Where to find train cycles: ``ds`` itself, or the whole store it was opened from."""
    split = ds.coords.get("split")
    if split is not None and np.any(np.asarray(split.values) == "train"):
        return ds, "the given dataset"
    location = ds.encoding.get("source")
    if not location:
        raise DambenchInputError(
            "The dataset records no train-split statistics of its transformed modalities and "
            "neither holds train cycles nor names its store (ds.encoding['source']); pass "
            "modality_stats=dambench.modalities.modality_stats(train_dataset), or rebuild it."
        )
    from dambench.sources.base import open_dataset_any

    whole = open_dataset_any(location, engine="zarr", consolidated=False, chunks=None)
    return whole, str(location)


def resolve_modality_stats(
    ds: xr.Dataset, names: Sequence[str], given: xr.Dataset | None = None
) -> xr.Dataset:
    """Statistics of the standardised modalities among ``names`` that ``ds`` holds.

    In order: ``given``; else the store's recorded statistics; for those it lacks (builds that
    predate them), statistics computed once from the train split (of ``ds``, or of the store
    ``ds.encoding["source"]`` it was opened from), with a :class:`ModalityStatsWarning`.

    Raises
    ------
    DambenchInputError
        ``given`` lacks a needed modality, or no train split can be reached, or a modality has
        no finite train value.
    """
    needed = [n for n in names if n in ds.data_vars and modality_info(n).standardize]
    if given is not None:
        if not isinstance(given, xr.Dataset) or not (
            {"mean", "std"} <= set(given.data_vars) and "transform" in given.coords
        ):
            raise DambenchInputError(
                "modality_stats must be a Dataset over 'modality' with 'mean', 'std' and a "
                "'transform' coordinate, as dambench.modalities.modality_stats returns."
            )
        have = [str(n) for n in given[schema.MODALITY].values.tolist()]
        lacking = [n for n in needed if n not in have]
        if lacking:
            raise DambenchInputError(f"modality_stats lack {lacking}; they hold {have}.")
        stats = given.sel({schema.MODALITY: needed})
    else:
        stats = modality_stats_from_attrs(ds, needed)
        lacking = [n for n in needed if n not in stats[schema.MODALITY].values.tolist()]
        if lacking:
            source, where = _fallback_source(ds)
            warnings.warn(
                f"{where} records no train-split statistics of the transformed modalities "
                f"{lacking} (a build by an older dambench); computing them once from its train "
                "cycles. Rebuild the dataset to record them, or pass modality_stats=.",
                ModalityStatsWarning,
                stacklevel=external_stacklevel(),
            )
            stats = xr.concat([stats, modality_stats(source, lacking)], dim=schema.MODALITY)
    for name in needed:
        model_space_scale(name, stats)  # refuses degenerate statistics now, not in a worker
    return stats
