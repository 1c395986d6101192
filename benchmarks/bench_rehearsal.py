"""Production rehearsal of era5-fengwu: stand-ins of its remote inputs served over HTTP with
injected faults; built at 69 channels, verified, loaded, read by the loader and scored.

What is run
-----------
1. Stand-ins (:mod:`dambench.standins`; every file labelled ``standin``, never data, never skill)
   of every input the N cycles read, written into ``--work`` and reused when present: ARCO-ERA5
   (Zarr v3, ARCO names, 721 x 1440, 13 levels, one time per chunk, only the times the cycles
   read: each cycle and its forecast's two initial states), CPC PSL ``precip.{year}.nc`` (whole
   years, 0.5 deg), NOAA ``olr.day.mean.nc`` (the whole record from 1974-06-01, 2.5 deg), FengWu's
   ``fengwu_v1.onnx`` (input ``(1, 138, 721, 1440)``; a fixed smoothing step) and mean/std.
2. :class:`dambench.standins.server.FaultyHTTPServer` serving them from a child process,
   ``--fault-rate`` (default 0.05) of requests failing transiently (503, 500, reset, slow).
3. The build, in a child process: :func:`dambench.assembly.build` of the shipped ``era5-fengwu``
   config with its inputs and FengWu files pointed at the server (what ``--era5``, ``--cpc``,
   ``--olr``, ``--fengwu`` replace) and its splits at the N cycles (half train, a quarter
   validation, the rest test), ``--workers`` threads or ``--scheduler``. Seconds by stage are
   measured from outside the package by wrapping its functions (``benchmarks/_stages.py``:
   exclusive wall time, summed over threads, i.e. worker-seconds); with ``--scheduler`` the
   stages run in the scheduler's workers and are not measured (the output says so).
   ``--cycles-per-shard`` overrides the config's block size (printed with the figures).
4. ``dambench verify OUT``; ``dambench.open_dataset(OUT)`` and one cycle read.
5. ``benchmarks/bench_loader.py --folder OUT``: ``make_dataloader`` samples/s at 69 channels
   against raw zarr reads of the same cycles.
6. ``dambench evaluate`` of 69-channel predictions for every cycle, one run per split: the
   background plus Gaussian noise (a labelled stand-in, not a model), with each run's peak RSS.
7. A projection of the full 9,131-cycle build.

Peak RSS is each child process's ``ru_maxrss`` (from ``wait4`` in a small intermediate process,
so that this process's own RSS, inherited across fork, is not counted). With ``--workers``
threads the build process is the one worker; with ``--scheduler`` its worker processes are not
children of this one and are not measured.

Last line: ``seconds_per_cycle=.. read_mb_per_cycle=.. written_mb_per_cycle=.. requests=..
faults=.. fault_fraction=.. build_peak_rss_mb=.. projection_worker_hours=..``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dambench-bench-hf-"))

import numpy as np  # noqa: E402

from dambench.standins import arco  # noqa: E402
from dambench.standins.rehearsal import (  # noqa: E402
    RehearsalInputs,
    build_overrides,
    rehearsal_cycles,
    write_rehearsal_inputs,
)

HERE = Path(__file__).resolve().parent
FULL_CYCLES = 9131
"""Daily cycles of the full era5-fengwu build (2000-01-01 .. 2024-12-31)."""
FENGWU_A100_S_PER_STEP = 0.6
FENGWU_COST_SOURCE = (
    "Chen et al. 2023, FengWu, arXiv:2304.02948, abstract: 'the inference cost of each iteration "
    "is merely 600ms on NVIDIA Tesla A100' (the paper's 37-level model; the released ONNX has 13)"
)
STAGES = ("read", "regrid", "forecaster", "observe", "modalities", "write", "other")
PREDICTION_NOISE = 0.05
"""Noise of the stand-in predictions, in units of each channel's target std."""


# --- child processes ------------------------------------------------------------------------


def serve(root: str, fault_rate: float, seed: int, conn) -> None:
    """Child process: serve ``root``; answer ``"stats"`` with the counts, stop on ``"stop"``."""
    from dambench.standins.server import FaultyHTTPServer

    with FaultyHTTPServer(root, fault_rate=fault_rate, seed=seed) as server:
        conn.send(server.url)
        while conn.recv() != "stop":
            conn.send(dict(server.stats))
        conn.send(dict(server.stats))


def child_build(spec_path: str) -> None:
    """Child process: build as ``spec`` says, with the stage clock; write the result JSON."""
    from _stages import MemoryProbe, StageClock

    spec = json.loads(Path(spec_path).read_text())
    os.environ["DAMBENCH_CACHE"] = tempfile.mkdtemp(prefix="dambench-rehearsal-cache-")
    clock = StageClock()
    clock.install()
    memory = MemoryProbe()
    memory.install()
    from dambench.assembly import build

    start = time.perf_counter()
    build(
        "era5-fengwu",
        spec["out"],
        workers=spec["workers"],
        scheduler=spec["scheduler"],
        verbose=False,
        overrides=spec["overrides"],
    )
    result = {
        "build_s": time.perf_counter() - start,
        "seconds": dict(clock.seconds),
        "calls": dict(clock.calls),
        "missing_hooks": clock.missing,
        "memory": memory.finish(),
    }
    Path(spec["result"]).write_text(json.dumps(result))


# Linux keeps a process's peak RSS across fork and exec: a child forked from this process (which
# may hold gigabytes of stand-ins) would report at least this process's RSS. A small Python that
# starts the command and reads its wait4 usage measures the command alone.
_MEASURER = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run_measured(command: list[str], **kwargs) -> tuple[int, float, float, str]:
    """Run ``command``; return its exit status, wall seconds, peak RSS (MB, ``ru_maxrss`` of the
    command's process, measured by a small intermediate process so that this one's RSS does not
    count) and its output (stdout and stderr)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch, tempfile.TemporaryFile(mode="w+") as log:
        rss_file = Path(scratch) / "maxrss_kib"
        measured = [sys.executable, "-c", _MEASURER, str(rss_file), *command]
        status = subprocess.run(measured, stdout=log, stderr=subprocess.STDOUT, **kwargs).returncode
        log.seek(0)
        output = log.read()
        rss_kib = float(rss_file.read_text()) if rss_file.exists() else float("nan")
    return status, time.perf_counter() - start, rss_kib / 1024, output


SCHEDULER_STAGES_NOTE = (
    "seconds per cycle by stage: NOT MEASURED with --scheduler (the stages run in the "
    "scheduler's worker processes, which this benchmark does not instrument; only the build's "
    "wall time above is measured); run with --workers for the stage figures"
)
BUILD_PROCESS = {False: "one worker", True: "the client only; the workers are not measured"}
SCHEDULER_PROJECTION_NOTE = (
    "projection, full build: not computed with --scheduler (it needs the stage figures)"
)

# --- steps ----------------------------------------------------------------------------------


def make_inputs(args) -> RehearsalInputs:
    """Write (or reuse) the stand-ins; prints what they are and how long they took."""
    start = time.perf_counter()
    inputs = write_rehearsal_inputs(
        Path(args.work) / "served",
        rehearsal_cycles(args.cycles),
        grid_deg=args.analysis_grid_deg,
        model_grid_deg=args.model_grid_deg,
        store_name=args.arco_name,
    )
    size = sum(p.stat().st_size for p in (Path(args.work) / "served").rglob("*") if p.is_file())
    print(
        f"stand-ins (labelled, never data) under {args.work}/served: {size / 1e9:.2f} GB on disk "
        f"(all runs so far), ready in {time.perf_counter() - start:.0f} s; ERA5 stand-in "
        f"{inputs.era5} ({len(arco.fengwu_times(inputs.cycles))} times, "
        f"{args.analysis_grid_deg:g} deg)"
    )
    return inputs


def run_build(args, inputs: RehearsalInputs, url: str, out: Path) -> dict:
    """The build in a child process; its result with ``peak_rss_mb`` and ``status``."""
    from dambench.assembly import load_config

    shipped = load_config("era5-fengwu").to_dict()
    overrides = build_overrides(
        shipped, inputs, url, allow_coarse=args.analysis_grid_deg > inputs.grid_deg
    )
    if args.cycles_per_shard is not None:
        overrides["cycles_per_shard"] = args.cycles_per_shard
    spec = {
        "out": str(out),
        "workers": args.workers,
        "scheduler": args.scheduler,
        "overrides": overrides,
        "result": str(out.parent / f"{out.name}.result.json"),
    }
    spec_path = out.parent / f"{out.name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, str(HERE / "bench_rehearsal.py"), "--child-build", str(spec_path)]
    status, wall, rss_mb, output = run_measured(command, cwd=HERE)
    if status != 0:
        print(output[-4000:])
        raise SystemExit(f"build failed (exit status {status}); its output is above")
    result = json.loads(Path(spec["result"]).read_text())
    per_shard = overrides.get("cycles_per_shard", shipped["cycles_per_shard"])
    # the probe resets the kernel's peak at each phase, so ru_maxrss is the last phase's only
    peak = max(rss_mb, *result["memory"]["peaks_mb"].values())
    return {**result, "peak_rss_mb": peak, "wall_s": wall, "cycles_per_shard": per_shard}


def verify_and_load(out: Path) -> str:
    """``dambench verify`` and one cycle read through ``open_dataset``; a line saying so."""
    status, wall, _, output = run_measured(
        [sys.executable, "-m", "dambench.cli", "verify", str(out)]
    )
    if status != 0:
        raise SystemExit(f"dambench verify {out} failed:\n{output[-3000:]}")
    from dambench.load import open_dataset

    ds = open_dataset(out)
    first = ds.isel(time=0)[["target", "background"]].load()
    finite = bool(np.isfinite(first["target"].values).all())
    if ds.sizes["channel"] != 69 or not finite:
        raise SystemExit(f"{out}: {ds.sizes['channel']} channels, finite target: {finite}")
    verdict = output.strip().splitlines()[-1]
    return f"verify: {verdict} ({wall:.1f} s); loaded: {dict(ds.sizes)}, first cycle finite"


def run_loader(out: Path) -> tuple[str, float]:
    """bench_loader.py on the rehearsal's folder; its output and loader_ratio."""
    command = [
        sys.executable,
        str(HERE / "bench_loader.py"),
        "--folder",
        str(out),
        "--repeats",
        "2",
    ]
    status, _, _, output = run_measured(command, cwd=HERE)
    if status != 0:
        raise SystemExit(f"bench_loader.py failed:\n{output[-3000:]}")
    lines = [line for line in output.splitlines() if line.strip()]
    ratio = float(lines[-1].split("=", 1)[1])
    return "\n".join("  " + line for line in lines), ratio


def write_predictions(out: Path, path: Path, split: str) -> Path:
    """The stand-in predictions of ``split``: the dataset's background plus Gaussian noise of
    :data:`PREDICTION_NOISE` target stds, each cycle of the split, 69 channels."""
    from dambench.load import open_dataset
    from dambench.scoring import PredictionWriter

    ds = open_dataset(out)
    ds = ds.isel(time=np.flatnonzero(ds["split"].values == split))
    std = ds["target"].std(("time", "latitude", "longitude")).values[:, None, None]
    writer = PredictionWriter.like(
        ds,
        path,
        attrs={
            "model": "standin-background-plus-noise",
            "standin": "true",
            "note": "the dataset's background plus Gaussian noise: a stand-in prediction, not a "
            "model, never skill",
        },
        overwrite=True,
    )
    rng = np.random.default_rng(0)
    for t in ds["time"].values:
        background = ds["background"].sel(time=t).values
        writer.write(t, background + PREDICTION_NOISE * std * rng.standard_normal(background.shape))
    return path


def run_evaluate(out: Path, work: Path) -> list[str]:
    """``dambench evaluate`` of stand-in predictions (:func:`write_predictions`) per split; a
    line per split with its wall time and peak RSS."""
    from dambench.load import open_dataset

    splits = [
        s for s in ("train", "validation", "test") if s in set(open_dataset(out)["split"].values)
    ]
    work.mkdir(parents=True, exist_ok=True)
    lines = []
    for split in splits:
        predictions = write_predictions(out, work / f"predictions-{split}.zarr", split)
        command = [
            sys.executable, "-m", "dambench.cli", "evaluate", "--predictions", str(predictions),
            "--dataset", str(out), "--split", split, "--out", str(work / f"evaluate-{split}"),
            "--bootstrap", "200", "--quiet",
        ]  # fmt: skip
        status, wall, rss_mb, output = run_measured(command)
        if status != 0:
            raise SystemExit(f"dambench evaluate --split {split} failed:\n{output[-3000:]}")
        n = int((open_dataset(out)["split"].values == split).sum())
        lines.append(f"  {split} ({n} cycles): {wall:.1f} s, peak RSS {rss_mb:.0f} MB")
    return lines


# --- report ---------------------------------------------------------------------------------


def stage_lines(result: dict, n: int) -> tuple[list[str], dict[str, float]]:
    """Lines of seconds per cycle by stage, and the figures the projection uses."""
    seconds = result["seconds"]
    steps = result["calls"].get("forecaster", 0)
    per = {stage: seconds.get(stage, 0.0) / n for stage in STAGES}
    shards = sum(per.values())
    lines = [f"  {stage:<11} {per[stage]:8.2f}" for stage in STAGES]
    step_s = seconds.get("forecaster", 0.0) / steps if steps else float("nan")
    lines[STAGES.index("forecaster")] += (
        f"   ({steps / n:.0f} steps per cycle, {step_s:.2f} s/step)"
    )
    lines.append(f"  {'= shards':<11} {shards:8.2f}")
    finalise = seconds.get("finalise", 0.0) / n
    lines.append(f"  finalise    {finalise:8.2f}   (Parquet, statistics, preview, card, manifest)")
    lines.append(
        f"  setup       {seconds.get('setup', 0.0):8.2f} s once (open inputs, ONNX session)"
    )
    if result["missing_hooks"]:
        lines.append(f"  not instrumented (not found): {result['missing_hooks']}")
    figures = {"per_cycle": shards + finalise, "forecaster": per["forecaster"], "step_s": step_s}
    return lines, {**figures, "setup": seconds.get("setup", 0.0), "steps": steps / n}


def projection_lines(fig: dict) -> tuple[list[str], float]:
    """The full build's projection from the per-cycle figures."""
    without = fig["setup"] + FULL_CYCLES * (fig["per_cycle"] - fig["forecaster"])
    floor = FULL_CYCLES * fig["steps"] * fig["step_s"]
    published = FULL_CYCLES * fig["steps"] * FENGWU_A100_S_PER_STEP
    lines = [
        f"projection, full build ({FULL_CYCLES} cycles):",
        f"  without the forecaster: {without / 3600:.1f} worker-hours",
        f"  stand-in forecaster (a floor; a fixed smoothing, not FengWu): {floor / 3600:.1f} "
        f"CPU-hours ({fig['step_s']:.2f} s/step here)",
        f"  published FengWu GPU cost: {published / 3600:.1f} GPU-hours at "
        f"{FENGWU_A100_S_PER_STEP} s/step ({FENGWU_COST_SOURCE})",
    ]
    return lines, without / 3600


def folder_bytes(folder: Path) -> int:
    """Bytes of the visible files of a build folder (what is published)."""
    return sum(
        p.stat().st_size
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


# --- main -----------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 1, found {text}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="rehearsal-work", help="stand-ins and outputs")
    parser.add_argument("--cycles", type=int, default=32, help="daily cycles to build")
    parser.add_argument("--fault-rate", type=float, default=0.05, help="transient faults")
    parser.add_argument("--seed", type=int, default=0, help="seed of the injected faults")
    parser.add_argument("--workers", type=int, default=1, help="build threads")
    parser.add_argument("--scheduler", help="dask.distributed scheduler address")
    parser.add_argument(
        "--analysis-grid-deg",
        type=float,
        default=0.25,
        help="grid of the ARCO-ERA5 stand-in; above 0.25 the 0.25 deg forecaster is fed an "
        "interpolated analysis (background.allow_coarse_forecaster_input, recorded in the card)",
    )
    parser.add_argument(
        "--arco-name", default=arco.ARCO_STORE_NAME, help="folder name of the ERA5 store"
    )
    parser.add_argument(
        "--model-grid-deg",
        type=float,
        default=0.25,
        help="grid of the FengWu stand-in (FengWu's is 0.25; coarser only for memory runs)",
    )
    parser.add_argument(
        "--cycles-per-shard",
        type=_positive_int,
        help="override of the config's cycles_per_shard (the block a worker holds; recorded in "
        "the output); compare peak RSS across --cycles only at the same value",
    )
    parser.add_argument("--build-only", action="store_true", help="skip loader and evaluate")
    parser.add_argument("--child-build", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child_build:
        child_build(args.child_build)
        return
    work = Path(args.work).resolve()
    args.work = str(work)
    inputs = make_inputs(args)
    runs = work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f"era5-fengwu-{args.cycles}c-", dir=runs))
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    server = context.Process(
        target=serve, args=(str(work / "served"), args.fault_rate, args.seed, theirs), daemon=True
    )
    server.start()
    try:
        url = ours.recv()
        result = run_build(args, inputs, url, out)
        ours.send("stats")
        stats = ours.recv()
        report(args, inputs, out, result, stats)
    finally:
        ours.send("stop")
        server.join(timeout=30)


def header_lines(args, n: int, result: dict) -> list[str]:
    """What was run (with the block size: the config's or ``--cycles-per-shard``) and the
    build's wall time and peak RSS."""
    return [
        f"era5-fengwu rehearsal: {n} cycles, 69 channels, inputs over HTTP ({args.fault_rate:.0%} "
        f"transient faults injected), {args.workers} worker thread(s)"
        + (f", scheduler {args.scheduler}" if args.scheduler else "")
        + f", {result['cycles_per_shard']} cycles per shard"
        + (" (--cycles-per-shard)" if args.cycles_per_shard else " (the config's)"),
        f"build: {result['build_s']:.0f} s ({result['build_s'] / n:.1f} s per cycle), peak RSS "
        f"of the build process ({BUILD_PROCESS[bool(args.scheduler)]}) "
        f"{result['peak_rss_mb']:.0f} MB",
        memory_line(result["memory"]),
    ]


def memory_line(memory: dict) -> str:
    """Peak RSS by phase and the RSS after the first and the last written block: a peak that
    grows with the record shows as a rising RSS from block to block."""
    peaks = ", ".join(f"{phase} {mb:.0f}" for phase, mb in memory["peaks_mb"].items())
    blocks = memory["after_blocks_mb"]
    after = (
        f"; RSS after block 1 of {len(blocks)}: {blocks[0]:.0f} MB, after the last: "
        f"{blocks[-1]:.0f} MB, largest: {max(blocks):.0f} MB"
        if blocks
        else "; no block written in this process (the scheduler's workers wrote them)"
    )
    return f"peak RSS by phase of the build process (MB): {peaks}{after}"


def figure_lines(args, n: int, result: dict) -> tuple[list[str], list[str], float]:
    """Stage lines, projection lines and projected worker-hours; with ``--scheduler`` notes that
    they are not measured (the stages run in processes this benchmark does not instrument) and
    NaN worker-hours."""
    lines, figures = stage_lines(result, n)
    proj, worker_hours = projection_lines(figures)
    if args.scheduler:
        return [SCHEDULER_STAGES_NOTE], [SCHEDULER_PROJECTION_NOTE], float("nan")
    return ["seconds per cycle by stage (worker-seconds):", *lines], proj, worker_hours


def report(args, inputs: RehearsalInputs, out: Path, result: dict, stats: dict) -> None:
    """Verify, load, loader and evaluate; print every figure, the last line name=value pairs."""
    n = len(inputs.cycles)
    written = folder_bytes(out)
    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    stages, proj, worker_hours = figure_lines(args, n, result)
    print("\n".join(header_lines(args, n, result) + stages))
    faults = stats["faults"] / max(stats["requests"], 1)
    print(
        f"HTTP: {stats['requests']} requests, {stats['faults']} injected faults "
        f"({faults:.1%}), {stats['bytes_sent'] / 1e6 / n:.0f} MB read per cycle "
        f"({stats['bytes_sent'] / 1e9:.2f} GB); written {written / 1e6 / n:.1f} MB per cycle "
        f"({written / 1e9:.2f} GB)"
    )
    print(verify_and_load(out))
    print("\n".join(proj))
    if not args.build_only:
        text, ratio = run_loader(out)
        print(f"loader (benchmarks/bench_loader.py --folder {out}):\n{text}")
        print("dambench evaluate of 69-channel stand-in predictions (background + noise), "
              "--bootstrap 200:")  # fmt: skip
        print("\n".join(run_evaluate(out, out.parent / f"{out.name}-evaluate")))
    print(
        f"load average (1, 5, 15 min) at the end of the build: {load_avg} on {os.cpu_count()} cores"
    )
    print(
        f"seconds_per_cycle={result['build_s'] / n:.2f} "
        f"read_mb_per_cycle={stats['bytes_sent'] / 1e6 / n:.1f} "
        f"written_mb_per_cycle={written / 1e6 / n:.2f} requests={stats['requests']} "
        f"faults={stats['faults']} fault_fraction={faults:.3f} "
        f"build_peak_rss_mb={result['peak_rss_mb']:.0f} "
        f"cycles_per_shard={result['cycles_per_shard']} "
        f"projection_worker_hours={worker_hours:.1f}"
    )
    sys.stdout.flush()

if __name__ == "__main__":
    main()
