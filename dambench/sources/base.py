"""What every source reader shares: the ``Source`` contract and opening any fsspec URL.

A *source* turns files (a local path or any fsspec URL: ``gs://``, ``s3://``, ``https://``,
``hf://``) into canonical xarray objects: schema names and units, latitude 90 -> -90, longitude
0 -> 360, dims ``(time, channel, latitude, longitude)`` for state variables or
``(time, latitude, longitude)`` for a single modality. Remote and local paths go through the same
code: :func:`open_dataset_any` and :func:`local_copy`. Remote reads retry transient failures
with backoff and fail with one line naming the URL (:mod:`dambench.sources.retry`,
:mod:`dambench.sources.remote`).
"""

from __future__ import annotations

import os
import re
import socket
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import fsspec
import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.exceptions import (
    DambenchError,
    DambenchInputError,
    DambenchSourceError,
    MissingDependencyError,
)
from dambench.sources.remote import REMOTE_EXTRA, prepare_remote, protocol_of, use_retrying_http

PathLike = str | os.PathLike

use_retrying_http()

@runtime_checkable
class Source(Protocol):
    """Reads canonical fields for given times.

    ``__call__(times, channels=None)`` returns a DataArray ``(time, channel, latitude, longitude)``
    in physical units (per-channel ``units`` coordinate), or raises naming what is missing.
    """

    def __call__(
        self,
        times: Sequence[np.datetime64] | pd.DatetimeIndex,
        channels: Sequence[str] | None = None,
    ) -> xr.DataArray: ...


def is_remote(path: PathLike) -> bool:
    """True for URLs with a protocol other than ``file://``."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def unreachable(path: PathLike, err: Exception) -> DambenchSourceError:
    """The one-line error for a remote ``path`` that could not be read because of ``err``."""
    hint = ""
    if os.environ.get("HF_HUB_OFFLINE") == "1" and protocol_of(str(path)) == "hf":
        hint = " HF_HUB_OFFLINE=1 is set."
    what = "not found" if isinstance(err, FileNotFoundError) else f"{type(err).__name__}: {err}"
    return DambenchSourceError(
        f"Cannot read {path!s} ({what}).{hint} Check the URL and the network, "
        "or download the file and pass its local path."
    )


_NETWORK_ERROR_NAMES = frozenset(
    {
        "OfflineModeIsEnabled",
        "ConnectionError",  # requests' ConnectionError is not the built-in one
        "Timeout",
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "TimeoutException",
        "TransportError",
        "NetworkError",
        "ProxyError",
        "SSLError",
        "MaxRetryError",
        "NewConnectionError",
    }
)
HUB_PROBE_TIMEOUT_S = 3.0
"""Seconds :func:`hub_reachable` waits for a TCP connection to the Hub."""


def is_network_error(err: BaseException) -> bool:
    """True when ``err``, or an error it was raised from, is a network or offline-mode error
    (of any HTTP client: requests, httpx, aiohttp, urllib3)."""
    for link in _chain(err):
        if isinstance(link, ConnectionError | TimeoutError | socket.gaierror):
            return True
        if {cls.__name__ for cls in type(link).__mro__} & _NETWORK_ERROR_NAMES:
            return True
    return False


def _chain(err: BaseException | None) -> Iterable[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def hub_unreachable_reason() -> str | None:
    """Why the Hugging Face Hub cannot be used now, or ``None`` when it can.

    ``HF_HUB_OFFLINE=1`` answers at once; otherwise one TCP connection to the Hub's endpoint
    (``HF_ENDPOINT``, default ``https://huggingface.co``) is tried for at most
    :data:`HUB_PROBE_TIMEOUT_S` seconds, so that a machine without network fails in seconds
    instead of the Hub client's retries (about 23 s).
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    from urllib.parse import urlsplit

    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S):
            return None
    except OSError as err:
        return f"cannot connect to {host}:{port} ({type(err).__name__}: {err})"


def cache_root() -> Path:
    """dambench's cache folder: ``$DAMBENCH_CACHE`` when set, else ``$XDG_CACHE_HOME/dambench``
    when that is an absolute path (the XDG base directory rule), else ``~/.cache/dambench``."""
    own = os.environ.get("DAMBENCH_CACHE", "").strip()
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "dambench"
    return Path.home() / ".cache" / "dambench"


def local_copy(path: PathLike, cache_dir: PathLike | None = None) -> Path:
    """A local file for ``path``: the path itself, or a cached download of a remote URL.

    Needed by readers whose libraries only take file names (cfgrib for GRIB, onnxruntime, numpy).
    A download retries transient failures; a failure raises one line naming the URL.
    """
    if not is_remote(path):
        local = Path(str(path).removeprefix("file://"))
        if not local.exists():
            raise DambenchInputError(f"No such file: {local}")
        return local
    text = str(path)
    options = {protocol_of(text): prepare_remote(text)}
    cache = str(cache_dir or cache_root() / "downloads")
    try:
        with fsspec.open(
            f"filecache::{text}", filecache={"cache_storage": cache}, **options
        ) as handle:
            return Path(handle.name)
    except DambenchError:
        raise
    except Exception as err:  # noqa: BLE001 - any fsspec backend error means unreachable
        raise unreachable(text, err) from err


def open_dataset_any(path: PathLike, *, engine: str | None = None, **kwargs) -> xr.Dataset:
    """Open a Zarr store, netCDF (3 or 4) or GRIB file from a local path or any fsspec URL.

    ``engine`` is inferred from the name (``.zarr`` -> zarr, ``.grib``/``.grb`` -> cfgrib,
    otherwise netCDF via h5netcdf or scipy) when not given. The result is lazy; its remote reads
    retry transient failures, and a read that fails for good raises
    :class:`~dambench.exceptions.DambenchRemoteError` naming the URL.
    """
    text = str(path).rstrip("/")
    engine = engine or _guess_engine(text)
    try:
        options = prepare_remote(text) if is_remote(text) else {}
        if engine == "zarr":
            return _open_zarr(text, options, kwargs)
        if engine == "cfgrib":
            backend = {"indexpath": "", **kwargs.pop("backend_kwargs", {})}
            return xr.open_dataset(
                local_copy(text), engine="cfgrib", backend_kwargs=backend, **kwargs
            )
        if is_remote(text):
            handle = fsspec.open(text, mode="rb", **options).open()
            return xr.open_dataset(handle, engine=engine, **kwargs)
        local = local_copy(text)
        if engine is None:
            engine = "h5netcdf" if _is_hdf5(local) else "scipy"
        return xr.open_dataset(local, engine=engine, **kwargs)
    except (DambenchError, KeyError):
        raise
    except (TypeError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DambenchInputError(
            f"{text}: cannot open as a {_KIND.get(engine, 'netCDF')} file ({type(err).__name__}: "
            f"{first_line})."
        ) from err
    except ImportError as err:
        raise _missing_reader(text, engine, err) from err
    except OSError as err:
        raise unreachable(text, err) from err


_KIND = {"zarr": "Zarr", "cfgrib": "GRIB"}


def _open_zarr(text: str, options: dict, kwargs: dict) -> xr.Dataset:
    if options:
        kwargs = {**kwargs, "storage_options": {**options, **kwargs.get("storage_options", {})}}
    with warnings.catch_warnings():
        # stores without consolidated metadata (zarr v3 default) are read directly
        warnings.filterwarnings("ignore", message="Failed to open Zarr store with cons")
        return xr.open_zarr(text, **kwargs)


def _missing_reader(text: str, engine: str | None, err: ImportError) -> MissingDependencyError:
    """The error for a reader or filesystem package that is not installed, naming its extra."""
    if engine == "cfgrib":
        extra = "pip install 'dambench[grib]'"
    elif is_remote(text):
        extra = REMOTE_EXTRA
    else:
        extra = "pip install h5netcdf scipy"
    return MissingDependencyError(
        f"Reading {text} needs an optional package that is not installed ({err}); install it "
        f"with: {extra}"
    )


_ZARR_NAME = re.compile(r"\.zarr(-v[23])?(/|$)")
"""A Zarr store's name: ``x.zarr``, ARCO-ERA5's ``x.zarr-v3``, or a path inside one."""


def _guess_engine(path: str) -> str | None:
    """``zarr`` for a store's name or a local folder, ``cfgrib`` for GRIB names, else ``None``
    (netCDF, told apart by its first bytes)."""
    name = path.lower()
    if _ZARR_NAME.search(name) or (not is_remote(path) and Path(path).is_dir()):
        return "zarr"
    if name.endswith((".grib", ".grb", ".grib2", ".grb2")):
        return "cfgrib"
    return None


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(8) == b"\x89HDF\r\n\x1a\n"


def check_monotonic(coord: xr.DataArray, name: str, source: str) -> None:
    """Raise unless ``coord`` is strictly monotonic."""
    diffs = np.diff(np.asarray(coord.values, dtype=np.float64))
    if not (np.all(diffs > 0) or np.all(diffs < 0)):
        raise DambenchInputError(f"{source}: {name} coordinate is not strictly monotonic.")


def time_lat_lon(da: xr.DataArray, source: str) -> xr.DataArray:
    """``da`` as ``(time, latitude, longitude)``: aliases renamed; latitude and longitude strictly
    monotonic; time decoded to datetime64 and strictly increasing. Orientation is kept."""
    renames = {}
    for canonical, aliases in (
        (schema.TIME, schema.TIME_ALIASES),
        (schema.LATITUDE, schema.LATITUDE_ALIASES),
        (schema.LONGITUDE, schema.LONGITUDE_ALIASES),
    ):
        found = next((name for name in aliases if name in da.dims), None)
        if found is None:
            raise DambenchInputError(
                f"{source}: expected a {canonical} dimension (one of {aliases}) on "
                f"{da.name!r}, found dims {tuple(map(str, da.dims))}."
            )
        if found != canonical:
            renames[found] = canonical
    da = da.rename(renames) if renames else da
    if da.ndim != 3:
        raise DambenchInputError(
            f"{source}: expected {da.name!r} dims (time, lat, lon), found "
            f"{tuple(map(str, da.dims))}."
        )
    for dim in (schema.LATITUDE, schema.LONGITUDE):
        check_monotonic(da[dim], dim, source)
    time = da[schema.TIME]
    if not np.issubdtype(time.dtype, np.datetime64):
        raise DambenchInputError(
            f"{source}: time could not be decoded to datetime64 (found {time.dtype}); check its "
            "units attribute, e.g. 'hours since 1800-01-01'."
        )
    if time.size > 1 and not np.all(np.diff(time.values) > np.timedelta64(0, "ns")):
        raise DambenchInputError(f"{source}: time coordinate is not strictly increasing.")
    return da.transpose(schema.TIME, schema.LATITUDE, schema.LONGITUDE)


def select_times(obj: xr.DataArray | xr.Dataset, times, source: str):
    """``obj`` at exactly ``times``; raises naming the missing ones and the range covered."""
    wanted = pd.DatetimeIndex(times if isinstance(times, pd.Index) else pd.to_datetime(list(times)))
    available = pd.DatetimeIndex(obj[schema.TIME].values)
    missing = wanted.difference(available)
    if len(missing):
        raise DambenchInputError(
            f"{source}: {len(missing)} requested times are missing, e.g. "
            f"{[t.isoformat() for t in missing[:5]]}; the source covers "
            f"{available.min().isoformat()} to {available.max().isoformat()}."
        )
    return obj.sel({schema.TIME: wanted.values})
