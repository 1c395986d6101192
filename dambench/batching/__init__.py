"""PyTorch datasets and loaders over a DAMBench dataset, with samples defined by xbatcher.

:class:`DATorchDataset` turns a canonical dataset (the result of :func:`dambench.open_dataset`,
any split) into a map-style :class:`torch.utils.data.Dataset` of normalised DA tasks, and
:func:`make_dataloader` wraps it in a :class:`DADataLoader` with reproducible shuffling, per-epoch
observation draws and safe multi-process loading. A batch is a dict that
``baselines.interface.DABatch.from_loader`` accepts as it is.

One job per module:

- :mod:`~dambench.batching._fastpath`: the fast zarr read path on private xarray, zarr and
  xbatcher internals (and the loud :class:`SlowReadWarning` when they change);
- :mod:`~dambench.batching.dataset`: :class:`DATorchDataset` (windows, observations, modalities
  in model space, window coordinates);
- :mod:`~dambench.batching.sampling`: patches and :class:`EpochSampler`;
- :mod:`~dambench.batching.collate`: one shared-memory buffer per batch;
- :mod:`~dambench.batching.loader`: :class:`DADataLoader` and :func:`make_dataloader`.
"""

from dambench.exceptions import MissingDependencyError

try:
    import torch  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised by a test with torch hidden
    raise MissingDependencyError(
        "dambench.batching needs PyTorch; install it with: pip install 'dambench[torch]'"
    ) from err

from dambench.batching._fastpath import SlowReadWarning
from dambench.batching.dataset import (
    MODALITY_ORDER,
    DATorchDataset,
    modality_variables,
    observation_settings,
)
from dambench.batching.loader import DADataLoader, make_dataloader
from dambench.batching.sampling import EpochSampler, derived_seed

__all__ = [
    "MODALITY_ORDER",
    "DADataLoader",
    "DATorchDataset",
    "EpochSampler",
    "SlowReadWarning",
    "derived_seed",
    "make_dataloader",
    "modality_variables",
    "observation_settings",
]
