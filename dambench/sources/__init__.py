"""Readers that turn ERA5, forecast, CPC gauge and OLR files into canonical objects."""

from dambench.sources.align import AlignmentReport, align, daily_cycles, split_cycles
from dambench.exceptions import DambenchRemoteError
from dambench.sources.base import (
    DambenchSourceError,
    Source,
    cache_root,
    local_copy,
    open_dataset_any,
)
from dambench.sources.cpc import cpc_on_grid, read_cpc_binary, read_cpc_psl
from dambench.sources.era5 import open_era5
from dambench.sources.olr import olr_on_grid, read_olr

__all__ = [
    "AlignmentReport",
    "DambenchRemoteError",
    "DambenchSourceError",
    "Source",
    "align",
    "cache_root",
    "cpc_on_grid",
    "daily_cycles",
    "local_copy",
    "open_dataset_any",
    "open_era5",
    "olr_on_grid",
    "read_cpc_binary",
    "read_cpc_psl",
    "read_olr",
    "split_cycles",
]
