"""Training-step and analysis cost of every registered baseline at one size.

``PYTHONPATH=. python benchmarks/bench_models.py --size tiny|small|full [--members 8] [--amp]``

For every model ``list_models(f"*_{size}")`` (whatever is registered: the script dispatches on
each model's :class:`~baselines.interface.ModelInfo` and names none), on random normalised
tensors of the real shape (121 x 240, the variant's ``in_chans`` channels, 5 % observed, the
modalities the model takes: its ``modality_chans``, else its adapter's, else one):

With ``--data FOLDER`` (e.g. the production rehearsal's 69-channel build) the batches come from
that dataset through ``make_dataloader`` and ``fit`` uses its cycles instead. ``adamw_state_mib``
is the computed size of the weights, gradients and AdamW moments (float32), the floor of a
training step's memory.

- ``fit_s``: ``model.fit`` on a synthetic 2-cycle train split, when ``info.needs_fit``. A fit
  that needs the data stack (e.g. SLAMS trains its autoencoder through ``dambench.batching``,
  which needs xbatcher) is skipped where that is not installed: ``fit_skipped=1``, a note names
  the import error, and the model's unfitted statistics (non-finite floating buffers) get random
  positive values, so its training step and analysis are still timed (with an untrained
  autoencoder: the same cost, not the same numbers);
- trainable models: one training step (``loss``, backward, AdamW step) at ``--batch-size``:
  ``step_ms`` (best of ``--repeats`` after ``--warmup`` untimed calls), ``samples_per_s`` and
  ``train_peak_mib``;
- every model: ``analyse`` of one cycle (batch 1): ``analysis_ms`` per cycle (including any
  optimisation at analysis time, e.g. VAE-Var's) and ``analysis_peak_mib``; ensemble models at
  ``--members`` N members, with ``member_ms`` = ``analysis_ms / N``.

Peak memory is CUDA's ``max_memory_allocated`` on a GPU, else the process's resident set
(RSS) sampled every 2 ms during the timed calls (absolute, the interpreter included). With
``--amp`` on CUDA the forward passes run under ``torch.autocast`` (float16), as in training.
Needs torch and numpy (xarray for models with ``needs_fit``); imports no zarr, dask, xbatcher or
datasets itself. The table is followed by a ``note:`` line per model with something to say (a
skipped fit). The last line is ``name=value`` pairs: ``<model>_<quantity>=value`` for every
model and quantity, plus ``size``, ``device``, ``models`` and ``failed`` (a failing model is
reported and the script exits with status 1).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from baselines.checkpoint import model_kwargs, takes_modality_chans
from baselines.interface import DABatch
from baselines.models.multi import adapter_of
from baselines.registry import create_model, list_models

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

    @staticmethod
    def _current_rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._rss = max(self._rss, self._current_rss())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/statm"):
            self._rss = self._current_rss()
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
            self.peak_mib = max(self._rss, self._current_rss()) / 2**20
        else:
            self.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def build(name: str, size: str) -> torch.nn.Module:
    """``create_model(name)``; a composed model whose host also takes a modality count (e.g.
    ``multi_slams_*``) is rebuilt as ``baselines/train.py`` builds it, with the count from its
    adapter's modality names (:func:`baselines.checkpoint.model_kwargs`), so both take the same
    ``batch.modalities``."""
    model = create_model(name)
    adapter = adapter_of(model)
    if adapter is None or not takes_modality_chans(name):
        return model
    in_chans = getattr(model, "in_chans", None) or _DEFAULT_IN_CHANS[size]
    names = list(adapter.modalities)
    return create_model(name, **model_kwargs(name, {}, channels=[""] * in_chans, modalities=names))


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


def data_split(folder: str):
    """``(dataset, stats)`` of a built dataset (``--data``), every cycle labelled ``train``
    (a rehearsal's cycles may all lie in one split), for ``fit`` and the loaders."""
    from dambench.load import open_dataset, stats_from_attrs

    ds = open_dataset(folder)
    ds = ds.assign_coords(split=("time", ["train"] * ds.sizes["time"]))
    return ds, stats_from_attrs(ds)


def data_batches(folder: str, model, batch_size: int, device: torch.device):
    """``(train_batch, analysis_batch)`` from a built dataset (``--data``): the first training
    batch (fresh observations, as ``train.py`` draws them) and the first stored-observation
    batch through :func:`dambench.batching.make_dataloader`, with the modalities the model
    takes."""
    from dambench.batching import make_dataloader

    ds, stats = data_split(folder)
    batches = []
    for train in (True, False):
        loader = make_dataloader(
            ds, batch_size=batch_size if train else 1, train=train, stats=stats,
            model_info=model.info,
        )  # fmt: skip
        batches.append(DABatch.from_loader(next(iter(loader))).to(device))
    return batches[0], batches[1]


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


def fit_or_fill(
    model: torch.nn.Module, in_chans: int, data: str | None = None
) -> tuple[dict[str, float], str | None]:
    """``({"fit_s": seconds}, None)`` after ``model.fit`` on the synthetic split (or on every
    cycle of the ``--data`` folder); where the fit
    needs a package that is not installed (an ``ImportError``: the data stack on the GPU
    image), ``({"fit_skipped": 1.0}, note)`` with the unfitted statistics filled at random
    (:func:`fill_unfitted`) and the note naming the error and the buffers."""
    start = time.perf_counter()
    try:
        if data:
            model.fit(*data_split(data))
        else:
            model.fit(*synthetic_train_split(in_chans))
    except ImportError as err:  # MissingDependencyError is one too
        filled = fill_unfitted(model)
        reason = f"{type(err).__name__}: {err}".replace("\n", " ")[:200]
        note = f"fit skipped ({reason}); random values for unfitted buffers {filled}"
        return {"fit_skipped": 1.0}, note
    return {"fit_s": time.perf_counter() - start}, None


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


def bench_training(model, batch: DABatch, args, device: torch.device) -> dict[str, float]:
    """Step time, samples/s and peak memory of (loss, backward, AdamW step)."""
    model.train()
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
    """Latency of ``analyse`` for one cycle (at ``--members`` for ensemble models)."""
    model.eval()
    members = args.members if model.info.output == "ensemble" else None

    def analyse() -> None:
        with torch.autocast(device.type, enabled=args.amp and device.type == "cuda"):
            model.analyse(batch, members=members, seed=0)

    with PeakMemory(device) as memory:
        seconds = best_time(analyse, args.repeats, args.warmup, device)
    out = {"analysis_ms": 1e3 * seconds, "analysis_peak_mib": memory.peak_mib}
    if members is not None:
        out.update(members=float(members), member_ms=1e3 * seconds / members)
    return out


def bench_model(name: str, args, device: torch.device) -> tuple[dict[str, float], str | None]:
    """All figures of one registered model, and a note (``None`` when there is nothing to
    say). The model is on ``device`` before ``fit``, as in ``baselines/train.py``."""
    torch.manual_seed(0)
    model = build(name, args.size).to(device)
    in_chans = getattr(model, "in_chans", None) or _DEFAULT_IN_CHANS[args.size]
    m = modality_count(model)
    out: dict[str, float] = {"in_chans": float(in_chans), "modalities": float(m)}
    note = None
    if model.info.needs_fit:
        fitted, note = fit_or_fill(model, in_chans, args.data)
        out.update(fitted)
    out["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    out["adamw_state_mib"] = 4 * 4 * out["params_m"] * 1e6 / 2**20  # weights, grads, m, v
    if args.data:
        train_batch, batch = data_batches(args.data, model, args.batch_size, device)
    else:
        train_batch = random_batch(in_chans, args.batch_size, device, modalities=m)
        batch = random_batch(in_chans, 1, device, seed=1, modalities=m)
    if model.info.trainable:
        out.update(bench_training(model, train_batch, args, device))
        model.zero_grad(set_to_none=True)
    out.update(bench_analysis(model, batch, args, device))
    return out, note


def _format_table(results: dict[str, dict[str, float] | str]) -> str:
    columns = ["in_chans", "modalities", "params_m", "adamw_state_mib", "fit_s", "step_ms",
               "samples_per_s",
               "train_peak_mib", "analysis_ms", "members", "member_ms",
               "analysis_peak_mib"]  # fmt: skip
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in results.items():
        if isinstance(row, str):
            lines.append(f"| {name} | FAILED: {row} |")
            continue
        cells = [f"{row[c]:.4g}" if c in row else "-" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = [n for n in list_models(f"*_{args.size}") if n in list_models(args.models)]
    results: dict[str, dict[str, float] | str] = {}
    notes: dict[str, str] = {}
    for name in names:
        try:
            results[name], note = bench_model(name, args, device)
        except Exception as err:  # report every model; a failure is shown and sets the status
            results[name], note = f"{type(err).__name__}: {err}".replace("\n", " ")[:300], None
        if note is not None:
            notes[name] = note
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={device} ({card}), torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, amp={args.amp}, repeats={args.repeats}")  # fmt: skip
    print(_format_table(results))
    for name, note in notes.items():
        print(f"note: {name}: {note}")
    failed = [name for name, row in results.items() if isinstance(row, str)]
    pairs = {"size": args.size, "device": device.type, "models": len(names), "failed": len(failed)}
    for name, row in results.items():
        if not isinstance(row, str):
            pairs.update({f"{name}_{key}": f"{value:.4g}" for key, value in row.items()})
    print(" ".join(f"{key}={value}" for key, value in pairs.items()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
