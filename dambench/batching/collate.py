"""Collation: a batch of samples as one shared-memory buffer, unpacked in the main process.

A worker hands a batch over with one file-descriptor hand-over instead of one per field (which
otherwise dominates the main process's time): :func:`collate` packs the float32 fields into one
flat buffer plus small numpy arrays; :func:`unpack` (run by the loader's iterator in the main
process) turns it back into the documented dict of contiguous tensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

PACKED_FIELDS = ("background", "observation", "mask", "target", "modalities", "modality_mask")
"""Float32 fields packed into the shared buffer, in this order."""
SMALL_FIELDS = ("modality_present", "time", "origin", "latitude", "longitude")
"""Fields handed over as stacked numpy arrays."""
_PACK_KEY = "_dambench_packed"


def _flat_buffer(elem: torch.Tensor, total: int) -> torch.Tensor:
    if torch.utils.data.get_worker_info() is not None:
        # allocate straight in shared memory, as torch's default_collate does
        flat = elem.new(elem._typed_storage()._new_shared(total, device=elem.device))
        return flat.resize_(total)
    return torch.empty(total, dtype=elem.dtype)


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Pack :class:`~dambench.batching.DATorchDataset` samples into one flat float32 buffer (plus
    small numpy arrays); keys a subclass adds go through torch's ``default_collate``."""
    first = samples[0]
    layout = [(name, (len(samples), *first[name].shape)) for name in PACKED_FIELDS]
    total = sum(int(np.prod(shape)) for _, shape in layout)
    flat = _flat_buffer(first["target"], total)
    buffer = flat.numpy()
    offset = 0
    for name, shape in layout:
        size = int(np.prod(shape))
        block = buffer[offset : offset + size].reshape(shape)
        for i, sample in enumerate(samples):
            block[i] = sample[name].numpy()
        offset += size
    packed: dict[str, Any] = {_PACK_KEY: flat, "layout": layout}
    for name in SMALL_FIELDS:
        packed[name] = np.stack([sample[name].numpy() for sample in samples])
    extra = [name for name in first if name not in (*PACKED_FIELDS, *SMALL_FIELDS)]
    if extra:
        packed["extra"] = default_collate([{name: s[name] for name in extra} for s in samples])
    return packed


def unpack(batch: Any) -> Any:
    """The documented batch dict from :func:`collate`'s output (views of one buffer); any other
    batch (a caller's own ``collate_fn``) as it is."""
    if not isinstance(batch, dict) or _PACK_KEY not in batch:
        return batch
    flat = batch[_PACK_KEY]
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for name, shape in batch["layout"]:
        size = int(np.prod(shape))
        out[name] = flat[offset : offset + size].view(tuple(shape))  # pin_memory: tuple -> list
        offset += size
    for name in SMALL_FIELDS:
        out[name] = torch.from_numpy(batch[name])
    out.update(batch.get("extra", {}))
    return out


class UnpackingIterator:
    """Wraps a DataLoader iterator, unpacking each batch in the main process."""

    def __init__(self, iterator: Iterator) -> None:
        self._iterator = iterator

    def __iter__(self) -> UnpackingIterator:
        return self

    def __next__(self) -> Any:
        return unpack(next(self._iterator))

    def __len__(self) -> int:
        return len(self._iterator)
