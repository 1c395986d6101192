"""The ``dambench evaluate`` command: score your own model's analyses on a DAMBench split."""

from __future__ import annotations

import argparse
import sys
import warnings

from dambench import schema

DESCRIPTION = (
    "Score predictions (a Zarr store or netCDF file per seed, local or any fsspec URL) on a "
    "split of a DAMBench dataset: the paper's Table 3 with 95 % block-bootstrap intervals "
    "(and, for ensembles, fair CRPS and spread/skill), written as table3.md, a tidy "
    "scores.parquet, summary.json and figures. Predictions may be stacked (a 'channel' dim) or "
    "per-variable (u10, t2m, ..., z/q/u/v/t on a 'level' dim in hPa), in any latitude order and "
    "longitude convention; their times must be exactly the split's cycles."
)


def add_parser(subparsers, parents=()) -> argparse.ArgumentParser:
    """Register ``evaluate`` on the ``dambench`` command's subparsers (``parents``: shared
    options such as ``--debug``)."""
    parser = subparsers.add_parser(
        "evaluate",
        parents=list(parents),
        help="score your predictions on a split (Table 3)",
        description=DESCRIPTION,
    )
    parser.add_argument(
        "--predictions",
        nargs="+",
        required=True,
        metavar="PATH_OR_URL",
        help="one prediction store or file per seed",
    )
    parser.add_argument(
        "--dataset",
        default="era5-sample",
        help="era5-sample, a published name, a build folder or a URL",
    )
    parser.add_argument("--split", default="test", choices=list(schema.SPLITS))
    parser.add_argument("--revision", help="Hub branch, tag or commit of a published dataset")
    parser.add_argument(
        "--out",
        required=True,
        help="output folder, written as a whole (one evaluation at a time; earlier results are "
        "refused unless --overwrite)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace earlier results in --out as a whole"
    )
    parser.add_argument("--name", help="row name (default: the store's 'model' attr or file name)")
    parser.add_argument(
        "--seeds", nargs="+", type=int, help="seed label of each prediction (unique)"
    )
    parser.add_argument(
        "--members-dim",
        help="ensemble member dim (found when named member, ensemble, number or realization)",
    )
    parser.add_argument("--variable", help="the stacked variable when there are several")
    parser.add_argument(
        "--region",
        nargs="+",
        default=["global"],
        help="regions: global, tropics, extratropics_north, extratropics_south, "
        "arctic, antarctic, land, sea (with --land-sea-mask) or "
        "box:lat_min,lat_max,lon_min,lon_max",
    )
    parser.add_argument(
        "--land-sea-mask",
        metavar="PATH",
        help="netCDF file or Zarr store with a land fraction ('lsm', 'land_sea_mask', ...) on "
        "the grid, for the land and sea regions",
    )
    parser.add_argument("--by", choices=["month", "season"], help="also score per period")
    parser.add_argument(
        "--skipna",
        action="store_true",
        help="score the finite points only (default: a NaN is an error)",
    )
    parser.add_argument(
        "--no-background",
        action="store_true",
        help="do not score the dataset's background alongside",
    )
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--channel", default="t2m", help="channel shown in the figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``dambench evaluate``: print the tables on stdout, and on stderr the notes recorded
    in ``summary.json`` (``warnings``) with any other warning raised while scoring."""
    with warnings.catch_warnings(record=True) as caught:
        report = _evaluate(args)
    _print_summary(report, args.out)
    _print_warnings(report.summary["warnings"], caught)
    return 0


def _evaluate(args: argparse.Namespace):
    from dambench.scoring.api import evaluate_predictions

    return evaluate_predictions(
        args.predictions,
        args.dataset,
        split=args.split,
        revision=args.revision,
        out=args.out,
        overwrite=args.overwrite,
        name=args.name,
        seeds=args.seeds,
        members_dim=args.members_dim,
        variable=args.variable,
        regions=args.region,
        land_sea_mask=args.land_sea_mask,
        by=args.by,
        skipna=args.skipna,
        reference=not args.no_background,
        n_resamples=args.bootstrap,
        figure_channel=args.channel,
        verbose=not args.quiet,
    )


def _print_summary(report, out: str) -> None:
    """Table 3, the ensemble table and the comparisons on stdout."""
    summary = report.summary
    print(
        f"{summary['model']} on {summary['dataset']['name']} ({summary['split']}, "
        f"{summary['n_cycles']} cycles, channels {', '.join(summary['channels'])}); "
        "mean [95 % block-bootstrap interval]:"
    )
    print(report.table3)
    if report.ensemble_table:
        print("\nEnsemble (fair CRPS, spread/skill):")
        print(report.ensemble_table)
    for comparison in summary["comparisons"]:
        left_out = comparison.get("left_out", 0)
        on = f"; on the {comparison['n']} cycles defined in both" if left_out else ""
        print(
            f"\n{comparison['verdict']} (difference {comparison['difference']:.4g}, paired 95 % "
            f"interval [{comparison['ci_low']:.4g}, {comparison['ci_high']:.4g}]{on})"
        )
    written = ", ".join(sorted(report.tables))
    print(f"\nWrote {out}: {written}, scores.parquet, summary.json and figures.")


def _print_warnings(recorded: list[str], caught: list) -> None:
    """The notes recorded in ``summary.json`` (``warnings``), then any other warning raised
    while scoring, each once, one line each on stderr."""
    others = [str(w.message) for w in caught if str(w.message) not in recorded]
    for note in dict.fromkeys(recorded + others):
        print(f"dambench evaluate: warning: {note}", file=sys.stderr)


LEADERBOARD_DESCRIPTION = (
    "Put several evaluations (folders written by dambench evaluate --out) side by side against "
    "a reference method: a Markdown leaderboard with 95 % block-bootstrap intervals and the "
    "paired interval against the reference, and a WeatherBench2-style scorecard (RMSE relative "
    "to the reference per channel and region). Results must share the dataset digest, split and "
    "cycles; the comparison is made on the channels and regions all of them scored, with a note."
)


def add_leaderboard_parser(subparsers, parents=()) -> argparse.ArgumentParser:
    """Register ``leaderboard`` on the ``dambench`` command's subparsers."""
    parser = subparsers.add_parser(
        "leaderboard",
        parents=list(parents),
        help="compare evaluation results against a reference (leaderboard and scorecard)",
        description=LEADERBOARD_DESCRIPTION,
    )
    parser.add_argument("results", nargs="+", metavar="RESULT_DIR", help="evaluation folders")
    parser.add_argument(
        "--reference",
        default="background",
        help="reference method: a result's model name or a row they scored (default background)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier leaderboard")
    parser.add_argument(
        "--column", default="MSE(1e-2)", help="Table 3 column of the paired comparison"
    )
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.set_defaults(func=run_leaderboard)
    return parser


def run_leaderboard(args: argparse.Namespace) -> int:
    """Run ``dambench leaderboard``: print the table and notes, write the folder."""
    from dambench.scoring.leaderboard import (
        leaderboard,
        load_result,
        load_scores,
        observed_table,
        write_leaderboard,
    )

    results = [load_result(folder) for folder in args.results]
    board = leaderboard(
        results, reference=args.reference, column=args.column, n_resamples=args.bootstrap
    )
    frames = [f for f in (load_scores(folder) for folder in args.results) if f is not None]
    board.observed = observed_table(frames, board)
    print(board.markdown)
    if board.observed:
        print("\nAt observed and unobserved points:")
        print(board.observed.split("\n\n", 1)[-1])
    written = write_leaderboard(board, args.out, overwrite=args.overwrite)
    print(f"\nWrote {', '.join(str(p) for p in written)}.")
    return 0
