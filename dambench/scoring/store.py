"""Write predictions to a Zarr store one cycle at a time (bounded memory), in the layout
:func:`dambench.scoring.open_predictions` reads back.

The store holds one variable ``analysis`` ``(time, [member,] channel, latitude, longitude)``
float32 in physical units, one chunk per cycle, with the channel coordinates of the schema;
its attrs record the producer (model, seed, ...). A year of 69-channel, 8-member analyses is
about 23 GB: it is never held in memory, only one cycle is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from dambench import schema
from dambench.channels import channel_coords
from dambench.exceptions import DambenchInputError

VARIABLE = "analysis"


class PredictionWriter:
    """Create ``path`` for ``times`` x ``channels`` (x ``members``) and fill it cycle by cycle.

    Parameters
    ----------
    path
        A new Zarr store (an existing one is refused unless ``overwrite``).
    times, channels, latitude, longitude
        The coordinates (the split's cycles and the dataset's grid and channels).
    members
        Ensemble size, or ``None`` for one analysis per cycle.
    attrs
        Provenance written to the store (values that are not str/int/float are JSON-encoded).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        times: np.ndarray,
        channels: list[str],
        latitude: np.ndarray,
        longitude: np.ndarray,
        members: int | None = None,
        attrs: Mapping | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise DambenchInputError(f"{self.path} exists; choose another path or overwrite=True.")
        self.times = np.asarray(times)
        self.members = members
        dims = [schema.TIME, *(["member"] if members else []), schema.CHANNEL, *schema.SPATIAL_DIMS]
        shape = [len(times), *([members] if members else []), len(channels)]
        shape += [len(latitude), len(longitude)]
        chunks = [1, *shape[1:]]
        coords = {
            schema.TIME: self.times,
            schema.LATITUDE: np.asarray(latitude),
            schema.LONGITUDE: np.asarray(longitude),
            **{
                name: coord.astype(object) if coord.dtype.kind == "U" else coord
                for name, coord in channel_coords(channels).items()
            },
        }
        if members:
            coords["member"] = np.arange(members)
        import dask.array as da

        empty = da.full(shape, np.nan, dtype=np.float32, chunks=chunks)
        template = xr.Dataset({VARIABLE: (dims, empty)}, coords=coords)
        template.attrs = {k: _attr(v) for k, v in (attrs or {}).items()}
        template.to_zarr(self.path, mode="w", compute=False, consolidated=False)
        from dambench.assembly.writers import consolidate_store

        consolidate_store(self.path)
        self._dims = dims
        self._index = {np.datetime64(t, "ns"): i for i, t in enumerate(self.times)}

    @classmethod
    def like(
        cls, ds: xr.Dataset, path: str | os.PathLike, *, channels: list[str] | None = None, **kwargs
    ) -> PredictionWriter:
        """A writer for every cycle of ``ds`` (a dataset, or a split of one) on its grid, with
        its channels or ``channels``; ``kwargs`` go to the constructor (``members``, ``attrs``,
        ``overwrite``)."""
        return cls(
            path,
            times=ds[schema.TIME].values,
            channels=[str(c) for c in ds[schema.CHANNEL].values] if channels is None else channels,
            latitude=ds[schema.LATITUDE].values,
            longitude=ds[schema.LONGITUDE].values,
            **kwargs,
        )

    def write(self, time: np.datetime64, values: np.ndarray) -> None:
        """Write one cycle's ``([member,] channel, latitude, longitude)`` values."""
        i = self._index.get(np.datetime64(time, "ns"))
        if i is None:
            raise DambenchInputError(f"{time} is not one of the store's times.")
        values = np.asarray(values, dtype=np.float32)[None]
        block = xr.Dataset({VARIABLE: (self._dims, values)})
        block.to_zarr(self.path, region={schema.TIME: slice(i, i + 1)}, consolidated=False)


def _attr(value):
    return value if isinstance(value, (str, int, float)) else json.dumps(value, default=str)
