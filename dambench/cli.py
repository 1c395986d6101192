"""The ``dambench`` command line: ``quickstart``, ``evaluate``, ``leaderboard``, ``build``,
``verify``, ``publish``, ``info``.

Each subcommand is added by one ``add_*(subparsers)`` function (:data:`SUBCOMMANDS`), so another
module adds its own with ``add_parser(subparsers)`` (pass ``parents=[common_options()]`` to
accept ``--debug`` after the subcommand too). :func:`main` handles errors for all of them alike:
a dambench error prints one line (``dambench COMMAND: error: ...``) and exits with status 1; the
traceback is shown only with ``--debug``/``-v``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dambench import __version__, schema
from dambench.exceptions import DambenchError, DambenchInputError


def common_options() -> argparse.ArgumentParser:
    """A parent parser with ``-v``/``--debug`` for subcommands (its default does not override
    the same option given before the subcommand)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-v",
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and debug logging",
    )
    return parent


def _quickstart(args: argparse.Namespace) -> int:
    from dambench.quickstart import run_quickstart

    run_quickstart(out=args.out, split=args.split, channel=args.channel)
    return 0


def add_quickstart(sub) -> None:
    quick = sub.add_parser(
        "quickstart",
        parents=[common_options()],
        help="build and score the embedded era5-sample dataset and save a figure",
        description="Build (first use only, into the user cache) and load era5-sample, the "
        "embedded ERA5 default; print the paper's Table 3 layout for the background and for the "
        "background with observed points inserted; save maps.",
    )
    quick.add_argument("--out", default="dambench-quickstart", help="output folder")
    quick.add_argument("--split", default="test", choices=list(schema.SPLITS))
    quick.add_argument(
        "--channel",
        default="t2m",
        choices=schema.SURFACE_VARIABLES,
        help="channel shown in the figure",
    )
    quick.set_defaults(func=_quickstart)


_INPUT_FLAGS = ("era5", "cpc", "olr")


def _build(args: argparse.Namespace) -> int:
    from dambench.assembly import build, load_config
    from dambench.assembly.builder import is_finished
    from dambench.assembly.config import RECIPE_BACKGROUND, RECIPE_INPUTS

    config = load_config(args.name)
    inputs = {k: getattr(args, k) for k in _INPUT_FLAGS if getattr(args, k)}
    unused = [f"--{k}" for k in inputs if k not in RECIPE_INPUTS[config.recipe]]
    if args.fengwu and RECIPE_BACKGROUND[config.recipe] != "onnx":
        unused.append("--fengwu")
    if (args.fengwu_mean or args.fengwu_std) and not args.fengwu:
        raise DambenchInputError("--fengwu-mean and --fengwu-std go with --fengwu MODEL.")
    if unused:
        raise DambenchInputError(
            f"{', '.join(unused)} not used by recipe {config.recipe} (config {args.name}); "
            "remove them."
        )
    overrides = {}
    if inputs:
        overrides["inputs"] = {**config.inputs, **inputs}
    if args.fengwu:
        overrides["background"] = _fengwu_background(config.background, args)
    finished = is_finished(args.out)
    folder = build(
        args.name,
        args.out,
        workers=args.workers,
        scheduler=args.scheduler,
        verbose=not args.quiet,
        overrides=overrides,
    )
    if finished:
        print(f"Verified {folder}: already built, every file matches its manifest.json.")
    else:
        print(f"Built {folder}")
    return 0


def _fengwu_background(background: dict, args: argparse.Namespace) -> dict:
    """The background of a build with ``--fengwu MODEL``: the model as given (a path or any
    URL, kept verbatim), the statistics from ``--fengwu-mean``/``--fengwu-std`` or beside it."""
    model = str(args.fengwu)
    return {
        **background,
        "model": model,
        "mean": args.fengwu_mean or beside(model, "global_means.npy"),
        "std": args.fengwu_std or beside(model, "global_stds.npy"),
    }


def beside(path_or_url: str, name: str) -> str:
    """The file ``name`` in the folder of ``path_or_url``; a URL stays a URL (``Path`` would
    fold its ``//``)."""
    if "://" in path_or_url:
        return path_or_url.rstrip("/").rsplit("/", 1)[0] + "/" + name
    return str(Path(path_or_url).with_name(name))


def add_build(sub) -> None:
    build = sub.add_parser(
        "build",
        parents=[common_options()],
        help="build a dataset folder (Zarr + Parquet + card), resumable",
        description="Build NAME (a shipped config or a JSON config file) into OUT: one folder that "
        "is a Hugging Face dataset repository. Re-running resumes an interrupted build; a finished "
        "build is verified against its manifest. One build per folder at a time.",
    )
    build.add_argument("name", help="era5-sample, era5-fengwu or a JSON config path")
    build.add_argument("--out", required=True, help="output folder")
    build.add_argument("--workers", type=int, default=1, help="threads computing shards")
    build.add_argument("--scheduler", help="dask.distributed scheduler address")
    build.add_argument("--era5", help="ERA5 zarr URL (WeatherBench2 layout; era5-fengwu)")
    build.add_argument("--fengwu", help="FengWu ONNX model path or URL (era5-fengwu)")
    build.add_argument("--fengwu-mean", help="global_means.npy (default: beside the model)")
    build.add_argument("--fengwu-std", help="global_stds.npy (default: beside the model)")
    build.add_argument("--cpc", help="CPC URL template ({year} for PSL files; era5-fengwu)")
    build.add_argument("--olr", help="NOAA daily OLR netCDF URL (era5-fengwu)")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(func=_build)


def _verify(args: argparse.Namespace) -> int:
    from dambench.load import dataset_root, guard_hub
    from dambench.verify import verify

    root = dataset_root(args.location, args.revision)
    guard_hub(root)
    report = verify(root, hashes=not args.quick, strict=False)
    for label, names in (
        ("missing", report.missing),
        ("changed", report.changed),
        ("extra", report.extra),
        ("leftover", report.leftovers),
    ):
        for name in names:
            print(f"{label}: {name}")
    print(report.summary())
    return 0 if report.ok else 1


def add_verify(sub) -> None:
    verify = sub.add_parser(
        "verify",
        parents=[common_options()],
        help="check a built folder or URL against its manifest.json",
        description="Recompute the sha256 of every file of a built dataset folder (local, or an "
        "fsspec URL such as hf://datasets/ORG/NAME@REVISION) and compare with its manifest.json; "
        "list the files that are missing, changed or not in the manifest. Exit status 1 when "
        "anything differs.",
    )
    verify.add_argument("location", help="build folder, URL or dataset name")
    verify.add_argument("--revision", help="Hub branch, tag or commit of a published dataset")
    verify.add_argument("--quick", action="store_true", help="compare file sizes only")
    verify.set_defaults(func=_verify)


def _publish(args: argparse.Namespace) -> int:
    from dambench.assembly.publish import publish

    url = publish(args.folder, args.repo, private=args.private)
    print(f"Published {args.folder} to {url}")
    return 0


def add_publish(sub) -> None:
    publish = sub.add_parser(
        "publish",
        parents=[common_options()],
        help="verify a built folder and upload it to the Hub",
    )
    publish.add_argument("folder")
    publish.add_argument("--repo", required=True, help="e.g. dambench/era5-sample")
    publish.add_argument("--private", action="store_true")
    publish.set_defaults(func=_publish)


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


def add_info(sub) -> None:
    info = sub.add_parser("info", parents=[common_options()], help="print the benchmark schema")
    info.set_defaults(func=_info)


def add_evaluate(sub) -> None:
    """``dambench evaluate``: score your predictions (:mod:`dambench.scoring.cli`)."""
    from dambench.scoring.cli import add_parser

    add_parser(sub, parents=[common_options()])


def add_leaderboard(sub) -> None:
    """``dambench leaderboard``: results side by side (:mod:`dambench.scoring.leaderboard`)."""
    from dambench.scoring.cli import add_leaderboard_parser

    add_leaderboard_parser(sub, parents=[common_options()])


SUBCOMMANDS = [
    add_quickstart,
    add_evaluate,
    add_leaderboard,
    add_build,
    add_verify,
    add_publish,
    add_info,
]
"""The functions adding each subcommand, in ``--help`` order."""


def build_parser() -> argparse.ArgumentParser:
    """The ``dambench`` parser: global options, then one subparser per :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="dambench",
        description="DAMBench: a benchmark for deep-learning data assimilation.",
    )
    parser.add_argument("--version", action="version", version=f"dambench {__version__}")
    parser.add_argument(
        "-v", "--debug", action="store_true", help="show tracebacks and debug logging"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


DEPENDENCY_LOGGERS = ("gcsfs", "aiohttp", "asyncio", "fsspec", "s3fs", "urllib3", "google")
"""Loggers of the remote-read libraries: their retries and unclosed-session messages repeat
what the one error line says, so they are shown with ``--debug`` only."""


def quiet_dependencies(debug: bool) -> None:
    """Below ``--debug``, only CRITICAL records of :data:`DEPENDENCY_LOGGERS` are shown."""
    for name in DEPENDENCY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dambench`` command; returns the exit status.

    A :class:`~dambench.exceptions.DambenchError` from any subcommand prints one line on stderr
    and returns 1 (``--debug``: the traceback instead); Ctrl-C returns 130.
    """
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    quiet_dependencies(debug)
    try:
        return int(args.func(args) or 0)
    except DambenchError as err:
        if debug:
            raise
        message = " ".join(str(err).split())
        print(
            f"dambench {args.command}: error: {message} (--debug shows the traceback)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"dambench {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
