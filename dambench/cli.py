"""The ``dambench`` command line: ``dambench quickstart``, ``dambench info``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dambench import __version__, schema


def _quickstart(args: argparse.Namespace) -> int:
    from dambench.quickstart import run_quickstart

    run_quickstart(out=args.out, split=args.split, channel=args.channel)
    return 0


def _build(args: argparse.Namespace) -> int:
    from dambench.build import build, load_config

    overrides = {}
    inputs = {k: getattr(args, k) for k in ("era5", "cpc", "olr") if getattr(args, k)}
    if inputs:
        overrides["inputs"] = {**load_config(args.name).inputs, **inputs}
    if args.fengwu:
        overrides["background"] = _fengwu_background(args)
    folder = build(args.name, args.out, workers=args.workers, scheduler=args.scheduler,
                   verbose=not args.quiet, overrides=overrides)
    print(f"Built {folder}")
    return 0


def _fengwu_background(args: argparse.Namespace) -> dict:
    from dambench.build import load_config

    background = dict(load_config(args.name).background)
    model = Path(args.fengwu)
    background["model"] = str(model)
    background["mean"] = args.fengwu_mean or str(model.with_name("global_means.npy"))
    background["std"] = args.fengwu_std or str(model.with_name("global_stds.npy"))
    return background


def _publish(args: argparse.Namespace) -> int:
    from dambench.build.publish import publish

    url = publish(args.folder, args.repo, private=args.private)
    print(f"Published {args.folder} to {url}")
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
        help="build and score the embedded era5-sample dataset and save a figure",
        description="Build (first use only, into the user cache) and load era5-sample, the "
        "embedded ERA5 default; print the paper's Table 3 layout for the background and for the "
        "background with observed points inserted; save maps.",
    )
    quick.add_argument("--out", default="dambench-quickstart", help="output folder")
    quick.add_argument("--split", default="test", choices=list(schema.SPLITS))
    quick.add_argument("--channel", default="t2m", choices=schema.SURFACE_VARIABLES,
                       help="channel shown in the figure")
    quick.set_defaults(func=_quickstart)
    build = sub.add_parser(
        "build",
        help="build a dataset folder (Zarr + Parquet + card), resumable",
        description="Build NAME (a shipped config or a JSON config file) into OUT: one folder that "
        "is a Hugging Face dataset repository. Re-running resumes an interrupted build; a finished "
        "build is left alone.",
    )
    build.add_argument("name", help="era5-sample, era5-fengwu or a JSON config path")
    build.add_argument("--out", required=True, help="output folder")
    build.add_argument("--workers", type=int, default=1, help="threads computing shards")
    build.add_argument("--scheduler", help="dask.distributed scheduler address")
    build.add_argument("--era5", help="ERA5 zarr URL (WeatherBench2 layout)")
    build.add_argument("--fengwu", help="FengWu ONNX model path or URL")
    build.add_argument("--fengwu-mean", help="global_means.npy (default: beside the model)")
    build.add_argument("--fengwu-std", help="global_stds.npy (default: beside the model)")
    build.add_argument("--cpc", help="CPC URL template ({year} for PSL files)")
    build.add_argument("--olr", help="NOAA daily OLR netCDF URL")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(func=_build)
    publish = sub.add_parser("publish", help="verify a built folder and upload it to the Hub")
    publish.add_argument("folder")
    publish.add_argument("--repo", required=True, help="e.g. dambench/era5-sample")
    publish.add_argument("--private", action="store_true")
    publish.set_defaults(func=_publish)
    info = sub.add_parser("info", help="print the benchmark schema")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dambench`` command."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
