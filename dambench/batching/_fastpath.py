"""The fast read path: every use of xarray's, zarr's and xbatcher's private internals.

Reading one cycle straight through the zarr array behind a lazy xarray variable skips xarray's
indexing layers (about 0.7 ms per read, a third of a cycle on the sample grid), and reading all of
a cycle's variables at once on zarr's event loop replaces one hand-over per variable by one per
cycle. The windows of an :class:`xbatcher.BatchGenerator` come from its ``BatchSchema`` instead
of iterating lazy window views. All three reach into private attributes:

- xarray: ``Variable._data``, ``Variable._in_memory``, ``indexing.LazilyIndexedArray`` (``.array``,
  ``.key.tuple``), ``MemoryCachedArray``/``CopyOnWriteArray`` (``.array``),
  ``backends.zarr.ZarrArrayWrapper.get_array()``;
- zarr: ``Array.async_array.getitem`` and ``zarr.core.sync.sync``;
- xbatcher: ``BatchGenerator._batch_selectors.selectors``.

When a dependency changes them, the loader still returns the same values through public APIs, but
more slowly, and says so with a :class:`SlowReadWarning` naming the versions; the pinning tests
(``tests/test_batching_fastpath.py``) fail with the same message. Nothing here falls back
silently.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import xarray as xr

from dambench import schema
from dambench.modalities import external_stacklevel

try:  # zarr's own event loop, to read a cycle's variables concurrently
    from zarr.core.sync import sync as _zarr_sync
except ImportError:  # pragma: no cover - reported by zarr_view's reason and the pinning test
    _zarr_sync = None

INTERNALS = "internals changed"
"""Prefix of a :func:`zarr_view` reason when a dependency's private internals are not there."""

_DEPENDENCIES = ("xarray", "zarr", "xbatcher")
_OTHER_VIEWS = ("Vectorized", "Transposed", "Elementwise", "Function")
"""Name fragments of xarray's lazy wrappers for views the fast path does not take (vectorised
indexing, transposition, decoding): a public read, not a sign of changed internals."""


class SlowReadWarning(RuntimeWarning):
    """A dependency changed the private internals of the fast read path; reads go through public
    (slower) APIs. The message names the versions; pin them or update dambench."""


def dependency_versions() -> str:
    """``"xarray X, zarr Y, xbatcher Z"``: the versions the fast path runs against."""
    found = []
    for name in _DEPENDENCIES:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:  # pragma: no cover - all three are dependencies
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def warn_slow(what: str, reason: str) -> None:
    """Emit the :class:`SlowReadWarning` for ``what`` (e.g. ``"variable 'target'"``)."""
    warnings.warn(
        f"dambench's fast read path is unavailable for {what}: {reason}. With "
        f"{dependency_versions()} the loader reads through public APIs (correct, about 2x "
        "slower); pin the versions dambench was tested with or update dambench.",
        SlowReadWarning,
        stacklevel=external_stacklevel(),
    )


@dataclass(frozen=True)
class ZarrView:
    """The zarr array behind a lazy variable and how the variable's indices map onto it.

    Attributes
    ----------
    array
        The ``zarr.Array``.
    positions
        (n_time,) int64: store index of each of the variable's times (a split is a subset).
    rest
        Slices of the other dims (unit step).
    """

    array: Any
    positions: np.ndarray
    rest: tuple

    def key(self, t: int) -> tuple:
        """Zarr selection of the variable's cycle ``t``."""
        return (int(self.positions[t]), *self.rest)


def _unwrap(data: Any, indexing: Any) -> Any:
    while isinstance(data, (indexing.MemoryCachedArray, indexing.CopyOnWriteArray)):
        data = data.array
    return data


def _backend_module(data: Any) -> str:
    """Module of the innermost ``.array`` of an xarray lazy-array chain."""
    for _ in range(8):
        inner = getattr(data, "array", None)
        if inner is None:
            break
        data = inner
    return type(data).__module__


def zarr_view(variable: xr.Variable) -> tuple[ZarrView | None, str]:
    """``(view, "")`` when ``variable`` is an untouched lazy view of a zarr array (as
    ``open_dataset(..., chunks=None)`` gives, also for a time subset); else ``(None, reason)``.

    A reason starting with :data:`INTERNALS` means the variable *is* store-backed but a
    dependency's private internals are missing; other reasons (dask-backed, in memory, decoded,
    transposed or reversed data, another backend) are legitimate uses of the public read.
    """
    try:
        from xarray.backends.zarr import ZarrArrayWrapper
        from xarray.core import indexing
    except ImportError as err:
        return None, f"{INTERNALS}: {err}"
    if variable.chunks is not None:
        return None, "dask-backed"
    if not hasattr(variable, "_data") or not hasattr(variable, "_in_memory"):
        return None, f"{INTERNALS}: xarray.Variable has no _data/_in_memory"
    if variable._in_memory:
        return None, "in memory"
    data = _unwrap(variable._data, indexing)
    lazy_type = getattr(indexing, "LazilyIndexedArray", None)
    if lazy_type is None or type(data) is not lazy_type:
        kind = type(data).__name__
        if "zarr" in _backend_module(data) and not any(w in kind for w in _OTHER_VIEWS):
            return None, f"{INTERNALS}: zarr-backed data is a {type(data).__qualname__}"
        return None, f"not a plain lazy view ({kind})"
    if not isinstance(data.array, ZarrArrayWrapper):
        if "zarr" in type(data.array).__module__:
            return None, f"{INTERNALS}: zarr wrapper is {type(data.array).__qualname__}"
        return None, f"another backend ({type(data.array).__name__})"
    try:
        key = data.key.tuple
        array = data.array.get_array()
        array.async_array.getitem  # noqa: B018 - the concurrent read needs it
    except AttributeError as err:
        return None, f"{INTERNALS}: {err}"
    if _zarr_sync is None:
        return None, f"{INTERNALS}: zarr.core.sync.sync is missing"
    return _plain_view(variable, key, array)


def _plain_view(variable: xr.Variable, key: tuple, array: Any) -> tuple[ZarrView | None, str]:
    if (
        len(key) != variable.ndim
        or len(array.shape) != variable.ndim
        or np.dtype(array.dtype) != variable.dtype
        or not isinstance(key[0], (slice, np.ndarray))
        or not all(isinstance(k, slice) and k.step in (None, 1) for k in key[1:])
    ):
        return None, "not a plain view (decoded, transposed or reversed)"
    positions = np.arange(array.shape[0])[key[0]]
    if positions.shape != (variable.shape[0],):
        return None, "not a plain view (time index)"
    return ZarrView(array, positions, tuple(key[1:])), ""


def check_variables(variables: Mapping[str, xr.Variable]) -> None:
    """Warn (:class:`SlowReadWarning`) once for the variables whose fast path is missing because
    internals changed; legitimate public reads (dask, memory) stay silent."""
    broken = {}
    for name, variable in variables.items():
        view, reason = zarr_view(variable)
        if view is None and reason.startswith(INTERNALS):
            broken[name] = reason
    if broken:
        names = ", ".join(repr(n) for n in broken)
        warn_slow(f"variables {names}", next(iter(broken.values())))


def read_cycle(views: Mapping[str, ZarrView], names: Sequence[str], t: int) -> dict:
    """Cycle ``t`` of the zarr-backed ``names``, read concurrently on zarr's event loop."""
    if len(names) == 1:
        view = views[names[0]]
        return {names[0]: np.asarray(view.array[view.key(t)])}

    async def gather() -> list:
        return await asyncio.gather(
            *(views[name].array.async_array.getitem(views[name].key(t)) for name in names)
        )

    return dict(zip(names, (np.asarray(v) for v in _zarr_sync(gather())), strict=True))


def window_starts(generator: Any, ds: xr.Dataset) -> np.ndarray:
    """(n, 3) int64 start indices (time, latitude, longitude) of an xbatcher generator's
    windows, from its ``BatchSchema`` (no data touched); through lazy window views, with a
    :class:`SlowReadWarning`, when that private attribute is gone."""
    dims = (schema.TIME, schema.LATITUDE, schema.LONGITUDE)
    selectors = getattr(getattr(generator, "_batch_selectors", None), "selectors", None)
    if isinstance(selectors, Mapping):
        starts = [[sel[0][dim].start for dim in dims] for sel in selectors.values()]
    else:
        warn_slow("the sample windows", f"{INTERNALS}: BatchGenerator._batch_selectors.selectors")
        indexes = {dim: ds.get_index(dim) for dim in dims}
        starts = [
            [int(indexes[dim].get_indexer(window[dim].values[:1])[0]) for dim in dims]
            for window in generator
        ]
    return np.asarray(starts, dtype=np.int64).reshape(-1, 3)
