"""PyTorch datasets and loaders over a DAMBench dataset, with samples defined by xbatcher.

:class:`DATorchDataset` turns a canonical dataset (the result of :func:`dambench.open_dataset`,
any split) into a map-style :class:`torch.utils.data.Dataset` of normalised DA tasks, and
:func:`make_dataloader` wraps it in a :class:`DADataLoader` with reproducible shuffling, per-epoch
observation draws and safe multi-process loading. A batch is a dict that
``baselines.interface.DABatch.from_loader`` accepts as it is.

Samples and patches
-------------------
The samples are the windows of an :class:`xbatcher.BatchGenerator` whose ``input_dims`` cover
every dim (``time: 1`` plus ``channel``, ``latitude``, ``longitude``), so nothing is stacked into
xbatcher's ``sample`` dim: by default one whole-globe window per cycle; with
``patch={"latitude": 64, "longitude": 64}`` (and ``patch_overlap``) the patches of each cycle,
time-major. The generator only *defines* the windows: a sample is read without xbatcher's per-batch
``Dataset.isel``/stacking (about 2x slower), one chunk read per variable and cycle (the stores
hold one chunk per cycle). Variables that are plain lazy views of a zarr store (what
``open_dataset`` gives with ``chunks=None``, also after selecting a split) are read straight
from zarr, all of a cycle's variables at once on zarr's event loop; anything else (dask-backed,
in memory) through ``Variable[t].values``. A patch costs a whole-cycle read, so consecutive
patches of one cycle share it (a one-cycle cache per process). Like xbatcher, windows that
would run past the grid are dropped (a warning says which rows/columns are never sampled);
``DATorchDataset.generator[i]`` is sample ``i`` as a lazy xarray view.

Observations
------------
Validation/test mode (``train=False``) returns the stored observations. Training mode
(``train=True``; the default when every cycle of the dataset is in the ``train`` split) draws a
fresh realisation from ``target`` with the dataset's own observation settings
(``ds.attrs["observation"]``: pattern, ratio, noise) and a seed derived from ``(seed, epoch)``:
different every epoch, identical for the same ``(seed, epoch)`` on any loader or worker. Patches
are cut from a whole-globe draw, so overlapping patches agree.

Epochs and workers
------------------
:func:`make_dataloader` puts the epoch *into the indices*: its sampler yields ``(index, epoch)``
pairs, so the epoch reaches worker processes even when they are persistent (a
``dataset.set_epoch`` in the main process alone would not). Call ``loader.set_epoch(epoch)``
before an epoch to pin it; a new iteration without one advances the epoch by one (the first is
epoch 0). See :class:`DADataLoader` for a caller's own sampler.

Workers collate a batch into one shared-memory buffer (one file-descriptor hand-over per batch
instead of one per field, which otherwise dominates the main process's time); the loader's
iterator unpacks it into the documented dict of contiguous tensors.

DataLoader workers are started with the platform's default method (``fork`` on Linux: fast to
start and the open dataset is shared, not pickled), and every worker first switches dask to the
synchronous scheduler: dask's threaded scheduler does not survive ``fork`` once the parent has
computed anything with dask, and the workers are already the parallelism (for the same reason
each worker keeps zarr to one decoding thread, unless ``threading.max_workers`` is configured).
Pass ``multiprocessing_context="forkserver"`` (or ``"spawn"``) to start clean interpreters
instead; the dataset is then pickled (it holds the lazy xarray dataset, not data).
"""

from __future__ import annotations

import functools
import json
import numbers
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchInputError, MissingDependencyError
from dambench.load import stats_from_attrs
from dambench.observe import observe

try:
    import torch
    from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
except ImportError as err:  # pragma: no cover - exercised by a test with torch hidden
    raise MissingDependencyError(
        "dambench.batching needs PyTorch; install it with: pip install 'dambench[torch]'"
    ) from err

from xbatcher import BatchGenerator

try:  # zarr's own event loop, to read a cycle's variables concurrently
    from zarr.core.sync import sync as _zarr_sync
except ImportError:  # pragma: no cover - zarr reorganised: read one variable at a time
    _zarr_sync = None

__all__ = [
    "MODALITY_ORDER",
    "DADataLoader",
    "DATorchDataset",
    "EpochSampler",
    "make_dataloader",
    "modality_variables",
]

MODALITY_ORDER = ("precip", "precip_gauges", "olr")
"""Order of the known modalities in ``modalities``; other 2-D variables follow alphabetically."""

PATCH_DIMS = schema.SPATIAL_DIMS
_SHUFFLE_STREAM = 0x5F1
_OBSERVATION_STREAM = 0x0B5
_OBSERVE_KEYS = {"pattern", "ratio", "seed", "noise", "stations"}
_LOADER_OWNED = {"dataset", "batch_sampler"}


# --- helpers ------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise DambenchInputError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def derived_seed(*entropy: int) -> int:
    """A 63-bit seed from non-negative integers (numpy ``SeedSequence``), stable across runs
    and machines."""
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def modality_variables(ds: xr.Dataset) -> list[str]:
    """The modality variables of ``ds``: data variables with dims (time, latitude, longitude).

    Known names come first in :data:`MODALITY_ORDER`, any others follow alphabetically.
    """
    dims = (schema.TIME, *schema.SPATIAL_DIMS)
    found = [str(name) for name, var in ds.data_vars.items() if var.dims == dims]
    known = [name for name in MODALITY_ORDER if name in found]
    return known + sorted(set(found) - set(known))


def observation_settings(ds: xr.Dataset) -> dict[str, Any]:
    """The ``observe`` keyword arguments recorded in ``ds.attrs["observation"]`` (a JSON string).

    Raises
    ------
    DambenchInputError
        If the attribute is missing, not JSON, or holds keys ``observe`` does not take.
    """
    raw = ds.attrs.get("observation")
    if raw is None or raw == "":
        raise DambenchInputError(
            "Training mode redraws observations with the dataset's settings, but ds.attrs has no "
            "'observation' entry; pass train=False to use the stored observations."
        )
    try:
        settings = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError) as err:
        raise DambenchInputError(f"ds.attrs['observation'] is not a JSON object: {raw!r}.") from err
    unknown = set(settings) - _OBSERVE_KEYS
    if unknown:
        raise DambenchInputError(
            f"ds.attrs['observation'] has keys {sorted(unknown)} that observe() does not take."
        )
    if settings.get("stations") is not None:
        lat, lon = settings["stations"]
        settings["stations"] = (np.asarray(lat, np.float64), np.asarray(lon, np.float64))
    return settings


def _patch_dims(
    sizes: Mapping[str, int], patch: Mapping[str, int] | None, overlap: Mapping[str, int] | None
) -> tuple[dict[str, int], dict[str, int]]:
    """(window size, overlap) per spatial dim, validated."""
    window = {dim: int(sizes[dim]) for dim in PATCH_DIMS}
    if patch is None:
        if overlap:
            raise DambenchInputError(
                "patch_overlap needs patch=; whole-globe samples do not overlap."
            )
        return window, {}
    if not isinstance(patch, Mapping):
        raise DambenchInputError(f"patch must be a dict like {{'latitude': 64}}, got {patch!r}.")
    overlap = dict(overlap or {})
    for name, given in (("patch", patch), ("patch_overlap", overlap)):
        unknown = set(given) - set(PATCH_DIMS)
        if unknown:
            raise DambenchInputError(
                f"{name} has unknown dims {sorted(map(str, unknown))}; it takes {list(PATCH_DIMS)}."
            )
    for dim, size in patch.items():
        size = _check_int(f"patch[{dim!r}]", size, 1)
        if size > sizes[dim]:
            raise DambenchInputError(
                f"patch[{dim!r}] = {size} is larger than the grid ({sizes[dim]} points)."
            )
        window[dim] = size
    for dim, value in overlap.items():
        value = _check_int(f"patch_overlap[{dim!r}]", value, 0)
        if value >= window[dim]:
            raise DambenchInputError(
                f"patch_overlap[{dim!r}] = {value} must be smaller than the patch size "
                f"{window[dim]}."
            )
        overlap[dim] = value
    for dim in PATCH_DIMS:
        stride = window[dim] - overlap.get(dim, 0)
        covered = (sizes[dim] - window[dim]) // stride * stride + window[dim]
        if covered < sizes[dim]:
            warnings.warn(
                f"Patches of {window[dim]} with stride {stride} cover {dim} indices "
                f"0..{covered - 1} of {sizes[dim]}: the last {sizes[dim] - covered} are never "
                f"sampled (incomplete windows are dropped); choose an overlap with "
                f"(n - size) divisible by (size - overlap) to cover the grid.",
                UserWarning,
                stacklevel=3,
            )
    return window, overlap


def _window_starts(generator: BatchGenerator, ds: xr.Dataset) -> np.ndarray:
    """(n, 3) int64 start positions (time, latitude, longitude) of the generator's windows."""
    dims = (schema.TIME, schema.LATITUDE, schema.LONGITUDE)
    selectors = getattr(getattr(generator, "_batch_selectors", None), "selectors", None)
    if isinstance(selectors, Mapping):  # xbatcher >= 0.4: the BatchSchema's slices, no data
        starts = [[sel[0][dim].start for dim in dims] for sel in selectors.values()]
    else:  # public but slower: look each lazy window's first coordinates up
        indexes = {dim: ds.get_index(dim) for dim in dims}
        starts = [
            [int(indexes[dim].get_indexer(window[dim].values[:1])[0]) for dim in dims]
            for window in generator
        ]
    return np.asarray(starts, dtype=np.int64).reshape(-1, 3)


def _zarr_view(variable: xr.Variable) -> tuple[Any, np.ndarray, tuple] | None:
    """``(zarr array, store position of each time, other keys)`` when ``variable`` is an
    untouched lazy view of a zarr array (as ``open_dataset(..., chunks=None)`` gives, including
    a time subset); ``None`` for anything else (dask, in-memory, decoded or transposed data).

    Reading such a variable straight through zarr skips xarray's indexing layers, about 0.7 ms
    per read (a third of a cycle read on the sample grid).
    """
    try:
        from xarray.backends.zarr import ZarrArrayWrapper
        from xarray.core import indexing
    except ImportError:  # pragma: no cover - xarray reorganised
        return None
    data = getattr(variable, "_data", None)
    while isinstance(data, (indexing.MemoryCachedArray, indexing.CopyOnWriteArray)):
        data = data.array
    if type(data) is not indexing.LazilyIndexedArray or not isinstance(
        data.array, ZarrArrayWrapper
    ):
        return None
    key = data.key.tuple
    array = data.array.get_array()
    if (
        len(key) != variable.ndim
        or len(array.shape) != variable.ndim
        or np.dtype(array.dtype) != variable.dtype
        or not isinstance(key[0], (slice, np.ndarray))
        or not all(isinstance(k, slice) and k.step in (None, 1) for k in key[1:])
    ):
        return None
    positions = np.arange(array.shape[0])[key[0]]
    if positions.shape != (variable.shape[0],):
        return None
    return array, positions, tuple(key[1:])


def _stats_arrays(stats: xr.Dataset, channels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``mean``, ``std`` shaped (C, 1, 1) for ``channels``."""
    if not isinstance(stats, xr.Dataset) or not {"mean", "std"} <= set(stats.data_vars):
        raise DambenchInputError(
            "stats must be an xarray Dataset with 'mean' and 'std' over 'channel' "
            "(as dambench.channel_stats or dambench.stats_from_attrs return)."
        )
    known = [str(c) for c in stats[schema.CHANNEL].values.tolist()]
    missing = [c for c in channels if c not in known]
    if missing:
        raise DambenchInputError(f"stats lack channels {missing}.")
    sel = stats.sel({schema.CHANNEL: channels})
    mean = np.asarray(sel["mean"].values, np.float64).reshape(-1, 1, 1)
    std = np.asarray(sel["std"].values, np.float64).reshape(-1, 1, 1)
    bad = [c for c, s in zip(channels, std.ravel(), strict=True) if not (np.isfinite(s) and s > 0)]
    if bad or not np.all(np.isfinite(mean)):
        raise DambenchInputError(f"stats have a non-finite mean or non-positive std for {bad}.")
    return mean, std


def _init_worker(worker_id: int, user_init: Callable[[int], None] | None = None) -> None:
    """DataLoader worker set-up: dask's synchronous scheduler (the threaded one's pool does not
    survive ``fork``), one zarr decoding thread unless zarr was configured otherwise (the
    workers are the parallelism; more threads only contend for the cores), then the caller's
    own ``worker_init_fn``."""
    import dask

    dask.config.set(scheduler="synchronous")
    try:
        import zarr

        if zarr.config.get("threading.max_workers", None) is None:
            zarr.config.set({"threading.max_workers": 1})
    except (ImportError, AttributeError):  # pragma: no cover - zarr without this setting
        pass
    if user_init is not None:
        user_init(worker_id)


# --- dataset ------------------------------------------------------------------------------------


class DATorchDataset(Dataset):
    """Map-style torch dataset of normalised DA tasks from a canonical DAMBench dataset.

    Parameters
    ----------
    ds
        A canonical dataset (:func:`dambench.open_dataset`, any split, lazy or dask-backed) with
        ``target``, ``background`` and (for ``train=False``) ``observation``
        ``(time, channel, latitude, longitude)`` in physical units, and optional modalities
        ``(time, latitude, longitude)``.
    stats
        Per-channel ``mean``/``std`` (a Dataset over ``channel``, physical units); default
        :func:`dambench.stats_from_attrs` (the train-split statistics recorded in the store).
    train
        Draw fresh observations from ``target`` (see the module docstring); default: True when
        every cycle of ``ds`` has ``split == "train"`` (False without a ``split`` coordinate).
    patch
        Window size per spatial dim, e.g. ``{"latitude": 64, "longitude": 64}`` (grid points);
        dims left out keep the whole grid. Default: whole-globe samples.
    patch_overlap
        Overlap of neighbouring patches per spatial dim (grid points, smaller than the patch).
    seed
        Non-negative integer; with the epoch it seeds the training observation draws.
    modalities
        Modality names for the ``modalities`` tensor, in this order; a name the dataset lacks
        (one of :data:`MODALITY_ORDER`) gives a zero channel with presence 0, so models see the
        same M on every dataset. Default: :func:`modality_variables` of ``ds``.

    Attributes
    ----------
    channels, modality_names : list of str
    train : bool
    epoch : int
        Used when an index is a plain int; see :meth:`set_epoch`.
    windows : numpy.ndarray
        (len(self), 3) int64 start indices (time, latitude, longitude) of every sample.
    patch_size : tuple of int
        (H, W) of a sample.

    Notes
    -----
    ``dataset[i]`` (or ``dataset[(i, epoch)]``) returns a dict of tensors:

    ``background``, ``target`` : (C, H, W) float32
        Normalised, ``(x - mean) / std`` computed in float64 and rounded to float32 (exactly
        :func:`dambench.normalize`).
    ``observation`` : (C, H, W) float32
        Normalised observations, 0 where unobserved.
    ``mask`` : (C, H, W) float32
        1.0 where observed, else 0.0.
    ``modalities`` : (M, H, W) float32
        In the modality's physical units (``precip`` mm/day, ``precip_gauges`` counts, ``olr``
        W m-2), 0 where absent (NaN in the store).
    ``modality_present`` : (M,) float32
        1.0 where the modality has any finite value in this sample.
    ``time`` : () int64
        The cycle's valid time in nanoseconds since 1970-01-01.
    ``origin`` : (2,) int64
        Latitude and longitude index of the sample's first grid point (0, 0 for whole globes).
    """

    def __init__(
        self,
        ds: xr.Dataset,
        *,
        stats: xr.Dataset | None = None,
        train: bool | None = None,
        patch: Mapping[str, int] | None = None,
        patch_overlap: Mapping[str, int] | None = None,
        seed: int = 0,
        modalities: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(ds, xr.Dataset):
            raise DambenchInputError(f"DATorchDataset takes an xarray Dataset, got {type(ds)}.")
        missing_dims = [d for d in schema.CANONICAL_DIMS if d not in ds.dims]
        if missing_dims:
            raise DambenchInputError(
                f"ds lacks the dims {missing_dims}; open it with dambench.open_dataset."
            )
        if ds.sizes[schema.TIME] == 0:
            raise DambenchInputError("ds holds no cycle.")
        self.seed = _check_int("seed", seed, 0)
        if train is None:
            split = ds.coords.get("split")
            train = split is not None and bool(np.all(split.values == "train"))
        self.train = bool(train)
        needed = ["target", "background"] + ([] if self.train else ["observation"])
        for name in needed:
            if name not in ds.data_vars or ds[name].dims != schema.CANONICAL_DIMS:
                raise DambenchInputError(
                    f"ds needs a {name!r} variable with dims {schema.CANONICAL_DIMS}."
                )
        self._obs_settings = observation_settings(ds) if self.train else {}

        self.channels = [str(c) for c in ds[schema.CHANNEL].values.tolist()]
        present = modality_variables(ds)
        if modalities is None:
            self.modality_names = present
        else:
            self.modality_names = [str(m) for m in modalities]
            unknown = [m for m in self.modality_names if m not in present + list(MODALITY_ORDER)]
            if unknown or len(set(self.modality_names)) != len(self.modality_names):
                raise DambenchInputError(
                    f"modalities {self.modality_names} must be distinct names among "
                    f"{sorted(set(present) | set(MODALITY_ORDER))}."
                )
        self._mean, self._std = _stats_arrays(
            stats_from_attrs(ds) if stats is None else stats, self.channels
        )

        window, overlap = _patch_dims(ds.sizes, patch, patch_overlap)
        self.patch_size = (window[schema.LATITUDE], window[schema.LONGITUDE])
        self.patch_overlap = overlap
        self._input_dims = {
            schema.TIME: 1,
            schema.CHANNEL: ds.sizes[schema.CHANNEL],
            schema.LATITUDE: window[schema.LATITUDE],
            schema.LONGITUDE: window[schema.LONGITUDE],
        }
        self.ds = ds
        self._generator: BatchGenerator | None = None
        self.windows = _window_starts(self.generator, ds)
        self.windows_per_time = len(self.windows) // ds.sizes[schema.TIME]

        names = ["target", "background", "observation", *self.modality_names]
        self._vars = {name: ds[name].variable for name in names if name in ds.data_vars}
        self._time_ns = ds[schema.TIME].values.astype("datetime64[ns]").astype(np.int64)
        self._obs_coords = {
            schema.CHANNEL: np.asarray(self.channels, dtype=object),
            schema.LATITUDE: ds[schema.LATITUDE].values,
            schema.LONGITUDE: ds[schema.LONGITUDE].values,
        }
        self.epoch = 0
        self._epoch_pinned = True  # the first iteration of a DADataLoader uses epoch 0
        self._cache: tuple[Any, dict[str, np.ndarray]] | None = None
        self._views: dict[str, tuple[Any, np.ndarray, tuple]] | None = None

    # -- bookkeeping --

    @property
    def generator(self) -> BatchGenerator:
        """The :class:`xbatcher.BatchGenerator` defining the samples (``generator[i]`` is sample
        ``i`` as a lazy Dataset view)."""
        if self._generator is None:
            self._generator = BatchGenerator(
                self.ds,
                input_dims=self._input_dims,
                input_overlap=self.patch_overlap,
                preload_batch=False,
            )
        return self._generator

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_generator"] = None  # rebuilt on demand; holds every window's selector
        state["_cache"] = None
        state["_views"] = None
        return state

    def __len__(self) -> int:
        return len(self.windows)

    def __repr__(self) -> str:
        mode = "train (fresh observations)" if self.train else "stored observations"
        return (
            f"<DATorchDataset: {len(self)} samples ({self.ds.sizes[schema.TIME]} cycles x "
            f"{self.windows_per_time} windows) of {len(self.channels)} channels x "
            f"{self.patch_size[0]} x {self.patch_size[1]}, modalities {self.modality_names}, "
            f"{mode}, epoch {self.epoch}>"
        )

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the state tensors of one sample."""
        return (len(self.channels), *self.patch_size)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used by plain-int indices (training draws depend on it). Does not reach
        persistent DataLoader workers; :class:`DADataLoader` passes the epoch with each index."""
        self.epoch = _check_int("epoch", epoch, 0)
        self._epoch_pinned = True

    def selector(self, index: int) -> dict[str, Any]:
        """``ds.isel`` arguments of sample ``index``: ``{"time": int, "latitude": slice,
        "longitude": slice}``."""
        t, row, col = (int(v) for v in self.windows[self._check_index(index)])
        h, w = self.patch_size
        return {
            schema.TIME: t,
            schema.LATITUDE: slice(row, row + h),
            schema.LONGITUDE: slice(col, col + w),
        }

    def _check_index(self, index: Any) -> int:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise DambenchInputError(f"Index must be an int or (int, epoch), got {index!r}.")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        return int(index) % n

    # -- reading --

    def _zarr_views(self) -> dict[str, tuple[Any, np.ndarray, tuple]]:
        if self._views is None:  # per process: rebuilt after unpickling in a spawned worker
            views = {name: _zarr_view(var) for name, var in self._vars.items()}
            self._views = {name: view for name, view in views.items() if view is not None}
        return self._views

    def _read_many(self, names: Sequence[str], t: int) -> dict[str, np.ndarray]:
        """Cycle ``t`` of several variables; the zarr-backed ones are read concurrently on
        zarr's event loop (one hand-over instead of one per variable)."""
        views = self._zarr_views()
        direct = [name for name in names if name in views]
        out: dict[str, np.ndarray] = {}
        if len(direct) > 1 and _zarr_sync is not None:
            import asyncio

            async def gather() -> list:
                return await asyncio.gather(
                    *(
                        views[name][0].async_array.getitem(
                            (int(views[name][1][t]), *views[name][2])
                        )
                        for name in direct
                    )
                )

            out.update(zip(direct, (np.asarray(v) for v in _zarr_sync(gather())), strict=True))
        for name in names:
            if name not in out:
                out[name] = self._read(name, t)
        return out

    def _read(self, name: str, t: int) -> np.ndarray:
        """Cycle ``t`` of variable ``name``: one chunk read, straight from zarr when possible."""
        view = self._zarr_views().get(name)
        if view is not None:
            array, positions, rest = view
            return np.asarray(array[(int(positions[t]), *rest)])
        # integer indexing keeps xarray's lazy indexer basic (a slice would turn a time subset
        # into a 5x slower orthogonal read)
        return np.asarray(self._vars[name][t].values)

    def _normalize(self, values: np.ndarray) -> np.ndarray:
        out = np.subtract(values, self._mean, dtype=np.float64)
        out /= self._std
        return out.astype(np.float32)

    def _draw_observation(self, target: np.ndarray, t: int, epoch: int) -> np.ndarray:
        settings = dict(self._obs_settings)
        base = _check_int("observation seed", settings.pop("seed", 0), 0)
        field = xr.DataArray(
            target[None],
            dims=schema.CANONICAL_DIMS,
            coords={
                schema.TIME: self._time_ns[t : t + 1].astype("datetime64[ns]"),
                **self._obs_coords,
            },
        )
        seed = derived_seed(_OBSERVATION_STREAM, base, self.seed, epoch)
        return observe(field, seed=seed, **settings).values[0]

    def _load_cycle(self, t: int, epoch: int) -> dict[str, np.ndarray]:
        key = (t, epoch if self.train else None)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        stored = [name for name in self.modality_names if name in self._vars]
        fields = ["target", "background", *([] if self.train else ["observation"]), *stored]
        values = self._read_many(fields, t)
        target = values["target"]
        if self.train:
            observation = self._draw_observation(target, t, epoch)
        else:
            observation = values["observation"]
        mask = np.isfinite(observation)
        observation = self._normalize(observation)
        observation[~mask] = 0.0
        h, w = target.shape[-2:]
        modalities = np.zeros((len(self.modality_names), h, w), np.float32)
        finite = np.zeros(modalities.shape, bool)
        for k, name in enumerate(self.modality_names):
            if name in stored:
                finite[k] = np.isfinite(values[name])
                np.copyto(modalities[k], values[name], where=finite[k], casting="unsafe")
        cycle = {
            "background": self._normalize(values["background"]),
            "observation": observation,
            "mask": mask.astype(np.float32),
            "target": self._normalize(target),
            "modalities": modalities,
            "finite": finite,
        }
        if self.windows_per_time > 1:  # patches: neighbours in the same cycle reuse the read
            self._cache = (key, cycle)
        return cycle

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        if isinstance(key, tuple):
            if len(key) != 2:
                raise DambenchInputError(f"Index must be an int or (int, epoch), got {key!r}.")
            index, epoch = key
            epoch = _check_int("epoch", epoch, 0)
        else:
            index, epoch = key, self.epoch
        t, row, col = (int(v) for v in self.windows[self._check_index(index)])
        cycle = self._load_cycle(t, epoch)
        h, w = self.patch_size
        rows, cols = slice(row, row + h), slice(col, col + w)

        copy = self.windows_per_time > 1  # patches: never hand out views of the cached cycle

        def window(name: str) -> torch.Tensor:
            values = cycle[name][:, rows, cols]
            return torch.from_numpy(values.copy() if copy else np.ascontiguousarray(values))

        present = cycle["finite"][:, rows, cols].any(axis=(1, 2)).astype(np.float32)
        return {
            "background": window("background"),
            "observation": window("observation"),
            "mask": window("mask"),
            "target": window("target"),
            "modalities": window("modalities"),
            "modality_present": torch.from_numpy(present),
            "time": torch.tensor(int(self._time_ns[t]), dtype=torch.int64),
            "origin": torch.tensor([row, col], dtype=torch.int64),
        }


# --- sampler and loader -------------------------------------------------------------------------


class EpochSampler(Sampler):
    """Sample indices ``0 .. n-1``, shuffled reproducibly from ``(seed, epoch)``.

    Parameters
    ----------
    n
        Number of samples.
    shuffle
        Permute the indices with a ``torch.Generator`` seeded from ``(seed, epoch)``.
    seed
        Non-negative integer.
    """

    def __init__(self, n: int, *, shuffle: bool = False, seed: int = 0) -> None:
        self.n = _check_int("n", n, 0)
        self.shuffle = bool(shuffle)
        self.seed = _check_int("seed", seed, 0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next iteration."""
        self.epoch = _check_int("epoch", epoch, 0)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        generator = torch.Generator()
        generator.manual_seed(derived_seed(_SHUFFLE_STREAM, self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=generator).tolist())


class _EpochTaggingSampler(Sampler):
    """Yields ``(index, epoch)`` for each index of ``sampler``, the epoch being the dataset's
    when the iteration starts: the epoch travels with the indices, so it reaches persistent
    workers too."""

    def __init__(self, sampler: Sampler, dataset: DATorchDataset) -> None:
        self.sampler = sampler
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the dataset and, when it has ``set_epoch``, of the wrapped sampler."""
        self.dataset.set_epoch(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.dataset.epoch
        for index in self.sampler:
            yield (int(index), epoch)


_PACKED_FIELDS = ("background", "observation", "mask", "target", "modalities")
_SMALL_FIELDS = ("modality_present", "time", "origin")
_PACK_KEY = "_dambench_packed"


def _collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Collate :class:`DATorchDataset` samples into one flat float32 buffer (plus small numpy
    arrays), so a worker hands a batch over with one shared-memory block instead of one per
    field; :func:`_unpack` turns it back into the documented dict in the main process."""
    first = samples[0]
    layout = [(name, (len(samples), *first[name].shape)) for name in _PACKED_FIELDS]
    total = sum(int(np.prod(shape)) for _, shape in layout)
    elem = first["target"]
    if torch.utils.data.get_worker_info() is not None:
        # allocate straight in shared memory, as torch's default_collate does
        flat = elem.new(elem._typed_storage()._new_shared(total, device=elem.device))
        flat = flat.resize_(total)
    else:
        flat = torch.empty(total, dtype=elem.dtype)
    buffer = flat.numpy()
    offset = 0
    for name, shape in layout:
        size = int(np.prod(shape))
        block = buffer[offset : offset + size].reshape(shape)
        for i, sample in enumerate(samples):
            block[i] = sample[name].numpy()
        offset += size
    packed: dict[str, Any] = {_PACK_KEY: flat, "layout": layout}
    for name in _SMALL_FIELDS:
        packed[name] = np.stack([sample[name].numpy() for sample in samples])
    extra = [name for name in first if name not in (*_PACKED_FIELDS, *_SMALL_FIELDS)]
    if extra:  # keys a subclass adds: torch's default collation
        packed["extra"] = default_collate([{name: s[name] for name in extra} for s in samples])
    return packed


def _unpack(batch: Any) -> Any:
    """The documented batch dict from :func:`_collate`'s output (views of one buffer)."""
    if not isinstance(batch, dict) or _PACK_KEY not in batch:
        return batch
    flat = batch[_PACK_KEY]
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for name, shape in batch["layout"]:
        size = int(np.prod(shape))
        out[name] = flat[offset : offset + size].view(tuple(shape))  # pin_memory: tuple -> list
        offset += size
    for name in _SMALL_FIELDS:
        out[name] = torch.from_numpy(batch[name])
    out.update(batch.get("extra", {}))
    return out


class _UnpackingIterator:
    """Wraps a DataLoader iterator, unpacking each batch in the main process."""

    def __init__(self, iterator: Iterator) -> None:
        self._iterator = iterator

    def __iter__(self) -> _UnpackingIterator:
        return self

    def __next__(self) -> Any:
        return _unpack(next(self._iterator))

    def __len__(self) -> int:
        return len(self._iterator)


class DADataLoader(DataLoader):
    """A :class:`torch.utils.data.DataLoader` over a :class:`DATorchDataset` with epochs.

    Built by :func:`make_dataloader`. ``set_epoch(epoch)`` (or ``loader.sampler.set_epoch``)
    sets the epoch of the next iteration: the dataset's (training observations) and the index
    sampler's (shuffling order). An iteration that follows no ``set_epoch`` call (on the loader,
    its sampler or its dataset) uses the previous epoch + 1 (the first one uses 0). With a
    caller's own ``sampler`` (see :func:`make_dataloader`) such an iteration takes the
    sampler's ``epoch`` attribute instead, when it has one (as ``DistributedSampler`` and
    samplers with ``set_epoch`` usually do), or else keeps the previous epoch; it never changes
    the caller's sampler. ``loader.epoch`` is the epoch of the current or last iteration.
    """

    def __init__(
        self, dataset: DATorchDataset, *, sampler: Sampler, own_sampler: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(dataset, sampler=_EpochTaggingSampler(sampler, dataset), **kwargs)
        self._own_sampler = own_sampler

    @property
    def epoch(self) -> int:
        return self.dataset.epoch

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration (sampler order and observation draws)."""
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        dataset = self.dataset
        if not dataset._epoch_pinned:
            if self._own_sampler:
                self.set_epoch(dataset.epoch + 1)
            else:
                epoch = getattr(self.sampler.sampler, "epoch", None)
                if isinstance(epoch, numbers.Integral) and not isinstance(epoch, bool):
                    dataset.set_epoch(int(epoch))
        dataset._epoch_pinned = False
        return _UnpackingIterator(super().__iter__())


def make_dataloader(
    ds: xr.Dataset | DATorchDataset,
    *,
    batch_size: int = 1,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    train: bool | None = None,
    patch: Mapping[str, int] | None = None,
    patch_overlap: Mapping[str, int] | None = None,
    stats: xr.Dataset | None = None,
    drop_last: bool = False,
    modalities: Sequence[str] | None = None,
    sampler: Sampler | None = None,
    **loader_kwargs: Any,
) -> DADataLoader:
    """A DataLoader of DA batches over a DAMBench dataset.

    Parameters
    ----------
    ds
        A canonical dataset (see :class:`DATorchDataset`), or a :class:`DATorchDataset` (then
        ``train``, ``patch``, ``patch_overlap``, ``stats`` and ``modalities`` must be left out).
    batch_size
        Samples per batch; the last batch is kept even when smaller, unless ``drop_last``.
    shuffle
        Shuffle every epoch, reproducibly from ``(seed, epoch)``.
    num_workers
        Worker processes (0: load in the main process). Workers use the platform's default
        start method (``fork`` on Linux) with dask set to its synchronous scheduler; pass
        ``multiprocessing_context="forkserver"`` for clean interpreters. See the module
        docstring.
    seed
        Non-negative integer seeding the shuffling and the training observation draws.
    train, patch, patch_overlap, stats, modalities
        As :class:`DATorchDataset`.
    drop_last
        Drop an incomplete last batch.
    sampler
        Your own sampler of sample indices ``0 .. len(dataset) - 1`` (e.g. one shard per rank
        for distributed training; mind that patches make more samples than cycles) instead of
        the built-in :class:`EpochSampler`; ``shuffle`` must then be False. Its ``epoch``
        attribute, if any, is used for the observation draws unless ``set_epoch`` was called.
    **loader_kwargs
        Passed to :class:`torch.utils.data.DataLoader` (``persistent_workers``,
        ``prefetch_factor``, ``pin_memory``, ``timeout``, ``collate_fn`` (default: one shared
        buffer per batch, unpacked in the main process), ``worker_init_fn`` (run after the dask
        set-up), ``multiprocessing_context``, ``generator``, ...); not ``batch_sampler``.

    Returns
    -------
    DADataLoader
        Batches are dicts of tensors with a leading batch dim B: ``background``,
        ``observation``, ``mask``, ``target`` (B, C, H, W) float32, ``modalities`` (B, M, H, W),
        ``modality_present`` (B, M), ``time`` (B,) int64 ns, ``origin`` (B, 2) int64;
        ``DABatch.from_loader(batch)`` takes one. Call ``loader.set_epoch(epoch)`` before each
        epoch (or let each new iteration advance it).
    """
    owned = _LOADER_OWNED & set(loader_kwargs)
    if owned:
        raise DambenchInputError(
            f"make_dataloader builds its own {sorted(owned)}; for a custom one, wrap a "
            "DATorchDataset in torch.utils.data.DataLoader yourself."
        )
    if sampler is not None and shuffle:
        raise DambenchInputError("Pass either shuffle=True or your own sampler, not both.")
    batch_size = _check_int("batch_size", batch_size, 1)
    num_workers = _check_int("num_workers", num_workers, 0)
    seed = _check_int("seed", seed, 0)
    if isinstance(ds, DATorchDataset):
        given = {
            "train": train,
            "patch": patch,
            "patch_overlap": patch_overlap,
            "stats": stats,
            "modalities": modalities,
        }
        clash = [name for name, value in given.items() if value is not None]
        if clash:
            raise DambenchInputError(
                f"{clash} configure a new DATorchDataset; pass them to it, not make_dataloader."
            )
        dataset = ds
    else:
        dataset = DATorchDataset(
            ds,
            stats=stats,
            train=train,
            patch=patch,
            patch_overlap=patch_overlap,
            seed=seed,
            modalities=modalities,
        )
    if num_workers > 0:
        user_init = loader_kwargs.pop("worker_init_fn", None)
        loader_kwargs["worker_init_fn"] = functools.partial(_init_worker, user_init=user_init)
    loader_kwargs.setdefault("collate_fn", _collate)
    if "generator" not in loader_kwargs:  # DataLoader draws its workers' base seed from it,
        generator = torch.Generator()  # so the global torch RNG is left alone
        generator.manual_seed(derived_seed(_SHUFFLE_STREAM + 1, seed))
        loader_kwargs["generator"] = generator
    own = sampler is None
    if own:
        sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed)
    return DADataLoader(
        dataset,
        sampler=sampler,
        own_sampler=own,
        batch_size=batch_size,
        num_workers=num_workers,
        drop_last=bool(drop_last),
        **loader_kwargs,
    )
