"""Per-channel statistics and z-score normalisation of stacked fields."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchInputError
from dambench.units import NORMALIZED_UNITS


def channel_stats(
    field: xr.DataArray,
    *,
    dims: Sequence[str] = (schema.TIME, *schema.SPATIAL_DIMS),
) -> xr.Dataset:
    """Per-channel mean and standard deviation over ``dims`` (float64), as a Dataset with data
    variables ``mean`` and ``std`` over ``channel``; units are the field's."""
    dims = [d for d in dims if d in field.dims]
    values = field.astype(np.float64)
    stats = xr.Dataset({"mean": values.mean(dims), "std": values.std(dims)})
    return stats.reset_coords(drop=True)


def _aligned_stats(field: xr.DataArray, stats: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    for name in ("mean", "std"):
        if name not in stats:
            raise DambenchInputError(f"stats needs a {name!r} variable; found {list(stats)}.")
    if schema.CHANNEL not in field.dims:
        raise DambenchInputError(f"normalisation needs a {schema.CHANNEL!r} dim; got {field.dims}.")
    channels = field[schema.CHANNEL].values.tolist()
    missing = [c for c in channels if c not in stats[schema.CHANNEL].values.tolist()]
    if missing:
        raise DambenchInputError(f"stats lack channels {missing}.")
    sel = stats.sel({schema.CHANNEL: channels}).reset_coords(drop=True)
    std = sel["std"]
    if bool((std <= 0).any()) or bool(std.isnull().any()):
        bad = std[schema.CHANNEL].values[~(std.values > 0)].tolist()
        raise DambenchInputError(f"stats have a non-positive or NaN std for channels {bad}.")
    return sel["mean"], std


def normalize(field: xr.DataArray, stats: xr.Dataset) -> xr.DataArray:
    """``(field - mean) / std`` per channel; keeps dtype and NaNs and sets ``units`` to ``"1"``.

    ``stats`` should be the train split's (:func:`dambench.stats_from_attrs` of an opened
    dataset, or :func:`channel_stats` of the train field): statistics of the split being
    normalised leak it. A field already marked ``attrs["normalized"]`` is refused (normalising
    twice gives silently wrong values).
    """
    if field.attrs.get("normalized"):
        raise DambenchInputError(
            f"{field.name or 'The field'} is already normalised (attrs['normalized'] is set); "
            "denormalize it first, or drop that attribute if its values are in physical units."
        )
    mean, std = _aligned_stats(field, stats)
    out = ((field - mean) / std).astype(field.dtype)
    if "units" in field.coords:
        out = out.assign_coords(
            units=(schema.CHANNEL, [NORMALIZED_UNITS] * field.sizes[schema.CHANNEL])
        )
    out.attrs = {**field.attrs, "normalized": 1}
    out.name = field.name
    return out


def denormalize(field: xr.DataArray, stats: xr.Dataset) -> xr.DataArray:
    """Inverse of :func:`normalize`: ``field * std + mean``, restoring the schema units."""
    mean, std = _aligned_stats(field, stats)
    out = (field * std + mean).astype(field.dtype)
    if "units" in field.coords:
        channels = field[schema.CHANNEL].values.tolist()
        out = out.assign_coords(units=(schema.CHANNEL, [schema.channel_units(c) for c in channels]))
    out.attrs = {k: v for k, v in field.attrs.items() if k != "normalized"}
    out.name = field.name
    return out
