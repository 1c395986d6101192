"""The dataset: normalised DA tasks, one per window of a canonical DAMBench dataset.

Samples and patches
-------------------
The samples are the windows of an :class:`xbatcher.BatchGenerator` (see
:mod:`dambench.batching.sampling`): by default one whole-globe window per cycle; with
``patch={"latitude": 64, "longitude": 64}`` (and ``patch_overlap``) the patches of each cycle,
time-major. The generator only *defines* the windows: a sample is read without xbatcher's
per-batch ``Dataset.isel``/stacking (about 2x slower), one chunk read per variable and cycle (the
stores hold one chunk per cycle), through :mod:`dambench.batching._fastpath` when the variables
are plain lazy views of a zarr store (what ``open_dataset`` gives with ``chunks=None``, also
after selecting a split), else through ``Variable[t].values``. A patch costs a whole-cycle read,
so consecutive patches of one cycle share it (a one-cycle cache per process). Every sample
carries its window's ``latitude`` and ``longitude`` (degrees) and ``origin`` (indices).

Observations
------------
Validation/test mode (``train=False``) returns the stored observations. Training mode
(``train=True``; the default when every cycle of the dataset is in the ``train`` split) draws a
fresh realisation from ``target`` with the dataset's own observation settings
(``ds.attrs["observation"]``: pattern, ratio, noise) and a seed derived from ``(seed, epoch)``:
different every epoch, identical for the same ``(seed, epoch)`` on any loader or worker. Patches
are cut from a whole-globe draw, so overlapping patches agree.

Modalities
----------
Modalities reach the sample in model space (:mod:`dambench.modalities`: ``log1p`` then a z-score
for precipitation, a z-score for OLR, ``log1p`` of gauge counts), 0 where absent, with a per-cell
mask (1 where the store's value is finite: a present value equal to the train-split mean is 0 in
model space and still marked present) and a presence flag per sample: 1 where the window holds a
finite value, 0 otherwise, and 0 (mask 0 everywhere) for a selected modality the dataset does not
hold.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset
from xbatcher import BatchGenerator

from dambench import schema
from dambench.batching import _fastpath
from dambench.batching.sampling import check_int, derived_seed, patch_dims
from dambench.exceptions import DambenchInputError, DambenchSchemaError
from dambench.load import stats_from_attrs
from dambench.modalities import (
    check_modality_units,
    model_space_scale,
    resolve_modality_stats,
    stored_modalities,
    transform,
)
from dambench.observe import observe

MODALITY_ORDER = tuple(schema.MODALITIES)
"""Order of the modalities in a sample's ``modalities`` (the schema's table order)."""

_OBSERVATION_STREAM = 0x0B5
_OBSERVE_KEYS = {"pattern", "ratio", "seed", "noise", "stations"}


def modality_variables(ds: xr.Dataset) -> list[str]:
    """The schema modalities ``ds`` holds as ``(time, latitude, longitude)`` variables, in
    :data:`MODALITY_ORDER`; other variables with those dims are not modalities."""
    return stored_modalities(ds)


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


def stats_arrays(stats: xr.Dataset, channels: list[str]) -> tuple[np.ndarray, np.ndarray]:
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


def select_modalities(ds: xr.Dataset, modalities: str | Sequence[str] | None) -> list[str]:
    """The modality names of the samples: ``ds``'s own by default, else the given schema names
    (one name or several, distinct)."""
    if modalities is None:
        return stored_modalities(ds)
    names = [modalities] if isinstance(modalities, str) else [str(m) for m in modalities]
    unknown = [m for m in names if m not in schema.MODALITIES]
    if unknown or len(set(names)) != len(names):
        raise DambenchInputError(
            f"modalities {names} must be distinct names among {list(schema.MODALITIES)} "
            f"(the schema's modalities); unknown: {unknown}."
        )
    return names


def _check_dataset(ds: xr.Dataset, train: bool) -> None:
    missing_dims = [d for d in schema.CANONICAL_DIMS if d not in ds.dims]
    if missing_dims:
        raise DambenchInputError(
            f"ds lacks the dims {missing_dims}; open it with dambench.open_dataset."
        )
    if ds.sizes[schema.TIME] == 0:
        raise DambenchInputError("ds holds no cycle.")
    for name in ["target", "background"] + ([] if train else ["observation"]):
        if name not in ds.data_vars or ds[name].dims != schema.CANONICAL_DIMS:
            raise DambenchInputError(
                f"ds needs a {name!r} variable with dims {schema.CANONICAL_DIMS}."
            )


def _default_train(ds: xr.Dataset) -> bool:
    split = ds.coords.get("split")
    return split is not None and bool(np.all(split.values == "train"))


class DATorchDataset(Dataset):
    """Map-style torch dataset of normalised DA tasks from a canonical DAMBench dataset.

    Parameters
    ----------
    ds
        A canonical dataset (:func:`dambench.open_dataset`, any split, lazy or dask-backed) with
        ``target``, ``background`` and (for ``train=False``) ``observation``
        ``(time, channel, latitude, longitude)`` in physical units, and optional modalities
        ``(time, latitude, longitude)`` in the units of :data:`dambench.schema.MODALITIES`.
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
        Schema modality names for the ``modalities`` tensor, in this order; a name the dataset
        lacks gives a zero channel with presence 0, so models see the same M on every dataset.
        Default: :func:`modality_variables` of ``ds``; ``()`` for none.
    modality_stats
        Train-split statistics of the transformed modalities (a Dataset over ``modality``, see
        :func:`dambench.modalities.modality_stats`); default: the store's, or, for a store
        built before they were recorded, computed once from its train split with a
        :class:`~dambench.modalities.ModalityStatsWarning`.

    Attributes
    ----------
    channels, modality_names : list of str
    modality_stats : xarray.Dataset
        The statistics applied (standardised modalities the dataset holds).
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
        In model space (exactly :func:`dambench.modalities.to_model_space`, rounded to
        float32), 0 where absent (NaN in the store).
    ``modality_mask`` : (M, H, W) float32
        1.0 where the modality's cell holds data (finite in the store), else 0.0.
    ``modality_present`` : (M,) float32
        1.0 where the modality has any finite value in this sample.
    ``time`` : () int64
        The cycle's valid time in nanoseconds since 1970-01-01.
    ``origin`` : (2,) int64
        Latitude and longitude index of the sample's first grid point (0, 0 for whole globes).
    ``latitude`` : (H,) float32, ``longitude`` : (W,) float32
        The window's coordinates in degrees.
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
        modalities: str | Sequence[str] | None = None,
        modality_stats: xr.Dataset | None = None,
    ) -> None:
        if not isinstance(ds, xr.Dataset):
            raise DambenchInputError(f"DATorchDataset takes an xarray Dataset, got {type(ds)}.")
        self.train = _default_train(ds) if train is None else bool(train)
        _check_dataset(ds, self.train)
        self.seed = check_int("seed", seed, 0)
        self._obs_settings = observation_settings(ds) if self.train else {}
        self.channels = [str(c) for c in ds[schema.CHANNEL].values.tolist()]
        self._mean, self._std = stats_arrays(
            stats_from_attrs(ds) if stats is None else stats, self.channels
        )
        self._set_modalities(ds, modalities, modality_stats)
        window, overlap = patch_dims(ds.sizes, patch, patch_overlap)
        self.patch_size = (window[schema.LATITUDE], window[schema.LONGITUDE])
        self.patch_overlap = overlap
        self._input_dims = {schema.TIME: 1, schema.CHANNEL: ds.sizes[schema.CHANNEL], **window}
        self.ds = ds
        self._generator: BatchGenerator | None = None
        self.windows = _fastpath.window_starts(self.generator, ds)
        self.windows_per_time = len(self.windows) // ds.sizes[schema.TIME]
        names = ["target", "background", "observation", *self.modality_names]
        self._vars = {name: ds[name].variable for name in names if name in ds.data_vars}
        _fastpath.check_variables(self._vars)
        self._time_ns = ds[schema.TIME].values.astype("datetime64[ns]").astype(np.int64)
        self._coords = {dim: ds[dim].values for dim in schema.SPATIAL_DIMS}
        self.epoch = 0
        self._epoch_pinned = True  # the first iteration of a DADataLoader uses epoch 0
        self._cache: tuple[Any, dict[str, np.ndarray]] | None = None
        self._views: dict[str, _fastpath.ZarrView] | None = None

    def _set_modalities(
        self, ds: xr.Dataset, modalities: Any, modality_stats: xr.Dataset | None
    ) -> None:
        self.modality_names = select_modalities(ds, modalities)
        check_modality_units(ds, self.modality_names)
        self.modality_stats = resolve_modality_stats(ds, self.modality_names, modality_stats)
        self._modality_scale = {
            name: model_space_scale(name, self.modality_stats)
            for name in self.modality_names
            if name in ds.data_vars
        }

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

    @property
    def is_patched(self) -> bool:
        """Whether samples are windows smaller than the dataset's grid."""
        return self.patch_size != tuple(self.ds.sizes[d] for d in schema.SPATIAL_DIMS)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used by plain-int indices (training draws depend on it). Does not reach
        persistent DataLoader workers; :class:`DADataLoader` passes the epoch with each index."""
        self.epoch = check_int("epoch", epoch, 0)
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

    def _read_many(self, names: Sequence[str], t: int) -> dict[str, np.ndarray]:
        """Cycle ``t`` of several variables; the zarr-backed ones read concurrently."""
        if self._views is None:  # per process: rebuilt after unpickling in a spawned worker
            views = {name: _fastpath.zarr_view(var)[0] for name, var in self._vars.items()}
            self._views = {name: view for name, view in views.items() if view is not None}
        direct = [name for name in names if name in self._views]
        out = _fastpath.read_cycle(self._views, direct, t) if direct else {}
        for name in names:
            if name not in out:
                # integer indexing keeps xarray's lazy indexer basic (a slice would turn a time
                # subset into a 5x slower orthogonal read)
                out[name] = np.asarray(self._vars[name][t].values)
        return out

    def _normalize(self, values: np.ndarray) -> np.ndarray:
        out = np.subtract(values, self._mean, dtype=np.float64)
        out /= self._std
        return out.astype(np.float32)

    def _draw_observation(self, target: np.ndarray, t: int, epoch: int) -> np.ndarray:
        settings = dict(self._obs_settings)
        base = check_int("observation seed", settings.pop("seed", 0), 0)
        field = xr.DataArray(
            target[None],
            dims=schema.CANONICAL_DIMS,
            coords={
                schema.TIME: self._time_ns[t : t + 1].astype("datetime64[ns]"),
                schema.CHANNEL: np.asarray(self.channels, dtype=object),
                **self._coords,
            },
        )
        seed = derived_seed(_OBSERVATION_STREAM, base, self.seed, epoch)
        return observe(field, seed=seed, **settings).values[0]

    def _modality_fields(
        self, values: Mapping[str, np.ndarray], shape: tuple[int, int], t: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(M, H, W) float32 model-space modalities (0 where absent) and where they are finite;
        a stored value outside the transform's domain (``log1p`` of a rate below -1) is an
        error, never silently absent."""
        fields = np.zeros((len(self.modality_names), *shape), np.float32)
        finite = np.zeros(fields.shape, bool)
        for k, name in enumerate(self.modality_names):
            if name not in values:
                continue
            raw = np.asarray(values[name])
            present = np.isfinite(raw)
            dense = bool(present.all())  # else transform the present cells only (NaN is slow)
            picked = (raw if dense else raw[present]).astype(np.float64)
            model_space = transform(picked, name)
            mean, std = self._modality_scale[name]
            if (mean, std) != (0.0, 1.0):  # in place: fresh 8-byte arrays cost page faults
                model_space -= mean
                model_space /= std
            if not np.isfinite(model_space).all():
                when = self._time_ns[t].astype("datetime64[ns]")
                raise DambenchSchemaError(
                    f"Modality {name!r} at {when} has values outside the domain of its "
                    f"{schema.MODALITIES[name].transform} transform (min {np.nanmin(raw):.6g} "
                    f"{schema.MODALITIES[name].units}); the store is corrupt, rebuild it."
                )
            if dense:
                finite[k] = True
                fields[k] = model_space
            else:
                finite[k] = present
                fields[k][present] = model_space
        return fields, finite

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
        modalities, finite = self._modality_fields(
            {name: values[name] for name in stored}, target.shape[-2:], t
        )
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
            epoch = check_int("epoch", epoch, 0)
        else:
            index, epoch = key, self.epoch
        t, row, col = (int(v) for v in self.windows[self._check_index(index)])
        cycle = self._load_cycle(t, epoch)
        rows, cols = slice(row, row + self.patch_size[0]), slice(col, col + self.patch_size[1])
        copy = self.windows_per_time > 1  # patches: never hand out views of the cached cycle

        def window(values: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(values.copy() if copy else np.ascontiguousarray(values))

        sample = {
            name: window(cycle[name][:, rows, cols])
            for name in ("background", "observation", "mask", "target", "modalities")
        }
        finite = cycle["finite"][:, rows, cols]  # (M, h, w) bool
        sample["modality_mask"] = torch.from_numpy(finite.astype(np.float32))  # a fresh array
        sample["modality_present"] = torch.from_numpy(finite.any(axis=(1, 2)).astype(np.float32))
        sample["time"] = torch.tensor(int(self._time_ns[t]), dtype=torch.int64)
        sample["origin"] = torch.tensor([row, col], dtype=torch.int64)
        for dim, selection in zip(schema.SPATIAL_DIMS, (rows, cols), strict=True):
            sample[dim] = torch.from_numpy(self._coords[dim][selection].astype(np.float32))
        return sample
