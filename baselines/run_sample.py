"""The baselines on the embedded era5-sample, end to end on a CPU in a few minutes.

    python baselines/run_sample.py [--out sample-results] [--models convcnp_small fnp_small]

Builds (first use) and loads era5-sample, trains each model with its ``*_small`` config for the
epochs given, evaluates Background, 3D-Var (fitted on the train split) and the trained models on
the test split, and writes the Table 3 leaderboard (Markdown), per-method results and figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from argparse import Namespace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from baselines import evaluate, train  # noqa: E402
from baselines.config import load_run_config  # noqa: E402

CONFIGS = Path(__file__).resolve().parent / "configs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="sample-results", help="output folder")
    parser.add_argument("--models", nargs="*", default=["convcnp_small"],
                        help="small configs to train (baselines/configs/NAME.yaml)")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    from dambench.load import ensure_embedded

    out = Path(args.out)
    folder = ensure_embedded()
    results = []
    for reference in ("background", "threedvar"):
        started = time.perf_counter()
        evaluate.run(_eval_args(folder, out / reference, model=reference))
        print(f"evaluated {reference} in {time.perf_counter() - started:.1f} s")
        results.append(out / reference / "results.json")
    for name in args.models:
        overrides = [f"task.dataset={folder}", f"train.out={out / 'runs' / name}"]
        if args.epochs:
            overrides.append(f"train.epochs={args.epochs}")
        cfg = load_run_config(CONFIGS / f"{name}.yaml", overrides)
        started = time.perf_counter()
        record = train.run(cfg, verbose=not args.quiet)
        print(f"trained {name} in {time.perf_counter() - started:.1f} s: {record}")
        checkpoint = out / "runs" / name / "checkpoints" / "best.pt"
        evaluate.run(_eval_args(folder, out / name, checkpoint=[str(checkpoint)], name=name))
        results.append(out / name / "results.json")
    table = evaluate.leaderboard([str(p) for p in results], str(out / "leaderboard.md"))
    print("\nTable 3 layout on era5-sample's test split (mean [95 % bootstrap interval]):")
    print(table)
    print(f"\nWrote {out / 'leaderboard.md'} and per-method results and figures in {out}/")
    return 0


def _eval_args(folder, out, *, model=None, checkpoint=None, name=None) -> Namespace:
    return Namespace(model=model, checkpoint=checkpoint, dataset=str(folder), split="test",
                     out=str(out), name=name or model, batch_size=1, bootstrap=1000,
                     channel="t2m")


if __name__ == "__main__":
    sys.exit(main())
