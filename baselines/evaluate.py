"""Score a baseline on a split through the package's scorer (``dambench evaluate``).

    python -m baselines.evaluate run --model background --dataset era5-sample --out results/bg
    python -m baselines.evaluate run --model threedvar --out results/threedvar
    python -m baselines.evaluate run --checkpoint runs/a/checkpoints/best.pt runs/b/... --out ...
    python -m baselines.evaluate run --checkpoint runs/sda/checkpoints/best.pt --members 8 ...
    python -m baselines.evaluate leaderboard results/*/results.json --out leaderboard.md

``run`` builds the model from the registry (fitting it on the train split when its
``ModelInfo.needs_fit``) or from checkpoints (one per seed), streams its analyses cycle by cycle
into a prediction store (``OUT/predictions/seed<k>.zarr``, with a ``member`` dim for ensembles)
and scores the stores with :func:`dambench.evaluate_predictions`: Table 3 (the ensemble mean
for sampling models), fair CRPS and spread/skill for ensembles, block-bootstrap intervals, a tidy
``scores.parquet``, ``summary.json`` and figures. ``results.json`` adds the model's provenance
and its analysis cost. Nothing here names a model: dispatch is on ``ModelInfo``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from baselines.interface import DABatch
from baselines.registry import create_model, model_info
from dambench import schema
from dambench.exceptions import DambenchInputError

DEFAULT_MEMBERS = 8
"""Members drawn from an ensemble model when ``--members`` is not given (the paper's 8)."""


def build_models(args: argparse.Namespace, ds: xr.Dataset, stats: xr.Dataset) -> list:
    """One model per seed: from checkpoints, or the registered ``--model`` (fitted when needed)."""
    from dambench.load import open_dataset

    channels = [str(c) for c in ds[schema.CHANNEL].values]
    if args.checkpoint:
        from baselines.checkpoint import model_from_checkpoint

        return [model_from_checkpoint(path, channels=channels) for path in args.checkpoint]
    info = model_info(args.model)
    if info.trainable:
        raise DambenchInputError(
            f"{args.model} is trainable: evaluate a checkpoint of it (--checkpoint), written by "
            f"`python -m baselines.train --config baselines/configs/{args.model}.yaml`."
        )
    model = create_model(args.model, in_chans=len(channels))
    if info.needs_fit:
        model.fit(open_dataset(args.dataset, split="train"), stats)
    return [model]


def _members(model, requested: int | None) -> int | None:
    if model.info.output == "ensemble":
        return requested or DEFAULT_MEMBERS
    if requested is not None and model.info.output != "gaussian":
        raise DambenchInputError(
            f"{model.model_name} is {model.info.output}: it has no members to draw; leave out "
            "--members."
        )
    return requested


def _cycle_seed(sample_seed: int, cycle: int) -> int:
    """Seed of one cycle's members: a function of (sample_seed, cycle index) only."""
    return int(np.random.SeedSequence([sample_seed, cycle]).generate_state(1)[0])


def _denormalise(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(..., C, H, W) normalised -> physical units."""
    return values * std[:, None, None] + mean[:, None, None]


def predict_to_store(model, ds, stats, path: Path, *, members, sample_seed, batch_size, attrs):
    """Stream ``model``'s analyses of every cycle of ``ds`` to a prediction store.

    The model's ``analyse`` owns its grad mode (nothing here wraps it in ``no_grad``); each
    batch's members are drawn from a seed of ``(sample_seed, first cycle index)``.
    Returns the wall seconds per cycle.
    """
    from dambench.batching import make_dataloader
    from dambench.scoring import PredictionWriter

    channels = [str(c) for c in ds[schema.CHANNEL].values]
    mean = stats["mean"].sel({schema.CHANNEL: channels}).values.astype(np.float64)
    std = stats["std"].sel({schema.CHANNEL: channels}).values.astype(np.float64)
    times = ds[schema.TIME].values
    writer = PredictionWriter(
        path,
        times=times,
        channels=channels,
        latitude=ds[schema.LATITUDE].values,
        longitude=ds[schema.LONGITUDE].values,
        members=members,
        attrs=attrs,
        overwrite=True,
    )
    info = getattr(model, "info", None)
    loader = make_dataloader(ds, batch_size=batch_size, train=False, stats=stats, model_info=info)
    model.eval()
    started, cycle = time.perf_counter(), 0
    for raw in loader:
        batch = DABatch.from_loader(raw)
        analysis = model.analyse(batch, members=members, seed=_cycle_seed(sample_seed, cycle))
        values = analysis.members if members else analysis.mean  # (B, [N,] C, H, W)
        values = _denormalise(values.detach().double().cpu().numpy(), mean, std)
        for row in values:
            writer.write(times[cycle], row)
            cycle += 1
    return (time.perf_counter() - started) / max(cycle, 1)


def _provenance(model, args, checkpoint: str | None) -> dict:
    meta = {"model_name": model.model_name, "model_info": model.info.to_dict()}
    if checkpoint:
        from baselines.checkpoint import checkpoint_metadata

        meta["checkpoint"] = checkpoint_metadata(checkpoint)
        meta["checkpoint"].pop("config", None)
    if hasattr(model, "sampling_cost"):
        meta["sampling"] = model.sampling_cost()
    return meta


def run(args: argparse.Namespace) -> dict:
    """Evaluate a reference model or one checkpoint per seed; write results and figures."""
    from dambench.load import open_dataset, stats_from_attrs
    from dambench.scoring import evaluate_predictions

    torch.manual_seed(args.sample_seed)
    ds = open_dataset(args.dataset, split=args.split)
    stats = stats_from_attrs(ds)
    models = build_models(args, ds, stats)
    name = args.name or args.model or Path(args.checkpoint[0]).parent.parent.name
    out = Path(args.out)
    stores, seeds, provenance, seconds = [], [], [], []
    for k, model in enumerate(models):
        checkpoint = args.checkpoint[k] if args.checkpoint else None
        meta = _provenance(model, args, checkpoint)
        seed = meta.get("checkpoint", {}).get("seed", k)
        members = _members(model, args.members)
        store = out / "predictions" / f"seed{seed}.zarr"
        attrs = {"model": name, "seed": seed, "members": members or 0, **meta}
        seconds.append(
            predict_to_store(
                model,
                ds,
                stats,
                store,
                members=members,
                attrs=attrs,
                sample_seed=args.sample_seed,
                batch_size=args.batch_size,
            )
        )
        stores.append(store)
        seeds.append(seed)
        provenance.append(meta)
    report = evaluate_predictions(
        stores,
        args.dataset,
        split=args.split,
        out=out,
        name=name,
        seeds=seeds,
        regions=args.region,
        by=args.by,
        n_resamples=args.bootstrap,
        figure_channel=args.channel,
    )
    results = {
        **report.summary,
        "models": provenance,
        "sample_seed": args.sample_seed,
        "analysis_seconds_per_cycle": float(np.mean(seconds)),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def leaderboard(paths: list[str], out: str | None = None) -> str:
    """One Table 3 from several ``results.json`` files (each method once), with paired
    block-bootstrap comparisons of every row against the best on MSE. Results scored on
    different dataset digests, splits or cycles are refused."""
    from dambench.scoring import compare
    from dambench.scoring.report import TABLE3

    results = [json.loads(Path(p).read_text()) for p in paths]
    rows: dict[str, dict] = {}
    for result in results:
        for method, row in result["table3"].items():
            rows.setdefault(method, row)
    text = _format_rows(rows, [title for title, *_ in TABLE3])
    scored = [r for r in results if "MSE(1e-2)" in r["table3"][r["model"]]]
    if len(scored) > 1:
        best = min(scored, key=lambda r: r["table3"][r["model"]]["MSE(1e-2)"]["value"])
        notes = [
            compare(r, best)["verdict"] + _interval_text(compare(r, best))
            for r in scored
            if r is not best
        ]
        text += "\n\n" + "\n".join(f"- {note}" for note in notes)
    if out:
        Path(out).write_text(text + "\n")
    return text


def _interval_text(comparison: dict) -> str:
    return (
        f" (difference {comparison['difference']:.4g}, paired 95 % interval "
        f"[{comparison['ci_low']:.4g}, {comparison['ci_high']:.4g}])"
    )


def _format_rows(rows: dict[str, dict], columns: list[str]) -> str:
    columns = [c for c in columns if any(c in r for r in rows.values())]
    lines = ["| Method | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for method, row in rows.items():
        cells = []
        for column in columns:
            entry = row.get(column)
            if entry is None:
                cells.append("-")
                continue
            text = f"{entry['value']:.4g}"
            if entry.get("std_over_seeds") is not None:
                text += f" ± {entry['std_over_seeds']:.2g}"
            cells.append(f"{text} [{entry['ci'][0]:.4g}, {entry['ci'][1]:.4g}]")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="evaluate one method on a split")
    which = run_p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--model",
        help="a registered model that is not trained (background, "
        "threedvar): see baselines.registry.list_models()",
    )
    which.add_argument("--checkpoint", nargs="+", help="one checkpoint per seed")
    run_p.add_argument("--dataset", default="era5-sample", help="name, build folder or URL")
    run_p.add_argument("--split", default="test", choices=list(schema.SPLITS))
    run_p.add_argument("--out", required=True, help="folder for tables, results, figures")
    run_p.add_argument("--name", help="row name (default: model or run folder)")
    run_p.add_argument(
        "--members",
        type=int,
        help=f"ensemble size (ensemble models: "
        f"{DEFAULT_MEMBERS}; gaussian models: draws from the predictive)",
    )
    run_p.add_argument("--sample-seed", type=int, default=0, help="seed of the members' draws")
    run_p.add_argument("--batch-size", type=int, default=1)
    run_p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    run_p.add_argument("--channel", default="t2m", help="channel of the figures")
    run_p.add_argument("--region", nargs="+", default=["global"], help="regions to score")
    run_p.add_argument("--by", choices=["month", "season"], help="also score per period")
    board = sub.add_parser("leaderboard", help="collect results.json files into one table")
    board.add_argument("results", nargs="+", help="results.json files of evaluate.py run")
    board.add_argument("--out", help="write the table to this Markdown file too")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        results = run(args)
        print(_format_rows(results["table3"], list(next(iter(results["table3"].values())))))
    else:
        print(leaderboard(args.results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
