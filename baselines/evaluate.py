"""Score a baseline on a split in the paper's Table 3 layout, with bootstrap confidence intervals.

    python baselines/evaluate.py run --model background --dataset era5-sample --out results/bg
    python baselines/evaluate.py run --checkpoint runs/a/checkpoints/best.pt runs/b/... --out ...
    python baselines/evaluate.py leaderboard results/*/results.json --out leaderboard.md

Every Table 3 number (SpecDiv, MSE and MAE x1e-2 on normalised fields over all channels, RMSE in
physical units for z500, t850, t2m, u10, v10, u500, v500, q700 where present) is a mean over test
cycles of a per-cycle value, computed with ``dambench.metrics``; the 95 % interval resamples the
cycles (bootstrap). Several checkpoints (seeds) give mean +- std across seeds. The leaderboard
marks rows whose MSE is not distinguishable from the best row (paired bootstrap over the same
cycles: the 95 % interval of the difference contains 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import xarray as xr

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from baselines.interface import DABatch  # noqa: E402
from baselines.registry import create_model  # noqa: E402
from dambench import schema  # noqa: E402
from dambench.metrics import TABLE3_COLUMNS, evaluate, table3_row  # noqa: E402
from dambench.normalize import denormalize  # noqa: E402

CONFIDENCE = 0.95


def predict(
    model: torch.nn.Module, loader, template: xr.DataArray, stats: xr.Dataset, device: str = "cpu"
) -> xr.DataArray:
    """The model's analyses over a (non-shuffled) loader, denormalised, shaped like ``template``."""
    model.eval()
    means = []
    with torch.no_grad():
        for raw in loader:
            batch = DABatch.from_loader(raw).to(device)
            means.append(model(batch).mean.float().cpu().numpy())
    normalised = template.copy(data=np.concatenate(means).astype(template.dtype))
    normalised.attrs = {**template.attrs, "normalized": 1}
    return denormalize(normalised, stats)


def per_cycle_rows(
    analysis: xr.DataArray, target: xr.DataArray, stats: xr.Dataset
) -> dict[str, np.ndarray]:
    """Table 3 columns per cycle: ``{column: (n_cycles,) values}``."""
    result = evaluate(analysis, target, stats=stats, sample_dim=None)
    rows = [table3_row(result.isel({schema.TIME: i})) for i in range(result.sizes[schema.TIME])]
    columns = [c for c in TABLE3_COLUMNS if c in rows[0]]
    return {c: np.array([row[c] for row in rows]) for c in columns}


def bootstrap_ci(values: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the mean of ``values`` (resampling with replacement)."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, values.size, size=(n_resamples, values.size))
    means = values[index].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def summarise(per_seed: list[dict[str, np.ndarray]], n_resamples: int) -> dict:
    """Mean, std across seeds and bootstrap interval (over cycles, seeds averaged) per column."""
    out = {}
    for column in per_seed[0]:
        seed_means = np.array([rows[column].mean() for rows in per_seed])
        cycle_values = np.mean([rows[column] for rows in per_seed], axis=0)
        low, high = bootstrap_ci(cycle_values, n_resamples)
        out[column] = {
            "mean": float(seed_means.mean()),
            "std_over_seeds": float(seed_means.std(ddof=1)) if len(per_seed) > 1 else None,
            "ci95": [low, high],
            "per_cycle": cycle_values.tolist(),
        }
    return out


def reference_model(name: str, train_ds, stats):
    """``background`` or ``threedvar`` (fitted on the train split only)."""
    if name == "threedvar":
        from baselines.models.reference import ThreeDVar

        return ThreeDVar.fit(train_ds, stats)
    return create_model(name)


def checkpoint_model(path: str | Path, n_channels: int) -> torch.nn.Module:
    """Rebuild a trained model from a checkpoint written by ``baselines/train.py``."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model_cfg = state["config"]["model"]
    model = create_model(model_cfg["name"], **{"in_chans": n_channels, **model_cfg["kwargs"]})
    model.load_state_dict(state["model"])
    return model


def format_rows(rows: dict[str, dict], fmt: str = "markdown") -> str:
    """Markdown table: one row per method, ``mean ± std [low, high]`` per column."""
    columns = [c for c in TABLE3_COLUMNS if any(c in r for r in rows.values())]
    lines = ["| Method | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, row in rows.items():
        cells = []
        for c in columns:
            if c not in row:
                cells.append("-")
                continue
            cell = f"{row[c]['mean']:.4g}"
            if row[c].get("std_over_seeds") is not None:
                cell += f" ± {row[c]['std_over_seeds']:.2g}"
            low, high = row[c]["ci95"]
            cells.append(f"{cell} [{low:.4g}, {high:.4g}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(out: Path, name: str, summary: dict, meta: dict) -> None:
    """results.json, table.md and table.csv in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps({"name": name, **meta, "table3": summary}, indent=2)
    )
    (out / "table.md").write_text(format_rows({name: summary}) + "\n")
    lines = ["method,column,mean,std_over_seeds,ci_low,ci_high"]
    for column, entry in summary.items():
        std = "" if entry["std_over_seeds"] is None else f"{entry['std_over_seeds']:.6g}"
        lines.append(
            f"{name},{column},{entry['mean']:.6g},{std},{entry['ci95'][0]:.6g},"
            f"{entry['ci95'][1]:.6g}"
        )
    (out / "table.csv").write_text("\n".join(lines) + "\n")


def save_figures(out: Path, ds: xr.Dataset, analysis: xr.DataArray, channel: str) -> list[Path]:
    """Maps (target, background, analysis, errors) of the last cycle and error spectra."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dambench.plot import plot_maps

    cycle = {"time": -1}
    target = ds["target"].isel(cycle).sel(channel=channel)
    background = ds["background"].isel(cycle).sel(channel=channel)
    field = analysis.isel(cycle).sel(channel=channel)
    maps = plot_maps(
        {
            "target": target,
            "background": background,
            "analysis": field,
            "background - target": background - target,
            "analysis - target": field - target,
        },
        out / "maps.png",
        title=f"{channel}, last cycle",
        diverging=("background - target", "analysis - target"),
    )
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pred in (("background", ds["background"]), ("analysis", analysis)):
        k, power = radial_error_spectrum(
            pred.sel(channel=channel), ds["target"].sel(channel=channel)
        )
        ax.loglog(k, power, label=f"{label} - target")
    ax.set_xlabel("wavenumber (grid-index units)")
    ax.set_ylabel("error power")
    ax.set_title(f"{channel} error spectra (mean over cycles)")
    ax.legend()
    fig.tight_layout()
    spectra = out / "error_spectra.png"
    fig.savefig(spectra, dpi=110)
    plt.close(fig)
    return [maps, spectra]


def radial_error_spectrum(pred: xr.DataArray, truth: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """Mean 2-D FFT power of ``pred - truth`` in unit-width bins of the scalar wavenumber."""
    error = (pred - truth).transpose(..., *schema.SPATIAL_DIMS).values.astype(np.float64)
    power = (np.abs(np.fft.fft2(error)) ** 2).reshape(-1, *error.shape[-2:]).mean(axis=0)
    n_lat, n_lon = power.shape
    k = np.hypot(
        *np.meshgrid(np.fft.fftfreq(n_lat) * n_lat, np.fft.fftfreq(n_lon) * n_lon, indexing="ij")
    )
    bins = np.round(k).astype(int).ravel()
    sums = np.bincount(bins, weights=power.ravel())
    counts = np.bincount(bins)
    keep = (np.arange(sums.size) > 0) & (counts > 0)
    return np.arange(sums.size)[keep], sums[keep] / counts[keep]


def run(args: argparse.Namespace) -> dict:
    """Evaluate a reference model or one or more checkpoints; write the results."""
    from dambench.batching import make_dataloader
    from dambench.load import open_dataset, stats_from_attrs

    ds = open_dataset(args.dataset, split=args.split)  # lazy: the loader reads cycle by cycle
    stats = stats_from_attrs(ds)
    loader = make_dataloader(ds, batch_size=args.batch_size, train=False, stats=stats)
    if args.checkpoint:
        models = [checkpoint_model(p, ds.sizes["channel"]) for p in args.checkpoint]
        name = args.name or Path(args.checkpoint[0]).parent.parent.name
    else:
        train_ds = open_dataset(args.dataset, split="train")
        models = [reference_model(args.model, train_ds, stats)]
        name = args.name or args.model
    analyses = [predict(m, loader, ds["target"], stats) for m in models]
    per_seed = [per_cycle_rows(a, ds["target"], stats) for a in analyses]
    summary = summarise(per_seed, args.bootstrap)
    out = Path(args.out)
    meta = {
        "dataset": str(args.dataset),
        "split": args.split,
        "n_cycles": ds.sizes["time"],
        "n_seeds": len(models),
        "checkpoints": args.checkpoint or [],
    }
    write_results(out, name, summary, meta)
    channel = args.channel if args.channel in ds.channel.values else str(ds.channel.values[0])
    save_figures(out, ds, analyses[0], channel)
    return summary


def leaderboard(paths: list[str], out: str | None, n_resamples: int = 1000) -> str:
    """One table from several results.json files; flags rows not distinguishable from the best
    on MSE by a paired bootstrap over the shared cycles."""
    results = [json.loads(Path(p).read_text()) for p in paths]
    rows = {r["name"]: r["table3"] for r in results}
    text = format_rows(rows)
    column = "MSE(1e-2)"
    if all(column in r for r in rows.values()) and len(rows) > 1:
        best = min(rows, key=lambda n: rows[n][column]["mean"])
        notes = []
        for name, row in rows.items():
            if name == best:
                continue
            diff = np.array(row[column]["per_cycle"]) - np.array(rows[best][column]["per_cycle"])
            low, high = bootstrap_ci(diff, n_resamples)
            verdict = "not distinguishable from" if low <= 0 <= high else "worse than"
            notes.append(
                f"- {name}: {verdict} {best} on MSE (paired 95 % interval of the "
                f"difference [{low:.4g}, {high:.4g}])"
            )
        text += "\n\n" + "\n".join(notes)
    if out:
        Path(out).write_text(text + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="evaluate one method on a split")
    which = run_p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", choices=["background", "threedvar"])
    which.add_argument("--checkpoint", nargs="+", help="one checkpoint per seed")
    run_p.add_argument(
        "--dataset", default="era5-sample", help="name, built folder or URL (era5-sample)"
    )
    run_p.add_argument("--split", default="test", help="train, validation or test (test)")
    run_p.add_argument("--out", required=True, help="folder for tables, results.json, figures")
    run_p.add_argument("--name", help="row name (default: model or run folder)")
    run_p.add_argument("--batch-size", type=int, default=1)
    run_p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    run_p.add_argument("--channel", default="t2m", help="channel of the figures")
    board = sub.add_parser("leaderboard", help="collect results.json files into one table")
    board.add_argument("results", nargs="+", help="results.json files of evaluate.py run")
    board.add_argument("--out", help="write the table to this Markdown file too")
    args = parser.parse_args(argv)
    if args.command == "run":
        summary = run(args)
        print(format_rows({args.name or args.model or "model": summary}))
    else:
        print(leaderboard(args.results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
