"""``dambench.open_dataset`` and ``dambench.load.load_rows``: a dataset by name, folder or URL.

Every open checks the folder first: a finished build has ``manifest.json``, and the files read
must be there with the listed sizes (one listing, no reads); ``verify=True`` also recomputes
their sha256. A folder whose build is running or was killed is refused, saying how to resume.
Reads then fail on corrupted bytes by themselves: every Zarr chunk ends with a crc32c, and
:func:`load_rows` asks ``datasets`` to verify the Parquet page checksums.

Hub locations are ``hf://datasets/ORG/NAME[@REVISION]`` (HfFileSystem syntax; a revision holding
``/`` such as ``refs/pr/1`` is written URL-encoded). Without network, a Hub location fails in
seconds with a message saying how to build the dataset locally.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchError, DambenchInputError, DambenchIntegrityError
from dambench.sources.base import (
    DambenchSourceError,
    hub_unreachable_reason,
    is_network_error,
    is_remote,
    open_dataset_any,
)
from dambench.validate import validate
from dambench.verify import (
    MANIFEST,
    STATE_DIR,
    Folder,
    ManifestError,
    UnfinishedBuildError,
    is_hidden,
    unfinished_message,
    verify,
)

HUB_ORGANISATION = "dambench"
EMBEDDED = schema.EMBEDDED_DATASET
HF_DATASETS = "hf://datasets/"


def hub_url(repo_id: str, revision: str | None = None, path: str = "") -> str:
    """``hf://datasets/REPO_ID[@REVISION][/PATH]`` (the revision URL-encoded)."""
    at = f"@{quote(revision, safe='')}" if revision else ""
    return f"{HF_DATASETS}{repo_id}{at}" + (f"/{path}" if path else "")


def parse_hub_url(url: str) -> tuple[str, str | None, str]:
    """``(repo_id, revision or None, path)`` of ``hf://datasets/ORG/NAME[@REVISION][/PATH]``."""
    parts = url.removeprefix(HF_DATASETS).strip("/").split("/")
    if not url.startswith(HF_DATASETS) or len(parts) < 2 or not all(parts[:2]):
        raise DambenchInputError(
            f"{url!r} is not a Hub dataset URL; expected hf://datasets/ORG/NAME[@REVISION][/PATH]."
        )
    name, _, revision = parts[1].partition("@")
    return f"{parts[0]}/{name}", unquote(revision) or None, "/".join(parts[2:])


def hub_zarr_url(name: str, revision: str | None = None) -> str:
    """``hf://datasets/dambench/NAME[@REVISION]/NAME.zarr``: the store of a published dataset."""
    return hub_url(f"{HUB_ORGANISATION}/{name}", revision, f"{name}.zarr")


def _store_in_folder(folder: Path) -> Path:
    stores = sorted(folder.glob("*.zarr"))
    if not stores and Folder(folder).unfinished():
        raise UnfinishedBuildError(unfinished_message(str(folder)))
    if len(stores) != 1:
        raise DambenchInputError(
            f"{folder} should hold exactly one .zarr store (a dambench build), found {len(stores)}."
        )
    return stores[0]


def dataset_root(name_or_path: str | os.PathLike, revision: str | None = None) -> str:
    """The folder (local path or URL) of a dataset name, build folder, store path or URL.

    ``era5-sample`` is built into the cache on first use; other shipped names are the Hub
    datasets ``hf://datasets/dambench/NAME``.
    """
    from dambench.assembly.config import available_configs

    text = str(name_or_path).rstrip("/")
    remote = is_remote(text)
    if revision is not None and not (text.startswith(HF_DATASETS) or text in available_configs()):
        raise DambenchInputError(f"revision={revision!r} applies to Hub datasets only, not {text}.")
    if text.startswith(HF_DATASETS):
        repo_id, in_url, path = parse_hub_url(text)
        if revision and in_url and revision != in_url:
            raise DambenchInputError(f"{text} names revision {in_url!r} but revision={revision!r}.")
        if path.endswith(".zarr"):
            path = path.rpartition("/")[0]
        return hub_url(repo_id, revision or in_url, path)
    if text.endswith(".zarr"):
        return text.rsplit("/", 1)[0] if remote else str(Path(text).parent)
    if not remote and Path(text).is_dir():
        return text
    if text == EMBEDDED and revision is None:
        return str(ensure_embedded())
    if text in available_configs():
        return hub_url(f"{HUB_ORGANISATION}/{text}", revision)
    if remote:
        return text
    raise DambenchInputError(
        f"{text!r} is neither a dataset name ({available_configs()}), a build folder, a .zarr "
        "store nor a URL."
    )


def resolve(name_or_path: str | os.PathLike, revision: str | None = None) -> str:
    """The Zarr store location of a dataset name, build folder, store path or URL."""
    text = str(name_or_path).rstrip("/")
    root = dataset_root(text, revision)
    if text.endswith(".zarr"):
        return f"{root}/{text.rsplit('/', 1)[-1]}"
    if not is_remote(root):
        return str(_store_in_folder(Path(root)))
    if root.startswith(HF_DATASETS):
        repo_id, rev, _ = parse_hub_url(root)
        name = repo_id.rsplit("/", 1)[-1]
        return hub_url(repo_id, rev, f"{name}.zarr")
    return f"{root}/{root.rsplit('/', 1)[-1]}.zarr"


def ensure_embedded(cache_dir: str | os.PathLike | None = None, verbose: bool = False) -> Path:
    """The era5-sample build folder (:func:`dambench.assembly.embedded.ensure_embedded`; imported
    here on use, so that ``import dambench`` does not load the builder)."""
    from dambench.assembly.embedded import ensure_embedded as build_embedded

    return build_embedded(cache_dir, verbose=verbose)


def check_folder(root: str, *, prefix: str = "", hashes: bool = False) -> None:
    """Refuse an unfinished or damaged build folder before reading it.

    With ``manifest.json``: the files under ``prefix`` must match it: their sizes, and the
    sha256 of what every open reads (Zarr metadata, ``stats.json``, coordinates: kilobytes), so
    that the normalisation statistics and cycles read are those the manifest (and so the
    recorded dataset digest) attests; every file's sha256 with ``hashes``. Without: a build's
    state folder means an unfinished build; a store that calls itself a dambench dataset (root
    attribute ``dambench_dataset``) without a manifest is an incomplete copy. A store of
    anything else is left to the schema validation.

    Raises
    ------
    UnfinishedBuildError, ManifestError
        Naming the folder, the files and what to do.
    """
    folder = Folder(root)
    if not folder.is_dir():
        return  # nothing there: opening it says so
    if folder.exists(MANIFEST):
        report = verify(folder, hashes=hashes, prefix=prefix, strict=False, opened=True)
        if not report.ok:
            raise ManifestError(
                f"{report.summary()} `dambench verify {folder.location}` checks every file."
            )
    elif folder.unfinished():
        raise UnfinishedBuildError(unfinished_message(folder.location))
    elif prefix and _claims_dambench(f"{root}/{prefix.rstrip('/')}"):
        raise ManifestError(
            f"{root} holds the dambench store {prefix.rstrip('/')} but no {MANIFEST} and no "
            f"{STATE_DIR}/: an incomplete copy. Download or build the whole folder again."
        )


def _claims_dambench(store: str) -> bool:
    import fsspec

    try:
        with fsspec.open(f"{store}/zarr.json", "rb") as handle:
            return "dambench_dataset" in json.loads(handle.read()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return False


def _hub_error(location: str, reason: str) -> DambenchSourceError:
    name = location.removeprefix(HF_DATASETS).split("/")[1].split("@")[0]
    return DambenchSourceError(
        f"Cannot reach the Hugging Face Hub for {location} ({reason}). To work without the "
        f"Hub, build the dataset locally: dambench build {name} --out DIR, then "
        "dambench.open_dataset(DIR)."
    )


def guard_hub(location: str) -> None:
    """Fail in seconds, with the how-to-build-locally message, when a Hub location cannot be
    reached."""
    if location.startswith(HF_DATASETS):
        reason = hub_unreachable_reason()
        if reason is not None:
            raise _hub_error(location, reason)


def open_dataset(
    name_or_path: str | os.PathLike,
    split: str | None = None,
    *,
    chunks: dict | None = None,
    revision: str | None = None,
    verify: bool = False,
) -> xr.Dataset:
    """Open a DAMBench dataset lazily, check its folder and validate it against the schema.

    Parameters
    ----------
    name_or_path
        ``"era5-sample"`` (built into the cache on first use), a published name
        (``"era5-fengwu"`` -> ``hf://datasets/dambench/era5-fengwu``), a build folder, a ``.zarr``
        path or any fsspec URL of one (``hf://datasets/ORG/NAME@REVISION``).
    split
        ``"train"``, ``"validation"`` or ``"test"``; default: every cycle.
    chunks
        ``None`` (default): lazy arrays without dask, the fastest for reading cycle by cycle;
        ``{}``: dask arrays with the store's chunks (one per cycle) for out-of-core computation.
    revision
        A Hub branch, tag or commit (``"v1.0"``) of a published dataset.
    verify
        Recompute the sha256 of every file of the store against ``manifest.json`` before
        opening (reads every byte once). By default only the file list and sizes are checked;
        corrupted chunks then fail when read (crc32c).

    Returns
    -------
    Dataset with ``target``, ``background``, ``observation`` ``(time, channel, latitude,
    longitude)`` and the modalities ``(time, latitude, longitude)``; attrs hold the provenance and
    the train-split ``normalization`` statistics (a JSON string: see :func:`stats_from_attrs`).

    Raises
    ------
    UnfinishedBuildError
        The folder's build is running or was killed.
    ManifestError
        Store files missing, resized or (``verify``) changed.
    DambenchSourceError
        The location cannot be read (no network: how to build locally).
    """
    location = resolve(name_or_path, revision)
    guard_hub(location)
    root, store = location.rsplit("/", 1) if is_remote(location) else _split_local(location)
    try:
        check_folder(root, prefix=f"{store}/", hashes=verify)
        ds = open_dataset_any(location, engine="zarr", chunks=chunks)
    except DambenchSourceError as err:
        if location.startswith(HF_DATASETS):
            raise _hub_error(location, str(err)) from err
        raise
    except FileNotFoundError as err:
        raise DambenchInputError(f"No DAMBench store at {location}.") from err
    except Exception as err:
        if location.startswith(HF_DATASETS) and is_network_error(err):
            raise _hub_error(location, f"{type(err).__name__}: {err}") from err
        raise
    validate(ds)
    if split is None:
        return ds
    if split not in schema.SPLITS:
        raise DambenchInputError(f"Unknown {split=}; choose from {list(schema.SPLITS)}.")
    chosen = np.flatnonzero(ds["split"].values == split)
    if chosen.size == 0:
        raise DambenchInputError(f"{location} has no cycle in split {split!r}.")
    return ds.isel({schema.TIME: chosen})


def read_block(ds: xr.Dataset, variable: str, selection: dict) -> xr.DataArray:
    """``ds[variable].sel(selection)`` read into memory, for a ``ds`` from :func:`open_dataset`.

    A failed read (a corrupted chunk fails its crc32c; a shard that does not decompress) is
    raised as one :class:`DambenchIntegrityError` naming the store, the array, the chunk key and
    the cycle, and the remedy (``dambench verify FOLDER``), instead of the reader's traceback.
    """
    chosen = ds[variable].sel(selection)
    try:
        return chosen.load()
    except (DambenchError, MemoryError):
        raise
    except Exception as err:  # zarr raises ValueError, RuntimeError, numcodecs errors, ...
        raise _read_error(ds, variable, chosen, err) from err


def read_cycle(ds: xr.Dataset, variable: str, time, channels=None) -> xr.DataArray:
    """The cycle ``time`` of ``ds[variable]`` (of ``channels``, a name or a list; all when
    None) in memory, read through :func:`read_block`: a corrupted chunk is one
    :class:`DambenchIntegrityError` naming the store, the array, the chunk and the cycle."""
    selection: dict = {schema.TIME: [time]}
    if channels is not None:
        selection[schema.CHANNEL] = channels
    return read_block(ds, variable, selection).isel({schema.TIME: 0})


def _read_error(
    ds: xr.Dataset, variable: str, chosen: xr.DataArray, err: Exception
) -> DambenchIntegrityError:
    source = str(ds.encoding.get("source", "the store"))
    cycle = _first_unreadable(chosen)
    where = f"{source}/{variable}"
    if cycle is not None:
        key = chunk_key(ds[variable], _store_position(source, cycle))
        where = f"{where}/{key} (cycle {str(cycle)[:16]})" if key else f"{where} (cycle {cycle})"
    folder = source.rsplit("/", 1)[0] if "/" in source else source
    return DambenchIntegrityError(
        f"Cannot read {where}: {type(err).__name__}: {str(err).rstrip('.')}. The file is "
        f"damaged: run `dambench verify {folder}` to list every damaged file, then download or "
        "build the dataset again."
    )


def _first_unreadable(chosen: xr.DataArray) -> np.datetime64 | None:
    """The first cycle of ``chosen`` that cannot be read, or None."""
    if schema.TIME not in chosen.dims:
        return None
    for time in chosen[schema.TIME].values:
        try:
            chosen.sel({schema.TIME: time}).load()
        except Exception:  # the failure being located
            return time
    return None


def _store_position(source: str, time: np.datetime64) -> int | None:
    """Index of ``time`` along the store's whole time axis (a split holds a subset)."""
    try:
        times = xr.open_zarr(source, consolidated=None)[schema.TIME].values
    except Exception:  # the coordinates were checked on open; anything else: no chunk key
        return None
    found = np.flatnonzero(times == time)
    return int(found[0]) if found.size else None


def chunk_key(field: xr.DataArray, time_index: int | None) -> str | None:
    """The Zarr v3 key (``c/2/0/0/0``) of the chunk, or shard, holding ``time_index`` of an
    array whose other dims are each one chunk; None when that is not so."""
    encoding = field.encoding
    shape = encoding.get("shards") or encoding.get("chunks")
    if time_index is None or shape is None or field.dims[0] != schema.TIME:
        return None
    rest = zip(field.dims[1:], shape[1:], strict=True)
    if not all(size >= field.sizes[d] for d, size in rest):
        return None
    return "c/" + "/".join([str(time_index // shape[0])] + ["0"] * (len(shape) - 1))


def _split_local(location: str) -> tuple[str, str]:
    path = Path(location)
    return str(path.parent), path.name


def load_rows(
    name_or_path: str | os.PathLike,
    split: str | None = None,
    *,
    streaming: bool = False,
    revision: str | None = None,
    verify: bool = False,
    **kwargs,
):
    """The Parquet rows of a dataset through Hugging Face ``datasets``, checked like
    :func:`open_dataset`.

    ``datasets.load_dataset`` on the folder (or the Hub repository ``dambench/NAME``) with the
    Parquet page checksums verified on every read, after the folder check of
    :func:`check_folder` (``verify=True``: every file's sha256). A corrupted page of a local
    folder raises :class:`DambenchIntegrityError` naming the Parquet file (with
    ``streaming=True`` the reader's ``OSError`` comes while iterating, naming no file). A Hub
    dataset without network fails in seconds with the how-to-build-locally message.

    Parameters
    ----------
    name_or_path, revision, verify
        As in :func:`open_dataset`.
    split, streaming, kwargs
        Passed to ``datasets.load_dataset`` (e.g. ``cache_dir``).

    Returns
    -------
    ``datasets.Dataset``, ``IterableDataset`` or a dict of them; use ``.with_format("numpy")``.
    """
    import pyarrow.dataset as pds
    from datasets import load_dataset

    root = dataset_root(name_or_path, revision)
    options = pds.ParquetFragmentScanOptions(page_checksum_verification=True)
    kwargs.setdefault("fragment_scan_options", options)
    if not root.startswith(HF_DATASETS):
        check_folder(root, hashes=verify)
        try:
            return load_dataset(str(root), split=split, streaming=streaming, **kwargs)
        except Exception as err:  # datasets wraps the reader's error in its own
            if not _is_checksum_failure(err):
                raise
            raise DambenchIntegrityError(_parquet_message(root, split, err)) from err
    guard_hub(root)
    repo_id, rev, _ = parse_hub_url(root)
    try:
        if verify:
            check_folder(root, hashes=True)
        return load_dataset(repo_id, split=split, streaming=streaming, revision=rev, **kwargs)
    except Exception as err:
        if is_network_error(err):
            raise _hub_error(root, f"{type(err).__name__}: {err}") from err
        if _is_checksum_failure(err):
            inner = _innermost(err)
            raise DambenchIntegrityError(
                f"A Parquet page checksum failed reading {root} ({type(inner).__name__}: "
                f"{inner}). Run `dambench verify {root}` to name the damaged file."
            ) from err
        raise


def _is_checksum_failure(err: BaseException | None) -> bool:
    """Whether ``err`` or an error it was raised from is a failed (page) checksum."""
    while err is not None:
        if "checksum" in str(err).lower():
            return True
        err = err.__cause__ or err.__context__
    return False


def damaged_parquet(root: str | os.PathLike, split: str | None = None) -> list[str]:
    """Folder-relative paths of the Parquet files (of ``split``, else all) under a local build
    folder whose page checksums fail, read one record batch at a time."""
    import pyarrow.parquet as pq

    found = []
    pattern = f"{split}-*.parquet" if split else "*.parquet"
    for path in sorted(Path(root).rglob(pattern)):
        relative = path.relative_to(root).as_posix()
        if is_hidden(relative):
            continue
        try:
            for _ in pq.ParquetFile(path, page_checksum_verification=True).iter_batches():
                pass
        except (OSError, ValueError):  # pyarrow's ArrowException subclasses
            found.append(relative)
    return found


def _parquet_message(root: str, split: str | None, err: BaseException) -> str:
    damaged = damaged_parquet(root, split) or ["(not found again on a second read)"]
    inner = _innermost(err)
    return (
        f"A Parquet page checksum failed in {root}: {', '.join(damaged)} "
        f"({type(inner).__name__}: {inner}). The file is damaged: run `dambench verify {root}`, "
        "then download or build the dataset again."
    )


def _innermost(err: BaseException) -> BaseException:
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    return err


def stats_from_attrs(ds: xr.Dataset) -> xr.Dataset:
    """The train-split per-channel ``mean``/``std`` recorded in a built store, as a Dataset.

    The ``normalization`` attribute is a JSON string (stores before dambench 0.2 hold a
    mapping; both are read).
    """
    norm = ds.attrs.get("normalization")
    if not norm:
        raise DambenchInputError(
            "This dataset records no normalization statistics (attribute 'normalization'); "
            "compute them on the train split with dambench.channel_stats."
        )
    if isinstance(norm, str):
        try:
            norm = json.loads(norm)
        except ValueError as err:
            raise DambenchInputError(
                f"The 'normalization' attribute is not valid JSON ({err})."
            ) from err
    missing = [k for k in ("channels", "mean", "std") if k not in norm]
    if missing:
        raise DambenchInputError(f"The 'normalization' attribute lacks {missing}.")
    coords = {schema.CHANNEL: list(norm["channels"])}
    return xr.Dataset(
        {name: (schema.CHANNEL, np.asarray(norm[name], np.float64)) for name in ("mean", "std")},
        coords=coords,
    )
