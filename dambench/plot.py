"""Figures people look at: maps of a triplet and its errors (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from dambench import schema


def _axes_grid(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def plot_maps(
    panels: dict[str, xr.DataArray],
    path: str | Path,
    *,
    title: str = "",
    diverging: tuple[str, ...] = (),
) -> Path:
    """Save one lat-lon map per panel (2-D ``latitude x longitude`` fields) to ``path`` (PNG).

    Panels named in ``diverging`` use a symmetric blue-red scale (errors, increments); the others
    share one colour scale. Unobserved (NaN) points are left blank.
    """
    fig, axes = _axes_grid(len(panels))
    shared = [p for name, p in panels.items() if name not in diverging]
    vmin = min(float(np.nanmin(p.values)) for p in shared) if shared else None
    vmax = max(float(np.nanmax(p.values)) for p in shared) if shared else None
    for ax, (name, field) in zip(axes, panels.items(), strict=False):
        lat = field[schema.LATITUDE].values
        lon = field[schema.LONGITUDE].values
        extent = (lon[0], lon[-1], lat[-1], lat[0])
        if name in diverging:
            limit = float(np.nanmax(np.abs(field.values))) or 1.0
            image = ax.imshow(field.values, extent=extent, cmap="RdBu_r", vmin=-limit, vmax=limit)
        else:
            image = ax.imshow(field.values, extent=extent, cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("longitude (deg E)")
        ax.set_ylabel("latitude (deg N)")
        units = field.attrs.get("units") or (
            str(field["units"].values) if "units" in field.coords else ""
        )
        fig.colorbar(image, ax=ax, shrink=0.8, label=units)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
