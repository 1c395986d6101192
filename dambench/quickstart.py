"""``dambench quickstart``: build, load and score the embedded era5-sample in seconds.

The command-line interface is :mod:`dambench.cli`; this module prints (it is the command's body).
"""

from __future__ import annotations

from pathlib import Path


def run_quickstart(
    out: str | Path = "dambench-quickstart", split: str = "test", channel: str = "t2m"
) -> int:
    from dambench.load import ensure_embedded, open_dataset, stats_from_attrs
    from dambench.metrics import evaluate, format_table3, scores_to_frame
    from dambench.plot import plot_maps

    out = Path(out)
    print("Building (first use only) and loading era5-sample, the embedded ERA5 default ...")
    folder = ensure_embedded(verbose=False)
    ds = open_dataset(folder, split=split).load()
    stats = stats_from_attrs(ds)
    target, background, observation = ds["target"], ds["background"], ds["observation"]
    blended = background.where(observation.isnull(), observation)
    print(
        f"{folder}\n{split} split: {ds.sizes['time']} cycles, channels "
        f"{ds.channel.values.tolist()}, grid {ds.sizes['latitude']}x{ds.sizes['longitude']}; "
        f"background: {ds.attrs['background']}; observations: {ds.attrs['observation']}."
    )
    results = {
        "Background": evaluate(background, target, stats=stats),
        "Background + observed points": evaluate(blended, target, stats=stats),
    }
    print("\nTable 3 layout (MSE/MAE on normalised fields x1e-2, RMSE in physical units):")
    print(format_table3(results))
    out.mkdir(parents=True, exist_ok=True)
    scores_csv = out / "scores.csv"
    scores_to_frame(results).to_csv(scores_csv, index=False)
    (out / "table3.md").write_text(format_table3(results, fmt="markdown") + "\n")
    last = {"time": -1, "channel": list(ds.channel.values).index(channel)}
    panels = {
        "target (ERA5)": target.isel(last),
        "background": background.isel(last),
        "observations": observation.isel(last),
        "background - target": (background - target).isel(last),
        "blended - target": (blended - target).isel(last),
    }
    if "precip" in ds:
        panels["precip at stations (mm/day)"] = ds["precip"].isel(time=-1)
    when = str(target.time.values[-1])[:16]
    figure = plot_maps(
        panels,
        out / "quickstart.png",
        title=f"{channel} at {when} UTC ({split} split)",
        diverging=("background - target", "blended - target"),
        separate_scales=("precip at stations (mm/day)",),
    )
    print(f"\nWrote {figure}, {out / 'table3.md'} and {scores_csv}")
    return 0
