"""Readers that turn ERA5, forecast, CPC gauge and OLR files into canonical objects."""

from dambench.sources.base import (
    DambenchSourceError,
    Source,
    local_copy,
    open_dataset_any,
)

__all__ = ["DambenchSourceError", "Source", "local_copy", "open_dataset_any"]
