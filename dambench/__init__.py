"""dambench: the DAMBench benchmark for deep-learning data assimilation of the global atmosphere.

Importing the package registers the ``.dambench`` accessor on xarray Datasets and DataArrays.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from dambench import accessor as _accessor  # noqa: F401  (registers ds.dambench)
from dambench import schema
from dambench.channels import channel_coords, from_channels, to_channels
from dambench.exceptions import (
    DambenchError,
    DambenchInputError,
    DambenchSchemaError,
    DegenerateFieldWarning,
    MissingDependencyError,
)
from dambench.grid import CANONICAL_GRID, Grid, lat_weights, to_canonical
from dambench.load import open_dataset, stats_from_attrs
from dambench.metrics import (
    acc,
    bias,
    crps,
    evaluate,
    format_table3,
    mae,
    mse,
    rmse,
    table3_row,
)
from dambench.normalize import channel_stats, denormalize, normalize
from dambench.observe import observation_mask, observe
from dambench.regrid import Regridder, regrid
from dambench.spectral import spec_div, spec_res
from dambench.validate import validate

try:
    __version__ = version("dambench")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = [
    "CANONICAL_GRID",
    "DambenchError",
    "DambenchInputError",
    "DambenchSchemaError",
    "DegenerateFieldWarning",
    "Grid",
    "MissingDependencyError",
    "Regridder",
    "__version__",
    "acc",
    "bias",
    "channel_coords",
    "channel_stats",
    "crps",
    "denormalize",
    "evaluate",
    "format_table3",
    "from_channels",
    "lat_weights",
    "mae",
    "mse",
    "normalize",
    "observation_mask",
    "observe",
    "open_dataset",
    "regrid",
    "rmse",
    "schema",
    "spec_div",
    "spec_res",
    "stats_from_attrs",
    "table3_row",
    "to_canonical",
    "to_channels",
    "validate",
]
