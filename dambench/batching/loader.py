"""The loader: a DataLoader over a :class:`~dambench.batching.DATorchDataset` with epochs.

Epochs and workers
------------------
:func:`make_dataloader` puts the epoch *into the indices*: its sampler yields ``(index, epoch)``
pairs, so the epoch reaches worker processes even when they are persistent (a
``dataset.set_epoch`` in the main process alone would not). Call ``loader.set_epoch(epoch)``
before an epoch to pin it; a new iteration without one advances the epoch by one (the first is
epoch 0). See :class:`DADataLoader` for a caller's own sampler.

DataLoader workers are started with the platform's default method (``fork`` on Linux: fast to
start and the open dataset is shared, not pickled), and every worker first switches dask to the
synchronous scheduler: dask's threaded scheduler does not survive ``fork`` once the parent has
computed anything with dask, and the workers are already the parallelism (for the same reason
each worker keeps zarr to one decoding thread, unless ``threading.max_workers`` is configured).
Pass ``multiprocessing_context="forkserver"`` (or ``"spawn"``) to start clean interpreters
instead; the dataset is then pickled (it holds the lazy xarray dataset, not data).

Models and patches
------------------
A model that assumes the whole globe (sphere padding, spectral extensions, a grid-sized
background-error covariance) must never be given patches: pass its ``model_info`` (a
``baselines`` ``ModelInfo``) or ``supports_patches=False`` and patches are refused.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import xarray as xr
from torch.utils.data import DataLoader, Sampler

from dambench import schema
from dambench.batching.collate import UnpackingIterator, collate
from dambench.batching.dataset import DATorchDataset
from dambench.batching.sampling import (
    SHUFFLE_STREAM,
    EpochSampler,
    EpochTaggingSampler,
    check_int,
    derived_seed,
)
from dambench.exceptions import DambenchInputError

_LOADER_OWNED = {"dataset", "batch_sampler"}
_DATASET_OPTIONS = ("train", "patch", "patch_overlap", "stats", "modalities", "modality_stats")


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
        super().__init__(dataset, sampler=EpochTaggingSampler(sampler, dataset), **kwargs)
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
        return UnpackingIterator(super().__iter__())


def _capabilities(supports_patches: bool | None, model_info: Any) -> tuple[bool | None, Any]:
    """(supports_patches, uses_modalities) from the arguments, checked for agreement."""
    if model_info is None:
        return supports_patches, None
    declared = getattr(model_info, "supports_patches", None)
    if not isinstance(declared, bool):
        raise DambenchInputError(
            f"model_info must declare supports_patches as a bool (a baselines ModelInfo); got "
            f"{type(model_info).__name__} with supports_patches={declared!r}."
        )
    if supports_patches is not None and bool(supports_patches) != declared:
        raise DambenchInputError(
            f"supports_patches={supports_patches} contradicts model_info.supports_patches="
            f"{declared}; pass one of them."
        )
    return declared, getattr(model_info, "uses_modalities", None)


def _refuse_patches(ds: xr.Dataset | DATorchDataset, patch: Mapping[str, int] | None) -> None:
    """Raise when ``ds`` (or ``patch`` on it) makes windows smaller than the grid."""
    source = ds.ds if isinstance(ds, DATorchDataset) else ds
    if not isinstance(source, xr.Dataset):
        return  # DATorchDataset refuses it with its own message
    grid = tuple(int(source.sizes.get(dim, 0)) for dim in schema.SPATIAL_DIMS)
    if isinstance(ds, DATorchDataset):
        window = ds.patch_size
    elif isinstance(patch, Mapping):
        window = tuple(patch.get(dim, n) for dim, n in zip(schema.SPATIAL_DIMS, grid, strict=True))
    else:
        window = grid
    if window == grid:
        return
    raise DambenchInputError(
        f"Patches of {window[0]} x {window[1]} were requested, but the model does not support "
        f"patches (ModelInfo.supports_patches is False): it assumes the whole globe "
        f"({grid[0]} x {grid[1]}), e.g. for sphere padding or its grid. Use whole-globe "
        "samples (patch=None) or a model that supports patches."
    )


def _dataset(ds: xr.Dataset | DATorchDataset, options: dict[str, Any], seed: int) -> DATorchDataset:
    if isinstance(ds, DATorchDataset):
        clash = [name for name, value in options.items() if value is not None]
        if clash:
            raise DambenchInputError(
                f"{clash} configure a new DATorchDataset; pass them to it, not make_dataloader."
            )
        return ds
    return DATorchDataset(ds, seed=seed, **options)


def _check_loader_arguments(
    loader_kwargs: Mapping[str, Any], sampler: Sampler | None, shuffle: bool
) -> None:
    owned = _LOADER_OWNED & set(loader_kwargs)
    if owned:
        raise DambenchInputError(
            f"make_dataloader builds its own {sorted(owned)}; for a custom one, wrap a "
            "DATorchDataset in torch.utils.data.DataLoader yourself."
        )
    if sampler is not None and shuffle:
        raise DambenchInputError("Pass either shuffle=True or your own sampler, not both.")


def _loader_kwargs(num_workers: int, seed: int, loader_kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(loader_kwargs)
    if num_workers > 0:
        user_init = kwargs.pop("worker_init_fn", None)
        kwargs["worker_init_fn"] = functools.partial(_init_worker, user_init=user_init)
    kwargs.setdefault("collate_fn", collate)
    if "generator" not in kwargs:  # DataLoader draws its workers' base seed from it,
        generator = torch.Generator()  # so the global torch RNG is left alone
        generator.manual_seed(derived_seed(SHUFFLE_STREAM + 1, seed))
        kwargs["generator"] = generator
    return kwargs


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
    modalities: str | Sequence[str] | None = None,
    modality_stats: xr.Dataset | None = None,
    sampler: Sampler | None = None,
    supports_patches: bool | None = None,
    model_info: Any = None,
    **loader_kwargs: Any,
) -> DADataLoader:
    """A DataLoader of DA batches over a DAMBench dataset.

    Parameters
    ----------
    ds
        A canonical dataset (see :class:`DATorchDataset`), or a :class:`DATorchDataset` (then
        ``train``, ``patch``, ``patch_overlap``, ``stats``, ``modalities`` and
        ``modality_stats`` must be left out).
    batch_size
        Samples per batch; the last batch is kept even when smaller, unless ``drop_last``.
    shuffle
        Shuffle every epoch, reproducibly from ``(seed, epoch)``.
    num_workers
        Worker processes (0: load in the main process); see the module docstring.
    seed
        Non-negative integer seeding the shuffling and the training observation draws.
    train, patch, patch_overlap, stats, modalities, modality_stats
        As :class:`DATorchDataset` (``modalities``: e.g. ``TaskConfig.modalities``).
    drop_last
        Drop an incomplete last batch.
    sampler
        Your own sampler of sample indices ``0 .. len(dataset) - 1`` (e.g. one shard per rank;
        mind that patches make more samples than cycles) instead of :class:`EpochSampler`;
        ``shuffle`` must then be False. Its ``epoch`` attribute, if any, is used for the
        observation draws unless ``set_epoch`` was called.
    supports_patches
        Whether the model takes patches; False refuses a patched dataset. None: not checked.
    model_info
        The model's ``ModelInfo`` (``baselines.registry.model_info(name)``): its
        ``supports_patches`` is checked as above, and a model with ``uses_modalities=False``
        gets no modalities when ``modalities`` is left unset (M = 0, nothing read).
    **loader_kwargs
        Passed to :class:`torch.utils.data.DataLoader` (``persistent_workers``,
        ``prefetch_factor``, ``pin_memory``, ``timeout``, ``collate_fn`` (default: one shared
        buffer per batch, unpacked in the main process), ``worker_init_fn`` (run after the dask
        set-up), ``multiprocessing_context``, ``generator``, ...); not ``batch_sampler``.

    Returns
    -------
    DADataLoader
        Batches are dicts of tensors with a leading batch dim B: ``background``,
        ``observation``, ``mask``, ``target`` (B, C, H, W) float32, ``modalities`` (B, M, H, W)
        in model space (0 where absent), ``modality_mask`` (B, M, H, W) float32 (1 where a cell
        holds data), ``modality_present`` (B, M), ``time`` (B,) int64 ns, ``origin`` (B, 2)
        int64, ``latitude`` (B, H) and ``longitude`` (B, W) float32 degrees;
        ``DABatch.from_loader(batch)`` takes one.
    """
    _check_loader_arguments(loader_kwargs, sampler, shuffle)
    batch_size = check_int("batch_size", batch_size, 1)
    num_workers = check_int("num_workers", num_workers, 0)
    seed = check_int("seed", seed, 0)
    patches_ok, uses_modalities = _capabilities(supports_patches, model_info)
    if patches_ok is False:
        _refuse_patches(ds, patch)
    values = (train, patch, patch_overlap, stats, modalities, modality_stats)
    options = dict(zip(_DATASET_OPTIONS, values, strict=True))
    if uses_modalities is False and modalities is None and not isinstance(ds, DATorchDataset):
        options["modalities"] = ()
    dataset = _dataset(ds, options, seed)
    own = sampler is None
    return DADataLoader(
        dataset,
        sampler=EpochSampler(len(dataset), shuffle=shuffle, seed=seed) if own else sampler,
        own_sampler=own,
        batch_size=batch_size,
        num_workers=num_workers,
        drop_last=bool(drop_last),
        **_loader_kwargs(num_workers, seed, loader_kwargs),
    )
