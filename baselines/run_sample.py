"""The baselines on the embedded era5-sample, end to end on a CPU in a few minutes.

    python baselines/run_sample.py [--out sample-results] [--models convcnp_small fnp_small]
                                   [--seeds 0 1 2]

Builds (first use) and loads era5-sample, scores the registered models that need no training
(Background, and 3D-Var fitted on the train split), trains each model of ``--models`` with its
config (``baselines/configs/NAME.yaml``) once per ``--seeds`` seed (``best.pt`` chosen by the
validation metric), scores the seeds together on the test split (mean ± std over seeds) through the package's
scorer (``dambench evaluate``: block-bootstrap intervals, ensembles scored on their mean with
CRPS and spread/skill), and writes the leaderboard (Markdown: Table 3, the ensemble table, and
Table 4 when a ``multi_X`` config follows ``X``, fine-tuned from the ``X`` trained in the same
run), per-method results (``results.json``, ``scores.parquet``) and figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from argparse import Namespace
from pathlib import Path

import yaml

from baselines import evaluate, train
from baselines.config import load_run_config
from baselines.registry import list_models, model_info

CONFIGS = Path(__file__).resolve().parent / "configs"


def _eval_args(folder, out, *, model=None, checkpoint=None, name=None) -> Namespace:
    return Namespace(
        model=model,
        checkpoint=checkpoint,
        dataset=str(folder),
        split="test",
        out=str(out),
        name=name or model,
        members=None,
        sample_seed=0,
        batch_size=1,
        bootstrap=2000,
        channel="t2m",
        region=["global"],
        by=None,
        modalities=None,
        overwrite=True,
    )


def _references() -> list[str]:
    """Registered full-size models that are not trained (Background, 3D-Var)."""
    names = list_models(exclude=["*_tiny", "*_small", "*_full"])
    return [name for name in names if not model_info(name).trainable]


def _train(name: str, folder: Path, out: Path, seed: int, epochs: int | None, quiet: bool) -> Path:
    """Train one seed of config ``name`` into ``OUT/runs/NAME/seed<k>``; a ``multi_X`` config
    fine-tunes the ``X`` seed trained earlier in this run. Returns its ``best.pt``."""
    run = out / "runs" / name / f"seed{seed}"
    overrides = [f"task.dataset={folder}", f"train.out={run}", f"train.seed={seed}"]
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    if config["model"].get("init_from"):  # fine-tune the host trained earlier in this run
        host = out / "runs" / Path(config["model"]["init_from"]).parts[1] / f"seed{seed}"
        overrides.append(f"model.init_from={host / 'checkpoints' / 'best.pt'}")
    if epochs:
        overrides.append(f"train.epochs={epochs}")
    cfg = load_run_config(CONFIGS / f"{name}.yaml", overrides)
    started = time.perf_counter()
    record = train.run(cfg, verbose=not quiet)
    print(
        f"trained {name} seed {seed} in {time.perf_counter() - started:.1f} s: best.pt is epoch "
        f"{record['best_epoch']} ({record['selected_by']} {record['best']:.4g})"
    )
    return run / "checkpoints" / "best.pt"


def _train_and_score(name: str, folder: Path, out: Path, args: argparse.Namespace) -> Path:
    """Train every seed of ``name`` and score them together (mean ± std over seeds)."""
    checkpoints = [str(_train(name, folder, out, s, args.epochs, args.quiet)) for s in args.seeds]
    started = time.perf_counter()
    evaluate.run(_eval_args(folder, out / name, checkpoint=checkpoints, name=name))
    print(f"evaluated {name} in {time.perf_counter() - started:.1f} s")
    return out / name / "results.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="sample-results", help="output folder")
    parser.add_argument(
        "--models",
        nargs="*",
        default=["convcnp_small"],
        help="configs to train (baselines/configs/NAME.yaml)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="training seeds of every model (rows are the mean ± std over seeds; the paper "
        "averages 5 runs)",
    )
    parser.add_argument(
        "--no-references",
        action="store_true",
        help="skip Background and 3D-Var (e.g. when another run in the same folder scores them)",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    from dambench.load import ensure_embedded

    out = Path(args.out)
    folder = ensure_embedded()
    results = []
    for reference in [] if args.no_references else _references():
        started = time.perf_counter()
        evaluate.run(_eval_args(folder, out / reference, model=reference))
        print(f"evaluated {reference} in {time.perf_counter() - started:.1f} s")
        results.append(out / reference / "results.json")
    for name in args.models:
        results.append(_train_and_score(name, folder, out, args))
    table = evaluate.leaderboard([str(p) for p in results], str(out / "leaderboard.md"))
    print("\nTable 3 layout on era5-sample's test split (mean [95 % block-bootstrap interval]):")
    print(table)
    print(f"\nWrote {out / 'leaderboard.md'} and per-method results and figures in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
