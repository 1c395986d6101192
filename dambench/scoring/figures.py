"""Figures of an evaluation: maps of the last cycle (with the analysis increment and the
observation locations), energy spectra averaged over every cycle, and the per-cycle MSE.

Spectra are accumulated cycle by cycle (one cycle's field in memory at a time): the band-mean
spectrum of each cycle, averaged over the cycles. Each figure goes into the evaluation's staging
folder (:class:`~dambench.scoring.outputs.ResultFolder`) with the run id in its PNG metadata.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.load import read_cycle
from dambench.scoring.outputs import ResultFolder, figure_bytes


def _analysis(predictions, time, channel: str) -> xr.DataArray:
    field = predictions.cycle(time)
    if "member" in field.dims:
        field = field.mean("member")
    return field.sel({schema.CHANNEL: channel})


def _dataset_field(ds: xr.Dataset, variable: str, time, channel: str) -> xr.DataArray:
    return read_cycle(ds, variable, time, channel)


def stage_figures(folder: ResultFolder, ds: xr.Dataset, predictions, channel: str, report):
    """Stage ``maps.png``, ``spectra.png`` and ``per_cycle_mse.png`` of ``channel`` (the first
    predicted channel when ``channel`` was not predicted) into ``folder``."""
    if channel not in predictions.channels:
        channel = predictions.channels[0]
    name, run = report.summary["model"], report.summary["run"]
    figures = {
        "maps.png": maps_figure(ds, predictions, name, channel),
        "spectra.png": spectra_figure(ds, predictions, name, channel),
        "per_cycle_mse.png": per_cycle_figure(report),
    }
    return [folder.write(file, figure_bytes(fig, run)) for file, fig in figures.items()]


def maps_figure(ds: xr.Dataset, predictions, name: str, channel: str):
    """Maps at the last cycle: target, background, analysis, the observations (their locations),
    the errors of background and analysis and the analysis increment (analysis - background),
    the last three on one symmetric scale."""
    from dambench.plot import plot_maps

    time = ds[schema.TIME].values[-1]
    target = _dataset_field(ds, "target", time, channel)
    background = _dataset_field(ds, "background", time, channel)
    analysis = _analysis(predictions, time, channel).assign_coords(target.coords)
    panels = {
        "target": target,
        "background": background,
        name: analysis,
        "background - target": background - target,
        f"{name} - target": analysis - target,
        f"increment: {name} - background": analysis - background,
    }
    if "observation" in ds:
        observed = _dataset_field(ds, "observation", time, channel)
        panels[f"observations ({int(observed.notnull().sum())} points)"] = observed
    return plot_maps(
        panels,
        model=name,
        valid_time=time,
        title=f"{channel}: {name} against the target, the background and the observations",
        diverging=tuple(list(panels)[3:6]),
    )


def mean_spectra(ds: xr.Dataset, predictions, name: str, channel: str) -> dict[str, xr.DataArray]:
    """Band-mean zonal energy spectra of target, background and analysis, averaged over every
    cycle of the split, read one cycle at a time. A field with non-finite points (predictions
    scored with ``skipna``) has no spectrum: that cycle is left out of its label's mean, and
    each spectrum's ``n_cycles`` attribute counts the cycles averaged."""
    from dambench.plot import band_spectrum

    totals: dict[str, xr.DataArray] = {}
    counts: dict[str, int] = {}
    attrs: dict[str, dict] = {}
    for time in ds[schema.TIME].values:
        fields = {
            "target": _dataset_field(ds, "target", time, channel),
            "background": _dataset_field(ds, "background", time, channel),
        }
        fields[name] = _analysis(predictions, time, channel).assign_coords(
            fields["target"].coords
        )
        for label, field in fields.items():
            if not np.isfinite(field.values).all():
                continue
            spectrum = band_spectrum(field.rename(label))
            attrs.setdefault(label, dict(spectrum.attrs))
            totals[label] = spectrum if label not in totals else totals[label] + spectrum
            counts[label] = counts.get(label, 0) + 1
    return {
        label: (total / counts[label]).assign_attrs(attrs[label], n_cycles=counts[label])
        for label, total in totals.items()
    }


def spectra_figure(ds: xr.Dataset, predictions, name: str, channel: str):
    """Zonal energy spectra of target, background and analysis averaged over the split's
    cycles (the cycles left out of a curve, fields with non-finite points, are counted in the
    caption)."""
    from dambench.plot import plot_spectrum_curves

    spectra = mean_spectra(ds, predictions, name, channel)
    times = ds[schema.TIME].values
    first, last = (pd.Timestamp(t).strftime("%Y-%m-%d") for t in (times[0], times[-1]))
    partial = [
        f"{label} over {s.attrs['n_cycles']}"
        for label, s in spectra.items()
        if s.attrs["n_cycles"] < len(times)
    ]
    return plot_spectrum_curves(
        spectra,
        channel=channel,
        model=name,
        when=f"mean over {len(times)} cycles {first} .. {last}"
        + (f" ({', '.join(partial)} complete cycles)" if partial else ""),
    )


def per_cycle_figure(report):
    """The per-cycle MSE(1e-2) of every method scored."""
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
    return fig
