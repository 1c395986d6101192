"""``dambench quickstart``: build, load and score the embedded era5-sample in seconds.

The command-line interface is :mod:`dambench.cli`; this module prints (it is the command's body).
The scores go through the package's one scoring path (:func:`dambench.evaluate_predictions`):
the "background with observed points inserted" analyses are written to a prediction store and
scored like anyone's predictions, with the Background row beside them.
"""

from __future__ import annotations

from pathlib import Path

import xarray as xr

BLENDED = "Background + observed points"


def _write_blended(ds: xr.Dataset, path: Path) -> xr.DataArray:
    """The background with every observed point replaced by its observation, as a store."""
    from dambench.scoring import PredictionWriter

    blended = ds["background"].where(ds["observation"].isnull(), ds["observation"])
    writer = PredictionWriter.like(ds, path, attrs={"model": BLENDED, "seed": 0}, overwrite=True)
    for i, time in enumerate(ds.time.values):
        writer.write(time, blended.isel(time=i).values)
    return blended


def _overview_figure(ds: xr.Dataset, blended: xr.DataArray, channel: str, path: Path) -> Path:
    from dambench.plot import plot_maps

    last = {"time": -1}
    target, background = ds["target"].sel(channel=channel), ds["background"].sel(channel=channel)
    field = blended.sel(channel=channel)
    panels = {
        "target (ERA5)": target.isel(last),
        "background": background.isel(last),
        "observations": ds["observation"].sel(channel=channel).isel(last),
        "background - target": (background - target).isel(last),
        "blended - target": (field - target).isel(last),
    }
    separate = ()
    if "precip" in ds:
        panels["precip at stations (mm/day)"] = ds["precip"].isel(last)
        separate = ("precip at stations (mm/day)",)
    plot_maps(
        panels,
        path,
        model="Background",
        title=f"{channel}: the triplet and the errors of two analyses",
        diverging=("background - target", "blended - target"),
        separate_scales=separate,
    )
    return path


def run_quickstart(
    out: str | Path = "dambench-quickstart", split: str = "test", channel: str = "t2m"
) -> int:
    """Build (first use) and load era5-sample, score two analyses on ``split``, write tables,
    ``scores.parquet``, ``summary.json`` and maps to ``out``; print Table 3."""
    from dambench.load import ensure_embedded, open_dataset
    from dambench.scoring import evaluate_predictions

    out = Path(out)
    print("Building (first use only) and loading era5-sample, the embedded ERA5 default ...")
    folder = ensure_embedded(verbose=False)
    ds = open_dataset(folder, split=split).load()
    print(
        f"{folder}\n{split} split: {ds.sizes['time']} cycles, channels "
        f"{ds.channel.values.tolist()}, grid {ds.sizes['latitude']}x{ds.sizes['longitude']}; "
        f"background: {ds.attrs['background']}; observations: {ds.attrs['observation']}."
    )
    out.mkdir(parents=True, exist_ok=True)
    store = out / "predictions" / "blended.zarr"
    blended = _write_blended(ds, store)
    report = evaluate_predictions(
        store, folder, split=split, out=out, overwrite=True, name=BLENDED, figure_channel=channel
    )
    print(
        "\nTable 3 layout (MSE/MAE on normalised fields x1e-2, RMSE in physical units; "
        "mean [95 % block-bootstrap interval over cycles]):"
    )
    print(report.table3)
    for comparison in report.summary["comparisons"]:
        print(
            f"{comparison['verdict']}: difference {comparison['difference']:.4g} "
            f"[{comparison['ci_low']:.4g}, {comparison['ci_high']:.4g}]"
        )
    figure = _overview_figure(ds, blended, channel, out / "quickstart.png")
    print(f"\nWrote {figure}, {out / 'table3.md'}, {out / 'scores.parquet'} and summary.json")
    return 0
