"""The ``.dambench`` accessor on xarray Datasets and DataArrays (registered on ``import dambench``).

A thin, stateless layer: ``__init__`` stores the object only and every method forwards to a
function that also stands alone (:mod:`dambench.metrics`, :mod:`dambench.observe`, ...), returning
a new object. The truth of a metric method is the object itself for a DataArray, and its
``target`` variable for a triplet Dataset (or the stacked channels of a per-variable Dataset).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from dambench import metrics, schema, spectral
from dambench._typing import XrObject
from dambench.channels import from_channels, to_channels
from dambench.exceptions import DambenchInputError, MissingDependencyError
from dambench.grid import lat_weights, to_canonical
from dambench.load import stats_from_attrs
from dambench.normalize import denormalize, normalize
from dambench.observe import observe
from dambench.validate import validate


def import_torch():
    """Import torch or raise an error naming the extra to install."""
    try:
        import torch
    except ImportError as err:
        raise MissingDependencyError("This needs PyTorch: pip install 'dambench[torch]'.") from err
    return torch


def _field_to_torch(da: xr.DataArray, dtype: Any = None):
    torch = import_torch()
    order = [d for d in schema.CANONICAL_DIMS if d in da.dims]
    da = da.transpose(*[d for d in da.dims if d not in order], *order)
    values = np.asarray(da.values)
    if not values.flags.c_contiguous:
        values = np.ascontiguousarray(values)
    tensor = torch.from_numpy(values)
    return tensor if dtype is None else tensor.to(dtype)


def stored_train_stats(obj: XrObject) -> xr.Dataset:
    """The train-split statistics recorded in ``obj.attrs["normalization"]`` (a dataset from
    :func:`dambench.open_dataset`, or a DataArray given those attrs).

    Raises
    ------
    DambenchInputError
        If ``obj`` records none: its own statistics would leak the split being normalised, so
        the caller must pass train statistics explicitly.
    """
    if not obj.attrs.get("normalization"):
        kind = type(obj).__name__
        raise DambenchInputError(
            f"This {kind} records no train-split statistics (no attrs['normalization']), and its "
            "own statistics would leak the split being normalised. Pass "
            "stats=dambench.stats_from_attrs(ds) for ds from dambench.open_dataset, or "
            "stats=dambench.channel_stats(train_field) computed on the train split."
        )
    holder = obj if isinstance(obj, xr.Dataset) else xr.Dataset(attrs=obj.attrs)
    return stats_from_attrs(holder)


class _DambenchAccessor:
    """Shared methods of the Dataset and DataArray accessors."""

    def __init__(self, xarray_obj: XrObject):
        self._obj = xarray_obj

    # --- structure ---------------------------------------------------------------------------
    def validate(self, **kwargs) -> XrObject:
        """Check against the schema (see :func:`dambench.validate.validate`); returns the object."""
        return validate(self._obj, **kwargs)

    def to_canonical(self) -> XrObject:
        """Canonical names, orientation and dim order (see :func:`dambench.grid.to_canonical`)."""
        return to_canonical(self._obj)

    def lat_weights(self, method: str = "cos") -> xr.DataArray:
        """Latitude weights of mean 1 (see :func:`dambench.grid.lat_weights`)."""
        return lat_weights(self._obj[schema.LATITUDE], method=method)  # type: ignore[arg-type]

    # --- metrics -----------------------------------------------------------------------------
    def _truth(self) -> xr.DataArray:
        obj = self._obj
        if isinstance(obj, xr.DataArray):
            return obj
        if "target" in obj.data_vars:
            return obj["target"]
        return to_channels(obj)

    def _field(self, prediction: XrObject | str) -> xr.DataArray:
        if isinstance(prediction, str):
            if not isinstance(self._obj, xr.Dataset) or prediction not in self._obj:
                raise DambenchInputError(f"No variable {prediction!r} to use as prediction.")
            return self._obj[prediction]
        if isinstance(prediction, xr.Dataset):
            return to_channels(prediction)
        return prediction

    def _score(self, metric, prediction, **kwargs) -> xr.DataArray:
        return metric(self._field(prediction), self._truth(), **kwargs)

    def mse(self, prediction: XrObject | str, **kwargs) -> xr.DataArray:
        """:func:`dambench.metrics.mse` of ``prediction`` against this object's truth."""
        return self._score(metrics.mse, prediction, **kwargs)

    def mae(self, prediction: XrObject | str, **kwargs) -> xr.DataArray:
        """:func:`dambench.metrics.mae` of ``prediction`` against this object's truth."""
        return self._score(metrics.mae, prediction, **kwargs)

    def rmse(self, prediction: XrObject | str, **kwargs) -> xr.DataArray:
        """:func:`dambench.metrics.rmse` of ``prediction`` against this object's truth."""
        return self._score(metrics.rmse, prediction, **kwargs)

    def bias(self, prediction: XrObject | str, **kwargs) -> xr.DataArray:
        """:func:`dambench.metrics.bias` of ``prediction`` against this object's truth."""
        return self._score(metrics.bias, prediction, **kwargs)

    def acc(self, prediction: XrObject | str, climatology: xr.DataArray, **kwargs) -> xr.DataArray:
        """:func:`dambench.metrics.acc` of ``prediction`` against this object's truth."""
        return metrics.acc(self._field(prediction), self._truth(), climatology, **kwargs)

    def crps(self, ensemble: XrObject | str, **kwargs) -> xr.DataArray:
        """:func:`dambench.metrics.crps` of an ensemble against this object's truth."""
        return self._score(metrics.crps, ensemble, **kwargs)

    def spec_div(self, prediction: XrObject | str, **kwargs) -> xr.DataArray:
        """:func:`dambench.spectral.spec_div` of ``prediction`` against this object's truth."""
        return self._score(spectral.spec_div, prediction, **kwargs)

    def spec_res(self, prediction: XrObject | str, **kwargs) -> xr.DataArray:
        """:func:`dambench.spectral.spec_res` of ``prediction`` against this object's truth."""
        return self._score(spectral.spec_res, prediction, **kwargs)

    def evaluate(self, prediction: XrObject | str, **kwargs) -> xr.Dataset:
        """:func:`dambench.metrics.evaluate` of ``prediction`` against this object's truth."""
        return self._score(metrics.evaluate, prediction, **kwargs)  # type: ignore[return-value]


@xr.register_dataarray_accessor("dambench")
class DambenchDataArrayAccessor(_DambenchAccessor):
    """``da.dambench``: schema tools and metrics for a stacked field (the truth is ``da``)."""

    _obj: xr.DataArray

    def from_channels(self) -> xr.Dataset:
        """Per-variable Dataset (see :func:`dambench.channels.from_channels`)."""
        return from_channels(self._obj)

    def observe(self, **kwargs) -> xr.DataArray:
        """Observations of this field (see :func:`dambench.observe.observe`)."""
        return observe(self._obj, **kwargs)

    def normalize(self, stats: xr.Dataset | None = None) -> xr.DataArray:
        """Z-score per channel with ``stats``; default: the train statistics recorded in the
        attrs (see :func:`stored_train_stats`), never this field's own."""
        return normalize(self._obj, stored_train_stats(self._obj) if stats is None else stats)

    def denormalize(self, stats: xr.Dataset) -> xr.DataArray:
        """Undo :meth:`normalize` with the same ``stats``."""
        return denormalize(self._obj, stats)

    def to_torch(self, dtype: Any = None):
        """A torch tensor in canonical dim order; shares memory with a C-contiguous numpy array."""
        return _field_to_torch(self._obj, dtype)

    def __repr__(self) -> str:
        da = self._obj
        channels = da[schema.CHANNEL].values.tolist() if schema.CHANNEL in da.dims else []
        return _summary("DataArray", da.dims, da.sizes, channels)


@xr.register_dataset_accessor("dambench")
class DambenchDatasetAccessor(_DambenchAccessor):
    """``ds.dambench``: schema tools and metrics for a triplet or per-variable Dataset."""

    _obj: xr.Dataset

    def _stacked_fields(self) -> list[str]:
        return [str(n) for n, v in self._obj.data_vars.items() if schema.CHANNEL in v.dims]

    def to_channels(self, channels: Sequence[str] | None = None) -> xr.DataArray:
        """Stack a per-variable Dataset (see :func:`dambench.channels.to_channels`)."""
        return to_channels(self._obj, channels)

    def observe(self, **kwargs) -> xr.Dataset:
        """A copy whose ``observation`` variable is drawn from the truth (see
        :func:`dambench.observe.observe`)."""
        return self._obj.assign(observation=observe(self._truth(), **kwargs))

    def normalize(self, stats: xr.Dataset | None = None) -> xr.Dataset:
        """Z-score every stacked variable with ``stats``; default: the train statistics recorded
        in the attrs (see :func:`stored_train_stats`), never this split's own."""
        stats = stored_train_stats(self._obj) if stats is None else stats
        return self._assign_fields(normalize, stats)

    def denormalize(self, stats: xr.Dataset) -> xr.Dataset:
        """Undo :meth:`normalize` on every stacked variable."""
        return self._assign_fields(denormalize, stats)

    def _assign_fields(self, transform, stats: xr.Dataset) -> xr.Dataset:
        fields = {name: transform(self._obj[name], stats) for name in self._stacked_fields()}
        out = self._obj.assign(fields)
        if fields and "units" in out.coords:  # the shared per-channel units coordinate
            out = out.assign_coords(units=next(iter(fields.values()))["units"])
        return out

    def to_torch(self, dtype: Any = None) -> dict:
        """``{variable: tensor}`` for every variable with latitude and longitude dims."""
        return {
            str(name): _field_to_torch(da, dtype)
            for name, da in self._obj.data_vars.items()
            if schema.LATITUDE in da.dims
        }

    def __repr__(self) -> str:
        ds = self._obj
        fields = self._stacked_fields()
        channels = ds[schema.CHANNEL].values.tolist() if schema.CHANNEL in ds.dims else []
        kind = "triplet" if "target" in fields else ("stacked" if fields else "per-variable")
        variables = ", ".join(str(v) for v in ds.data_vars)
        return _summary(f"Dataset ({kind}: {variables})", tuple(ds.dims), ds.sizes, channels)


def _summary(kind: str, dims, sizes, channels: list[str]) -> str:
    shown = ", ".join(channels[:6]) + (", ..." if len(channels) > 6 else "")
    lines = [
        f"<dambench accessor on {kind}>",
        "dims: " + ", ".join(f"{d}={sizes[d]}" for d in dims),
        f"channels: {len(channels)}" + (f" ({shown})" if channels else ""),
    ]
    return "\n".join(lines)
