"""Type aliases shared across dambench."""

from __future__ import annotations

from typing import Literal, TypeAlias

import xarray as xr

XrObject: TypeAlias = xr.DataArray | xr.Dataset
WeightsLike: TypeAlias = Literal["cos", "area"] | xr.DataArray | None
ObservationPattern: TypeAlias = Literal["random", "columns", "stations"]
