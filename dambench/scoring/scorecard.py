"""The WeatherBench2-style scorecard figure: relative RMSE per channel and region against a
reference method, coloured (blue better, red worse), significant cells solid and annotated in
bold, the others faded (their paired 95 % interval includes 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dambench.exceptions import DambenchInputError

FADED = 0.35
"""Opacity of cells whose difference is not significant."""
MIN_WIDTH_IN = 4.6
"""Narrowest figure (inches): the titles of a one-region scorecard fit."""


def _grid(cells: Sequence[dict], method: str, channels: list, regions: list):
    values = np.full((len(channels), len(regions)), np.nan)
    significant = np.zeros(values.shape, dtype=bool)
    for cell in cells:
        if cell["method"] != method:
            continue
        i, j = channels.index(cell["channel"]), regions.index(cell["region"])
        values[i, j] = cell["relative_pct"]
        significant[i, j] = cell["significant"]
    return values, significant


def plot_scorecard(cells: Sequence[dict], reference: str, *, title: str = ""):
    """One panel per method: channels down, regions across, each cell
    ``100 (RMSE - RMSE_ref) / RMSE_ref`` % on one symmetric colour scale shared by all panels.

    Parameters
    ----------
    cells
        :func:`dambench.scoring.leaderboard.scorecard_cells` (method, channel, region,
        relative_pct, significant).
    reference
        The reference's name (in the colour-bar label).

    Returns
    -------
    matplotlib.figure.Figure (not registered with pyplot).
    """
    if not cells:
        raise DambenchInputError(
            "The scorecard needs at least one method besides the reference; give more results."
        )
    from matplotlib.figure import Figure

    methods = list(dict.fromkeys(c["method"] for c in cells))
    channels = list(dict.fromkeys(c["channel"] for c in cells))
    regions = list(dict.fromkeys(c["region"] for c in cells))
    limit = max(1.0, max(abs(c["relative_pct"]) for c in cells))
    width = max(MIN_WIDTH_IN, 1.6 + 1.1 * len(regions))
    height = 0.9 + (0.45 * len(channels) + 0.6) * len(methods)
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(len(methods), 1, squeeze=False)[:, 0]
    for ax, method in zip(axes, methods, strict=True):
        values, significant = _grid(cells, method, channels, regions)
        image = _panel(ax, values, significant, limit, channels, regions)
        ax.set_title(f"{method} vs {reference}", fontsize=9)
    fig.colorbar(image, ax=list(axes), label=f"RMSE vs {reference} (%)", shrink=0.9)
    fig.suptitle(title or "Scorecard: RMSE relative to the reference", fontsize=10)
    return fig


def _panel(ax, values, significant, limit, channels, regions):
    alpha = np.where(significant, 1.0, FADED)
    image = ax.imshow(
        values, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=alpha, aspect="auto"
    )
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            weight = "bold" if significant[i, j] else "normal"
            ax.text(j, i, f"{value:+.1f}%", ha="center", va="center", fontsize=8, weight=weight)
    ax.set_xticks(range(len(regions)), regions, fontsize=8, rotation=30, ha="right")
    ax.set_yticks(range(len(channels)), channels, fontsize=8)
    return image
