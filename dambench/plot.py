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
    separate_scales: tuple[str, ...] = (),
) -> Path:
    """Save one lat-lon map per panel (2-D ``latitude x longitude`` fields) to ``path`` (PNG).

    Panels named in ``diverging`` use a symmetric blue-red scale (errors, increments); those in
    ``separate_scales`` get their own; the others share one colour scale. Unobserved (NaN) points
    are left blank; sparse panels (under 2 % finite) are drawn as enlarged dots.
    """
    fig, axes = _axes_grid(len(panels))
    shared = [p for name, p in panels.items() if name not in diverging + separate_scales]
    vmin = min(float(np.nanmin(p.values)) for p in shared) if shared else None
    vmax = max(float(np.nanmax(p.values)) for p in shared) if shared else None
    for ax, (name, field) in zip(axes, panels.items(), strict=False):
        lat = field[schema.LATITUDE].values
        lon = field[schema.LONGITUDE].values
        extent = (lon[0], lon[-1], lat[-1], lat[0])
        values = np.asarray(field.values)
        if name in diverging:
            limit = float(np.nanmax(np.abs(values))) or 1.0
            style = {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit}
        elif name in separate_scales:
            style = {"cmap": "viridis"}
        else:
            style = {"cmap": "viridis", "vmin": vmin, "vmax": vmax}
        finite = np.isfinite(values)
        if finite.mean() < 0.02:
            rows, cols = np.nonzero(finite)
            image = ax.scatter(lon[cols], lat[rows], c=values[finite], s=14, **style)
            ax.set_xlim(lon[0], lon[-1])
            ax.set_ylim(lat[-1], lat[0])
            ax.set_aspect("equal")
        else:
            image = ax.imshow(values, extent=extent, **style)
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
