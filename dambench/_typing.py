"""Type aliases shared across dambench."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypeAlias

import xarray as xr

if TYPE_CHECKING:
    from dambench.regions import Region

XrObject: TypeAlias = xr.DataArray | xr.Dataset
WeightsLike: TypeAlias = Literal["cos", "area"] | xr.DataArray | None
ObservationPattern: TypeAlias = Literal["random", "columns", "stations"]
ErrorKind: TypeAlias = Literal["signed", "absolute", "squared"]
SpectralReduction: TypeAlias = Literal["per_sample", "mean_field"]
"""How SpecDiv/SpecRes reduce over samples: score each sample then average, or average first."""
RegionLike: TypeAlias = "Region | str | None"
"""A region: a :class:`dambench.regions.Region`, a name in ``REGIONS``, a box string or None."""
