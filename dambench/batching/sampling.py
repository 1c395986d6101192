"""Sampling: which windows make the samples, and in which order an epoch visits them.

A sample is one window of an :class:`xbatcher.BatchGenerator` whose ``input_dims`` cover every dim
(``time: 1`` plus ``channel``, ``latitude``, ``longitude``): one whole globe per cycle, or the
patches of each cycle, time-major. :func:`patch_dims` validates a patch request;
:class:`EpochSampler` shuffles reproducibly from ``(seed, epoch)``; :class:`EpochTaggingSampler`
sends the epoch with every index so that it reaches persistent worker processes.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from dambench import schema
from dambench.exceptions import DambenchInputError
from dambench.modalities import external_stacklevel

PATCH_DIMS = schema.SPATIAL_DIMS
SHUFFLE_STREAM = 0x5F1
"""First entropy word of the shuffling seeds (another stream than the observation draws')."""


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int, refusing bools, non-integers and values below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise DambenchInputError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def derived_seed(*entropy: int) -> int:
    """A 63-bit seed from non-negative integers (numpy ``SeedSequence``), stable across runs
    and machines."""
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def _check_patch_keys(patch: Mapping[str, int], overlap: Mapping[str, int]) -> None:
    for name, given in (("patch", patch), ("patch_overlap", overlap)):
        unknown = set(given) - set(PATCH_DIMS)
        if unknown:
            raise DambenchInputError(
                f"{name} has unknown dims {sorted(map(str, unknown))}; it takes {list(PATCH_DIMS)}."
            )


def _warn_uncovered(sizes: Mapping[str, int], window: dict, overlap: dict) -> None:
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
                stacklevel=external_stacklevel(),
            )


def patch_dims(
    sizes: Mapping[str, int], patch: Mapping[str, int] | None, overlap: Mapping[str, int] | None
) -> tuple[dict[str, int], dict[str, int]]:
    """(window size, overlap) per spatial dim, validated; warns when windows leave rows or
    columns of the grid unsampled."""
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
    _check_patch_keys(patch, overlap)
    for dim, size in patch.items():
        size = check_int(f"patch[{dim!r}]", size, 1)
        if size > sizes[dim]:
            raise DambenchInputError(
                f"patch[{dim!r}] = {size} is larger than the grid ({sizes[dim]} points)."
            )
        window[dim] = size
    for dim, value in overlap.items():
        value = check_int(f"patch_overlap[{dim!r}]", value, 0)
        if value >= window[dim]:
            raise DambenchInputError(
                f"patch_overlap[{dim!r}] = {value} must be smaller than the patch size "
                f"{window[dim]}."
            )
        overlap[dim] = value
    _warn_uncovered(sizes, window, overlap)
    return window, overlap


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
        self.n = check_int("n", n, 0)
        self.shuffle = bool(shuffle)
        self.seed = check_int("seed", seed, 0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next iteration."""
        self.epoch = check_int("epoch", epoch, 0)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        generator = torch.Generator()
        generator.manual_seed(derived_seed(SHUFFLE_STREAM, self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=generator).tolist())


class EpochTaggingSampler(Sampler):
    """Yields ``(index, epoch)`` for each index of ``sampler``, the epoch being the dataset's
    when the iteration starts: the epoch travels with the indices, so it reaches persistent
    workers too."""

    def __init__(self, sampler: Sampler, dataset: Any) -> None:
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
