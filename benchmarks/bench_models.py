"""Training-step and analysis cost of every registered baseline at one size.

``PYTHONPATH=. python benchmarks/bench_models.py --size tiny|small|full [--members 8] [--amp]``

For every model ``list_models(f"*_{size}")`` (whatever is registered: the script dispatches on
each model's :class:`~baselines.interface.ModelInfo` and names none), on random normalised
tensors of the real shape (121 x 240, the variant's ``in_chans`` channels, 5 % observed, the
modalities the model takes: its ``modality_chans``, else its adapter's, else one).

With ``--config FILE`` (repeatable, e.g. ``baselines/configs/sda_full.yaml``) the model is the
config's, built with its ``model.kwargs`` and, for ``train.freeze: [host]``, a frozen host (its
``init_from`` checkpoint is not loaded: random weights cost the same). With ``--data FOLDER``
(e.g. the production rehearsal's 69-channel build) the model is built as ``baselines/train.py``
builds it (channels and modality names from the data), the batches come from that dataset
through ``make_dataloader`` and ``fit`` uses its cycles. ``--fit fill`` skips every fit (one too
long for the machine, e.g. SLAMS' autoencoder) as below. The full-size run of issue 16
(one process per model, each stopped at 12 GiB)::

    PYTHONPATH=. python benchmarks/bench_models.py --size full --isolate \
        --config baselines/configs/adas_full.yaml [--config ...] --data FOLDER \
        --repeats 1 --warmup 0 --members 2 --sampler-steps 2 --estimate-activations \
        --max-rss-gib 12 --timeout-s 900 --log-dir LOGS

- ``params_m``, ``trainable_m`` (millions) and ``adamw_state_mib``: the computed size of the
  weights plus the trainable ones' gradients and AdamW moments (float32), the floor of a
  training step's memory;
- ``fit_s``: ``model.fit`` on a synthetic 2-cycle train split, when ``info.needs_fit``. A fit
  that needs the data stack (e.g. SLAMS trains its autoencoder through ``dambench.batching``,
  which needs xbatcher) is skipped where that is not installed (or with ``--fit fill``):
  ``fit_skipped=1``, a note names the reason, and the model's unfitted statistics (non-finite
  floating buffers) get random positive values, so its training step and analysis are still
  timed (with an untrained autoencoder: the same cost, not the same numbers);
- every model: ``analyse`` of one cycle (batch 1): ``analysis_ms`` per cycle (including any
  optimisation at analysis time, e.g. VAE-Var's) and ``analysis_peak_mib``; ensemble models at
  ``--members`` N members, with ``member_ms`` = ``analysis_ms / N``. With ``--sampler-steps
  N`` score models (SDA, SLAMS) sample N steps instead of their shipped S:
  ``analysis_projected_ms`` = ``analysis_ms * S / N`` (a projection, cost linear in steps);
- trainable models, after the analysis: with ``--estimate-activations`` the bytes one training
  forward saves for backward (``activations_est_mib``, an upper estimate, counted without
  keeping them) and ``train_est_mib`` = that + ``adamw_state_mib``; then one training step
  (``loss``, backward, AdamW step) at ``--batch-size``: ``step_ms`` (best of ``--repeats``
  after ``--warmup`` untimed calls), ``samples_per_s`` and ``train_peak_mib``;
- ``process_peak_rss_mib``: the process's peak RSS (``ru_maxrss``, data loading included).

Peak memory is CUDA's ``max_memory_allocated`` on a GPU, else the process's resident set
(RSS) sampled every 2 ms during the timed calls (absolute, the interpreter included). With
``--amp`` on CUDA the forward passes run under ``torch.autocast`` (float16), as in training.
``--isolate`` benches each model in a child process of its own, one after another:
``child_peak_rss_mib`` is the child's peak RSS (``wait4``), a child over ``--timeout-s`` is
killed, one over ``--max-rss-gib`` stops itself, and either is reported FAILED with the figures
of its last ``partial:`` line (printed, flushed, as each group of figures is measured).
Needs torch and numpy (xarray for models with ``needs_fit``); imports no zarr, dask, xbatcher or
datasets itself. The table is followed by a ``note:`` line per model with something to say (a
skipped fit). The last line is ``name=value`` pairs: ``<model>_<quantity>=value`` for every
model and quantity, plus ``size``, ``device``, ``models`` and ``failed`` (a failing model is
reported and the script exits with status 1).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from baselines.checkpoint import model_kwargs, takes_modality_chans
from baselines.interface import DABatch, ModelInfo
from baselines.layers.ensemble import ScoreEnsemble
from baselines.models.multi import adapter_of, freeze_host, keep_host_in_eval
from baselines.registry import create_model, list_models, model_info

GRID = (121, 240)
OBSERVED_FRACTION = 0.05
_DEFAULT_IN_CHANS = {"tiny": 4, "small": 4, "full": 69}


class PeakMemory:
    """Peak memory in MiB over a ``with`` block: CUDA's allocator peak on a GPU, else RSS
    sampled by a background thread (``ru_maxrss`` where ``/proc`` is absent)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mib = device, float("nan")
        self._stop = threading.Event()
        self._rss = 0

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._rss = max(self._rss, current_rss_bytes())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/statm"):
            self._rss = current_rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self._rss, current_rss_bytes()) / 2**20
        else:
            self.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def current_rss_bytes() -> int:
    """This process's resident set now (``/proc/self/statm``)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def watch_rss(limit_gib: float, period_s: float = 0.1) -> threading.Thread:
    """Start a daemon thread that ends the process (status 3, a line naming the cap on
    stderr) once its resident set exceeds ``limit_gib`` (``--max-rss-gib``): a model too big
    for a shared machine is stopped before the kernel's OOM killer picks another process."""

    def watch() -> None:
        while True:
            rss = current_rss_bytes()
            if rss > limit_gib * 2**30:
                print(f"RSS {rss / 2**30:.2f} GiB over --max-rss-gib {limit_gib:g}; stopped",
                      file=sys.stderr, flush=True)  # fmt: skip
                os._exit(3)
            time.sleep(period_s)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def build(
    name: str, size: str, kwargs: dict | None = None, source: DataSource | None = None
) -> torch.nn.Module:
    """``create_model(name, **kwargs)`` as ``baselines/train.py`` builds it: with a ``--data``
    source, ``in_chans`` and the modalities (names, or the ``modality_chans`` count) from the
    data (:func:`baselines.checkpoint.model_kwargs`); without one, a composed model whose host
    also takes a modality count (e.g. ``multi_slams_*``) gets the count from its adapter's
    modality names, so both take the same ``batch.modalities``."""
    kwargs = dict(kwargs or {})
    if source is not None:
        return create_model(
            name, **model_kwargs(name, kwargs, channels=source.channels, modalities=source.names)
        )
    model = create_model(name, **kwargs)
    adapter = adapter_of(model)
    if adapter is None or not takes_modality_chans(name):
        return model
    in_chans = getattr(model, "in_chans", None) or _DEFAULT_IN_CHANS[size]
    names = list(adapter.modalities)
    kwargs = model_kwargs(name, kwargs, channels=[""] * in_chans, modalities=names)
    return create_model(name, **kwargs)


def modality_count(model: torch.nn.Module) -> int:
    """The number of modalities M the model takes in ``batch.modalities``: its
    ``modality_chans`` (e.g. SLAMS), else its multi-modal adapter's modality names, else 1."""
    count = getattr(model, "modality_chans", None)
    if count is None:
        adapter = adapter_of(model)
        count = 1 if adapter is None else len(adapter.modalities)
    return int(count)


def random_batch(
    in_chans: int, batch_size: int, device: torch.device, seed: int = 0, modalities: int = 1
) -> DABatch:
    """Normalised random fields (B, C, 121, 240), 5 % observed, ``modalities`` random
    modalities (all present), coordinates."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch_size, in_chans, *GRID)
    background = torch.randn(shape, generator=gen)
    target = background + 0.5 * torch.randn(shape, generator=gen)
    mask = (torch.rand(shape, generator=gen) < OBSERVED_FRACTION).float()
    latitude = torch.linspace(90.0, -90.0, GRID[0]).expand(batch_size, -1)
    longitude = (360.0 / GRID[1] * torch.arange(GRID[1])).expand(batch_size, -1)
    batch = DABatch(
        background=background,
        observation=target * mask,
        mask=mask,
        target=target,
        modalities=torch.randn((batch_size, modalities, *GRID), generator=gen),
        modality_present=torch.ones(batch_size, modalities),
        latitude=latitude.contiguous(),
        longitude=longitude.contiguous(),
    )
    return batch.to(device)


def synthetic_train_split(in_chans: int, n_time: int = 2):
    """A 2-cycle train split in physical units (unit std) and its statistics, for ``fit``."""
    import xarray as xr

    from dambench import schema

    rng = np.random.default_rng(0)
    channels = list(schema.CHANNELS[:in_chans])
    target = rng.standard_normal((n_time, in_chans, *GRID))
    dims = schema.CANONICAL_DIMS
    ds = xr.Dataset(
        {
            "target": (dims, target),
            "background": (dims, target + 0.5 * rng.standard_normal(target.shape)),
        },
        coords={
            schema.TIME: np.arange(n_time).astype("datetime64[D]").astype("datetime64[ns]"),
            schema.CHANNEL: channels,
            schema.LATITUDE: np.linspace(90.0, -90.0, GRID[0]),
            schema.LONGITUDE: 360.0 / GRID[1] * np.arange(GRID[1]),
            "split": (schema.TIME, ["train"] * n_time),
        },
        attrs={"observation": json.dumps({"noise": "default", "pattern": "random"})},
    )
    stats = xr.Dataset(
        {"mean": (schema.CHANNEL, np.zeros(in_chans)), "std": (schema.CHANNEL, np.ones(in_chans))},
        coords={schema.CHANNEL: channels},
    )
    return ds, stats


@dataclass
class DataSource:
    """A built dataset (``--data``) as ``baselines/train.py`` feeds it: every cycle labelled
    ``train`` (a rehearsal's cycles may all lie in one split), its statistics, the training
    samples (fresh observations) with the modalities the model takes, its channel names."""

    ds: Any
    stats: Any
    train: Any
    channels: list[str]

    @property
    def names(self) -> list[str]:
        """The modality names of ``batch.modalities``, in order."""
        return list(self.train.modality_names)


def open_source(folder: str, info: ModelInfo) -> DataSource:
    """The :class:`DataSource` of ``folder`` for a model with ``info``: the modalities the
    dataset holds, or none for a model with ``uses_modalities=False`` (as ``train.py``)."""
    from dambench.batching import DATorchDataset
    from dambench.load import open_dataset, stats_from_attrs

    ds = open_dataset(folder)
    ds = ds.assign_coords(split=("time", ["train"] * ds.sizes["time"]))
    stats = stats_from_attrs(ds)
    modalities = None if info.uses_modalities else []
    train = DATorchDataset(ds, stats=stats, train=True, seed=0, modalities=modalities)
    return DataSource(ds, stats, train, [str(c) for c in ds["channel"].values])


def data_batches(source: DataSource, model, batch_size: int, device: torch.device):
    """``(train_batch, analysis_batch)`` from a :class:`DataSource`: the first training batch
    (fresh observations, as ``train.py`` draws them) and the first stored-observation batch
    through :func:`dambench.batching.make_dataloader`, with the same modalities."""
    from dambench.batching import make_dataloader

    train = make_dataloader(source.train, batch_size=batch_size, model_info=model.info)
    stored = make_dataloader(
        source.ds, batch_size=1, train=False, stats=source.stats, modalities=source.names,
        modality_stats=source.train.modality_stats, model_info=model.info,
    )  # fmt: skip
    return tuple(DABatch.from_loader(next(iter(loader))).to(device) for loader in (train, stored))


def fill_unfitted(model: torch.nn.Module, seed: int = 0) -> list[str]:
    """Give every floating buffer that holds non-finite values (a statistic ``fit`` has not
    set) random values in [0.5, 1]; returns their names."""
    gen = torch.Generator().manual_seed(seed)
    filled = []
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point() and not bool(torch.isfinite(buffer).all()):
            values = 0.5 + 0.5 * torch.rand(buffer.shape, generator=gen)
            buffer.copy_(values.to(buffer))
            filled.append(name)
    return filled


class _FitNotRun(Exception):
    """``--fit fill``: the fit is not run on purpose."""


def fit_or_fill(
    model: torch.nn.Module,
    in_chans: int,
    source: DataSource | None = None,
    fill: bool = False,
) -> tuple[dict[str, float], str | None]:
    """``({"fit_s": seconds}, None)`` after ``model.fit`` on the synthetic split (or on every
    cycle of the ``--data`` source); where the fit needs a package that is not installed (an
    ``ImportError``: the data stack on the GPU image), or ``fill`` (``--fit fill``: a fit too
    long for the machine, e.g. SLAMS' autoencoder), ``({"fit_skipped": 1.0}, note)`` with the
    unfitted statistics filled at random (:func:`fill_unfitted`) and the note naming the
    reason and the buffers."""
    start = time.perf_counter()
    try:
        if fill:
            raise _FitNotRun("not run (--fit fill)")
        model.fit(*((source.ds, source.stats) if source else synthetic_train_split(in_chans)))
    except (ImportError, _FitNotRun) as err:  # MissingDependencyError is an ImportError too
        filled = fill_unfitted(model)
        reason = str(err) if isinstance(err, _FitNotRun) else f"{type(err).__name__}: {err}"
        reason = reason.replace("\n", " ")[:200]
        note = f"fit skipped ({reason}); random values for unfitted buffers {filled}"
        return {"fit_skipped": 1.0}, note
    return {"fit_s": time.perf_counter() - start}, None


def set_sampler_steps(model: torch.nn.Module, steps: int) -> int | None:
    """Give every score-ensemble sampler in ``model`` (SDA, SLAMS, a ``multi_*`` host) ``steps``
    predictor steps; returns the shipped count (``None``: the model has no such sampler)."""
    shipped = None
    for module in model.modules():
        if isinstance(module, ScoreEnsemble):
            shipped = module.sampler.steps
            module.sampler = dataclasses.replace(module.sampler, steps=steps)
    return shipped


def best_time(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    """Best wall time in seconds of ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def train_mode(model: torch.nn.Module, args) -> None:
    """``model.train()``; a ``multi_*`` model whose config freezes its host keeps the host in
    eval mode, as ``train.py``."""
    model.train()
    if getattr(args, "freeze_host", False):
        keep_host_in_eval(model)


def bench_training(model, batch: DABatch, args, device: torch.device) -> dict[str, float]:
    """Step time, samples/s and peak memory of (loss, backward, AdamW step), in
    :func:`train_mode`."""
    train_mode(model, args)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def step() -> None:
        with torch.autocast(device.type, enabled=args.amp and device.type == "cuda"):
            loss = model.loss(batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with PeakMemory(device) as memory:
        seconds = best_time(step, args.repeats, args.warmup, device)
    return {
        "step_ms": 1e3 * seconds,
        "samples_per_s": batch.shape[0] / seconds,
        "train_peak_mib": memory.peak_mib,
    }


def bench_analysis(model, batch: DABatch, args, device: torch.device) -> dict[str, float]:
    """Latency of ``analyse`` for one cycle (at ``--members`` for ensemble models). With
    ``--sampler-steps N`` a score-ensemble model samples N steps instead of its shipped count
    S, and ``analysis_projected_ms`` = ``analysis_ms * S / N`` is the projection (cost linear
    in the steps) to the shipped sampler."""
    model.eval()
    members = args.members if model.info.output == "ensemble" else None
    steps = getattr(args, "sampler_steps", None)
    shipped = set_sampler_steps(model, steps) if steps else None

    def analyse() -> None:
        with torch.autocast(device.type, enabled=args.amp and device.type == "cuda"):
            model.analyse(batch, members=members, seed=0)

    with PeakMemory(device) as memory:
        seconds = best_time(analyse, args.repeats, args.warmup, device)
    out = {"analysis_ms": 1e3 * seconds, "analysis_peak_mib": memory.peak_mib}
    if members is not None:
        out.update(members=float(members), member_ms=1e3 * seconds / members)
    if shipped is not None:
        out.update(sampler_steps=float(steps), shipped_steps=float(shipped))
        out["analysis_projected_ms"] = out["analysis_ms"] * shipped / steps
    return out


def saved_activations_mib(model, batch: DABatch, args) -> float:
    """The bytes autograd saves for backward in one training forward (``loss``) at ``batch``,
    in MiB (in :func:`train_mode`): the activation term of a training step's memory. Each saved
    tensor is dropped as it is packed, so this runs where the step itself does not fit (no
    backward follows). Summed over every save, not deduplicated: an upper estimate."""
    total = 0

    def pack(tensor: torch.Tensor) -> None:
        nonlocal total
        total += tensor.numel() * tensor.element_size()

    def unpack(_: None) -> torch.Tensor:
        raise RuntimeError("saved_activations_mib: the saved tensors were dropped")

    train_mode(model, args)
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        model.loss(batch)
    model.zero_grad(set_to_none=True)
    return total / 2**20


def process_peak_rss_mib() -> float:
    """The peak resident set of this process so far (``ru_maxrss``), in MiB: with one process
    per model (``--isolate``, or ``--config``) the model's whole peak, data loading included."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def size_figures(model: torch.nn.Module) -> dict[str, float]:
    """``params_m`` and ``trainable_m`` (millions) and ``adamw_state_mib``: the computed size of
    the weights plus the gradients and AdamW moments of the trainable ones (float32), the
    floor of a training step's memory."""
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state = 4 * params + 3 * 4 * trainable
    return {"params_m": params / 1e6, "trainable_m": trainable / 1e6,
            "adamw_state_mib": state / 2**20}  # fmt: skip


def report_partial(name: str, figures: dict[str, float]) -> None:
    """Print (flushed) the figures measured so far as a ``partial:`` line, so that a run killed
    later (out of memory, over time) still reports its size (:func:`run_isolated`)."""
    pairs = " ".join(f"{name}_{key}={value:.4g}" for key, value in figures.items())
    print(f"partial: {pairs}", flush=True)


def bench_model(
    name: str, args, device: torch.device, kwargs: dict | None = None
) -> tuple[dict[str, float], str | None]:
    """All figures of one registered model built with ``kwargs`` (a config's), and a note
    (``None`` when there is nothing to say). The model is on ``device`` before ``fit``, as in
    ``baselines/train.py``."""
    torch.manual_seed(0)
    source = open_source(args.data, model_info(name)) if args.data else None
    model = build(name, args.size, kwargs, source).to(device)
    if getattr(args, "freeze_host", False):
        freeze_host(model)
    in_chans = getattr(model, "in_chans", None) or _DEFAULT_IN_CHANS[args.size]
    m = modality_count(model)
    out: dict[str, float] = {"in_chans": float(in_chans), "modalities": float(m)}
    note = None
    if model.info.needs_fit:
        fitted, note = fit_or_fill(model, in_chans, source, fill=args.fit == "fill")
        out.update(fitted)
    out.update(size_figures(model))
    report_partial(name, out)
    if source is not None:
        train_batch, batch = data_batches(source, model, args.batch_size, device)
    else:
        train_batch = random_batch(in_chans, args.batch_size, device, modalities=m)
        batch = random_batch(in_chans, 1, device, seed=1, modalities=m)
    out.update(bench_analysis(model, batch, args, device))
    report_partial(name, out)
    if model.info.trainable and getattr(args, "estimate_activations", False):
        out["activations_est_mib"] = saved_activations_mib(model, train_batch, args)
        out["train_est_mib"] = out["adamw_state_mib"] + out["activations_est_mib"]
        report_partial(name, out)
    if model.info.trainable:
        out.update(bench_training(model, train_batch, args, device))
        model.zero_grad(set_to_none=True)
    out["process_peak_rss_mib"] = process_peak_rss_mib()
    return out, note


COLUMNS = ("in_chans", "modalities", "params_m", "trainable_m", "adamw_state_mib", "fit_s",
           "step_ms", "samples_per_s", "train_peak_mib", "analysis_ms", "members", "member_ms",
           "sampler_steps", "shipped_steps", "analysis_projected_ms", "analysis_peak_mib",
           "activations_est_mib", "train_est_mib", "process_peak_rss_mib",
           "child_peak_rss_mib")  # fmt: skip


def _format_table(results: dict[str, dict[str, float]], failures: dict[str, str]) -> str:
    """The Markdown table: one row per model, a failed one with what it measured before it
    failed and ``FAILED: reason``."""
    lines = ["| model | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in results.items():
        cells = [f"{row[c]:.4g}" if c in row else "-" for c in COLUMNS]
        failed = f" FAILED: {failures[name]} |" if name in failures else ""
        lines.append(f"| {name} | " + " | ".join(cells) + " |" + failed)
    return "\n".join(lines)


@dataclass(frozen=True)
class Unit:
    """One model to bench: its registered name, constructor ``kwargs``, whether its host is
    frozen in training (``train.freeze: [host]``) and the arguments that select it alone."""

    name: str
    kwargs: dict
    freeze_host: bool
    select: tuple[str, ...]


def unit_from_config(path: str) -> Unit:
    """The :class:`Unit` of a training config (``baselines/configs/*.yaml``): its model name,
    ``model.kwargs`` and ``train.freeze``, as ``baselines/train.py`` builds it (the
    ``init_from`` checkpoint is not loaded: random weights cost the same)."""
    from baselines.config import load_run_config

    cfg = load_run_config(path)
    freeze = "host" in cfg.train.freeze
    return Unit(cfg.model.name, dict(cfg.model.kwargs), freeze, ("--config", str(path)))


def units_of(args) -> list[Unit]:
    """The configs of ``--config``, else every model ``*_{size}`` that ``--models`` matches."""
    if args.config:
        return [unit_from_config(path) for path in args.config]
    names = [n for n in list_models(f"*_{args.size}") if n in list_models(args.models)]
    return [Unit(name, {}, False, ("--models", name)) for name in names]


def child_argv(args, unit: Unit) -> list[str]:
    """This script's arguments for benching ``unit`` alone in a child process."""
    argv = ["--size", args.size, "--members", str(args.members), "--fit", args.fit,
            "--batch-size", str(args.batch_size), "--repeats", str(args.repeats),
            "--warmup", str(args.warmup)]  # fmt: skip
    if args.amp:
        argv.append("--amp")
    if args.data:
        argv += ["--data", args.data]
    if args.sampler_steps:
        argv += ["--sampler-steps", str(args.sampler_steps)]
    if args.max_rss_gib:
        argv += ["--max-rss-gib", str(args.max_rss_gib)]
    if args.estimate_activations:
        argv.append("--estimate-activations")
    return argv + list(unit.select)


def parse_pairs(line: str, name: str) -> dict[str, float]:
    """The ``<name>_<quantity>=value`` figures of one output line, keyed by quantity."""
    prefix = f"{name}_"
    pairs = (item.split("=", 1) for item in line.split() if "=" in item)
    return {key[len(prefix):]: float(value) for key, value in pairs if key.startswith(prefix)}


def wait_with_usage(proc: subprocess.Popen, timeout_s: float) -> tuple[int, float, bool]:
    """Wait for ``proc`` (killed after ``timeout_s``); returns its exit status, its peak RSS in
    MiB (``wait4``'s ``ru_maxrss``, also for a child killed out of memory) and whether it was
    killed for the time."""
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout_s, kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 2**10, expired.is_set()


def failure_reason(status: int, timed_out: bool, timeout_s: float, output: str) -> str | None:
    """Why a child failed (``None``: it did not): over time, killed by a signal (SIGKILL: the
    kernel's OOM killer, where not timed out), its table's ``FAILED:`` reason, or the last
    line of its ``output`` (stdout, then stderr)."""
    if timed_out:
        return f"over --timeout-s {timeout_s:g} s (killed)"
    if status < 0:
        return f"killed by signal {-status}" + (" (out of memory?)" if status == -9 else "")
    if status == 0:
        return None
    lines = [line for line in output.strip().splitlines() if line.strip()]
    reported = [line.split("FAILED: ", 1)[1].rstrip(" |") for line in lines if "FAILED: " in line]
    last = reported[0] if reported else (lines[-1][:300] if lines else "no output")
    return f"exit status {status}: {last}"


def run_isolated(unit: Unit, args, log_dir: str) -> tuple[dict[str, float], str | None, str | None]:
    """Bench ``unit`` in a child process of its own (``--isolate``), its output in
    ``log_dir/<name>.out|.err``; returns its figures (those of its ``partial:`` line if it
    failed) with ``child_peak_rss_mib``, its note and its failure reason (``None``: none)."""
    base = os.path.join(log_dir, unit.name)
    command = [sys.executable, os.path.abspath(__file__), *child_argv(args, unit)]
    with open(base + ".out", "w") as out, open(base + ".err", "w") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err)
        status, peak_mib, timed_out = wait_with_usage(proc, args.timeout_s)
    with open(base + ".out") as out, open(base + ".err") as err:
        stdout, stderr = out.read(), err.read()
    failure = failure_reason(status, timed_out, args.timeout_s, stdout + stderr)
    lines = stdout.strip().splitlines()
    partial = [line for line in lines if line.startswith("partial:")]
    last = lines[-1] if failure is None and lines else (partial[-1] if partial else "")
    figures = {**parse_pairs(last, unit.name), "child_peak_rss_mib": peak_mib}
    notes = [line.split(": ", 2)[2] for line in lines if line.startswith(f"note: {unit.name}: ")]
    return figures, (notes[0] if notes else None), failure


def bench_in_process(unit: Unit, args, device: torch.device):
    """``(figures, note, failure)`` of ``unit`` benched in this process; a failure is reported
    (its reason) rather than raised, so every model is reported."""
    args.freeze_host = unit.freeze_host
    try:
        figures, note = bench_model(unit.name, args, device, unit.kwargs)
    except Exception as err:  # report every model; a failure is shown and sets the status
        return {}, None, f"{type(err).__name__}: {err}".replace("\n", " ")[:300]
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return figures, note, None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "small", "full"), default="tiny")
    parser.add_argument("--members", type=int, default=8, help="ensemble members per cycle")
    parser.add_argument("--batch-size", type=int, default=1, help="training batch size")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls (best of)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--models", default="*", help="extra name filter, e.g. 'fnp*'")
    parser.add_argument("--amp", action="store_true", help="autocast (float16) on CUDA")
    parser.add_argument(
        "--data",
        help="a built dataset folder (e.g. the rehearsal's): batches through make_dataloader "
        "and fits on its cycles instead of random tensors (needs the data stack)",
    )
    parser.add_argument("--config", action="append", help="a training config (repeatable): "
                        "its model, model.kwargs and train.freeze, not --models")  # fmt: skip
    parser.add_argument("--fit", choices=("run", "fill"), default="run",
                        help="fill: skip fits, random values for unfitted statistics")  # fmt: skip
    parser.add_argument("--sampler-steps", type=int, help="score models sample this many "
                        "steps; analysis_projected_ms scales to the shipped count")  # fmt: skip
    parser.add_argument("--isolate", action="store_true",
                        help="one child process per model, one after another")  # fmt: skip
    parser.add_argument("--timeout-s", type=float, default=900.0,
                        help="--isolate: a child running longer is killed, reported")  # fmt: skip
    parser.add_argument("--log-dir", help="--isolate: keep each child's output here")
    parser.add_argument("--estimate-activations", action="store_true",
                        help="count the bytes a training forward saves for backward")  # fmt: skip
    parser.add_argument("--max-rss-gib", type=float,
                        help="stop (status 3) once the resident set exceeds this")  # fmt: skip
    args = parser.parse_args(argv)
    if args.sampler_steps is not None and args.sampler_steps < 1:
        parser.error(f"--sampler-steps must be >= 1; got {args.sampler_steps}.")
    return args


def bench_all(args, device: torch.device):
    """``(results, notes, failures)`` of every unit, in this process or one child each."""
    results, notes, failures = {}, {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        log_dir = args.log_dir or scratch
        if args.isolate:
            os.makedirs(log_dir, exist_ok=True)
        for unit in units_of(args):
            if args.isolate:
                figures, note, failure = run_isolated(unit, args, log_dir)
            else:
                figures, note, failure = bench_in_process(unit, args, device)
            results[unit.name] = figures
            if note is not None:
                notes[unit.name] = note
            if failure is not None:
                failures[unit.name] = failure
    return results, notes, failures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.max_rss_gib and not args.isolate:  # with --isolate each child watches its own
        watch_rss(args.max_rss_gib)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results, notes, failures = bench_all(args, device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={device} ({card}), torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, amp={args.amp}, repeats={args.repeats}, "
          f"isolate={args.isolate}")  # fmt: skip
    print(_format_table(results, failures))
    for name, note in notes.items():
        print(f"note: {name}: {note}")
    pairs = {"size": args.size, "device": device.type, "models": len(results),
             "failed": len(failures)}  # fmt: skip
    for name, row in results.items():
        pairs.update({f"{name}_{key}": f"{value:.4g}" for key, value in row.items()})
    print(" ".join(f"{key}={value}" for key, value in pairs.items()))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
