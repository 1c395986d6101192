"""``dambench.open_dataset``: a lazy, validated triplet Dataset from a name, folder or URL."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchInputError
from dambench.sources.base import DambenchSourceError, cache_root, is_remote, open_dataset_any
from dambench.validate import validate

HUB_ORGANISATION = "dambench"
EMBEDDED = "era5-sample"


def hub_zarr_url(name: str) -> str:
    """``hf://datasets/dambench/NAME/NAME.zarr``: the Zarr store of a published dataset."""
    return f"hf://datasets/{HUB_ORGANISATION}/{name}/{name}.zarr"


def _store_in_folder(folder: Path) -> Path:
    stores = sorted(folder.glob("*.zarr"))
    if len(stores) != 1:
        raise DambenchInputError(
            f"{folder} should hold exactly one .zarr store (a dambench build), found {len(stores)}."
        )
    return stores[0]


def resolve(name_or_path: str | os.PathLike) -> str:
    """The Zarr location of a dataset name, build folder, store path or URL."""
    from dambench.build.config import available_configs

    text = str(name_or_path).rstrip("/")
    if text.endswith(".zarr"):
        return text
    if not is_remote(text) and Path(text).is_dir():
        return str(_store_in_folder(Path(text)))
    if text.startswith("hf://datasets/"):
        return f"{text}/{text.rsplit('/', 1)[-1]}.zarr"
    if text == EMBEDDED:
        return str(_store_in_folder(ensure_embedded()))
    if text in available_configs():
        return hub_zarr_url(text)
    if is_remote(text):
        return text
    raise DambenchInputError(
        f"{text!r} is neither a dataset name ({available_configs()}), a build folder, a .zarr "
        "store nor a URL."
    )


def ensure_embedded(cache_dir: str | os.PathLike | None = None, verbose: bool = False) -> Path:
    """The era5-sample build folder in the user cache, built on first use (well under a minute)."""
    from dambench.build import build

    folder = Path(cache_dir) if cache_dir else cache_root() / "datasets" / EMBEDDED
    return build(EMBEDDED, folder, verbose=verbose)


def open_dataset(
    name_or_path: str | os.PathLike, split: str | None = None, *, chunks: dict | None = None
) -> xr.Dataset:
    """Open a DAMBench dataset lazily and validate it against the schema.

    Parameters
    ----------
    name_or_path
        ``"era5-sample"`` (built into the cache on first use), a published name
        (``"era5-fengwu"`` -> ``hf://datasets/dambench/era5-fengwu``), a build folder, a ``.zarr``
        path or any fsspec URL of one.
    split
        ``"train"``, ``"validation"`` or ``"test"``; default: every cycle.
    chunks
        ``None`` (default): lazy arrays without dask, the fastest for reading cycle by cycle;
        ``{}``: dask arrays with the store's chunks (one per cycle) for out-of-core computation.

    Returns
    -------
    Dataset with ``target``, ``background``, ``observation`` ``(time, channel, latitude,
    longitude)`` and the modalities ``(time, latitude, longitude)``; attrs hold the provenance and
    the train-split ``normalization`` statistics.
    """
    location = resolve(name_or_path)
    try:
        ds = open_dataset_any(location, engine="zarr", consolidated=False, chunks=chunks)
    except DambenchSourceError as err:
        raise DambenchSourceError(
            f"{err} To work without the Hub, build the dataset locally: "
            f"dambench build {Path(location).stem} --out DIR, then dambench.open_dataset(DIR)."
        ) from err
    except FileNotFoundError as err:
        raise DambenchInputError(f"No DAMBench store at {location}.") from err
    validate(ds)
    if split is None:
        return ds
    if split not in schema.SPLITS:
        raise DambenchInputError(f"Unknown {split=}; choose from {list(schema.SPLITS)}.")
    chosen = np.flatnonzero(ds["split"].values == split)
    if chosen.size == 0:
        raise DambenchInputError(f"{location} has no cycle in split {split!r}.")
    return ds.isel({schema.TIME: chosen})


def stats_from_attrs(ds: xr.Dataset) -> xr.Dataset:
    """The train-split per-channel ``mean``/``std`` recorded in a built store, as a Dataset."""
    norm = ds.attrs.get("normalization")
    if not norm:
        raise DambenchInputError("This dataset records no normalization statistics.")
    coords = {schema.CHANNEL: norm["channels"]}
    return xr.Dataset(
        {name: (schema.CHANNEL, np.asarray(norm[name], np.float64)) for name in ("mean", "std")},
        coords=coords,
    )
