"""dambench: the DAMBench benchmark for deep-learning data assimilation of the global atmosphere.

Importing the package registers the ``.dambench`` accessor on xarray Datasets and DataArrays.
"""

from __future__ import annotations

from dambench import accessor as _accessor  # noqa: F401  (registers ds.dambench)
from dambench import schema
from dambench._version import __version__
from dambench.channels import channel_coords, from_channels, to_channels
from dambench.exceptions import (
    DambenchError,
    DambenchInputError,
    DambenchIntegrityError,
    DambenchSchemaError,
    DegenerateFieldWarning,
    MissingDependencyError,
)
from dambench.grid import CANONICAL_GRID, Grid, lat_weights, to_canonical
from dambench.load import load_rows, open_dataset, stats_from_attrs
from dambench.metrics import (
    acc,
    bias,
    crps,
    evaluate,
    format_table3,
    mae,
    metric_units,
    mse,
    rmse,
    scores_to_frame,
    spatial_mean,
    table3_row,
)
from dambench.normalize import channel_stats, denormalize, normalize
from dambench.observe import observation_mask, observe
from dambench.plot import plot_error_maps, plot_maps, plot_spectra, zonal_energy_spectrum
from dambench.regions import PERIODS, REGIONS, Region, period_labels, region_weights, resolve_region
from dambench.regrid import Regridder, regrid
from dambench.scoring import PredictionWriter, evaluate_predictions, open_predictions
from dambench.spectral import spec_div, spec_res
from dambench.validate import validate
from dambench.verify import verify

__all__ = [
    "CANONICAL_GRID",
    "PERIODS",
    "PredictionWriter",
    "REGIONS",
    "Region",
    "DambenchError",
    "DambenchInputError",
    "DambenchIntegrityError",
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
    "evaluate_predictions",
    "format_table3",
    "from_channels",
    "lat_weights",
    "load_rows",
    "mae",
    "metric_units",
    "mse",
    "normalize",
    "observation_mask",
    "observe",
    "open_predictions",
    "open_dataset",
    "period_labels",
    "plot_error_maps",
    "plot_maps",
    "plot_spectra",
    "region_weights",
    "regrid",
    "resolve_region",
    "rmse",
    "schema",
    "scores_to_frame",
    "spatial_mean",
    "spec_div",
    "spec_res",
    "stats_from_attrs",
    "table3_row",
    "to_canonical",
    "to_channels",
    "validate",
    "verify",
    "zonal_energy_spectrum",
]
