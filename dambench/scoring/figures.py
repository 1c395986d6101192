"""Figures of an evaluation: maps of the last cycle, energy spectra, per-cycle MSE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema


def save_figures(
    out: Path, ds: xr.Dataset, predictions, name: str, channel: str, report
) -> list[Path]:
    """Maps of ``channel`` at the last cycle (target, background, analysis and their errors on one
    symmetric scale), energy spectra of the three, and the per-cycle MSE of every method."""
    if channel not in predictions.channels:
        channel = predictions.channels[0]
    time = ds[schema.TIME].values[-1]
    analysis = predictions.cycle(time)
    if "member" in analysis.dims:
        analysis = analysis.mean("member")
    analysis = analysis.sel({schema.CHANNEL: channel})
    target = ds["target"].sel({schema.TIME: time, schema.CHANNEL: channel}).load()
    background = ds["background"].sel({schema.TIME: time, schema.CHANNEL: channel}).load()
    analysis = analysis.assign_coords(target.coords)
    return [
        _maps(out / "maps.png", name, channel, time, target, background, analysis),
        _spectra(out / "spectra.png", name, channel, time, target, background, analysis),
        _per_cycle(out / "per_cycle_mse.png", report),
    ]


def _maps(path, name, channel, time, target, background, analysis) -> Path:
    from dambench.plot import plot_maps

    plot_maps(
        {
            "target": target,
            "background": background,
            name: analysis,
            "background - target": background - target,
            f"{name} - target": analysis - target,
        },
        path,
        model=name,
        valid_time=time,
        title=f"{channel}: {name} against the target and the background",
        diverging=("background - target", f"{name} - target"),
    )
    return path


def _spectra(path, name, channel, time, target, background, analysis) -> Path:
    from dambench.plot import plot_spectra

    plot_spectra(
        {"target": target, "background": background, name: analysis},
        path,
        model=name,
        valid_time=time,
        title=f"{channel} zonal energy spectra",
    )
    return path


def _per_cycle(path: Path, report) -> Path:
    import matplotlib.figure

    fig = matplotlib.figure.Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    times = pd.DatetimeIndex(report.cycles.times)
    for method, columns in report.summary["per_cycle"].items():
        if "MSE(1e-2)" in columns:
            ax.plot(times, np.asarray(columns["MSE(1e-2)"]), marker="o", label=method)
    ax.set_ylabel("MSE(1e-2), normalised fields")
    ax.set_title(
        f"Per-cycle MSE on {report.summary['split']} ({report.summary['dataset']['name']})"
    )
    ax.legend()
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
