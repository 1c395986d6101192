"""Seconds by stage of a build, measured from outside the package by wrapping its functions.

:class:`StageClock` replaces named functions (``owner.attribute``) by timing wrappers. Time is
exclusive: a wrapped call nested in another (in the same thread) is subtracted from its caller.
Inside a *sticky* stage every nested wrapped call counts to that stage (the regridding of a
modality counts to ``modalities``, the zarr writes of a shard to ``write``). Seconds are summed
over threads: with several worker threads they are worker-seconds.
"""

from __future__ import annotations

import functools
import importlib
import threading
import time
from collections import defaultdict

# stage -> (owner "module" or "module:Class", attribute, sticky)
BUILD_HOOKS = {
    "setup": [("dambench.assembly.recipes:FengwuRecipe", "__init__", True)],
    "read": [("dambench.sources.era5:Era5Reader", "__call__", False)],
    "regrid": [("dambench.regrid:Regridder", "regrid_array", False)],
    "forecaster": [("dambench.backgrounds.onnx:OnnxForecaster", "step", False)],
    "observe": [("dambench.assembly.recipes", "observe", False)],
    "modalities": [("dambench.assembly.recipes:FengwuRecipe", "modalities", True)],
    "write": [("dambench.assembly.writers", "write_store_block", True)],
    "other": [("dambench.assembly.recipes:FengwuRecipe", "block", False)],
    "finalise": [
        ("dambench.assembly.builder", "_write_parquet", True),
        ("dambench.assembly.builder", "_train_stats", True),
        ("dambench.assembly.builder", "_write_preview", True),
        ("dambench.assembly.builder", "_write_card", True),
        ("dambench.assembly.builder", "_write_manifest", True),
    ],
}
"""The functions timed for each stage of an era5-fengwu build. ``other``: what
``FengwuRecipe.block`` spends outside the named stages (concatenation, dtype conversion,
normalisation of the forecaster's states)."""


def _resolve(owner: str):
    module_name, _, class_name = owner.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name) if class_name else module


class StageClock:
    """Exclusive wall seconds and call counts per stage (see the module docstring)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.missing: list[str] = []
        self._local = threading.local()
        self._lock = threading.Lock()

    def install(self, hooks: dict = BUILD_HOOKS) -> None:
        """Wrap every function of ``hooks``; those not found are listed in :attr:`missing`."""
        for stage, targets in hooks.items():
            for owner, attribute, sticky in targets:
                try:
                    holder = _resolve(owner)
                    original = getattr(holder, attribute)
                except (ImportError, AttributeError):
                    self.missing.append(f"{owner}.{attribute}")
                    continue
                setattr(holder, attribute, self._wrap(original, stage, sticky))

    def _wrap(self, func, stage: str, sticky: bool):
        @functools.wraps(func)
        def timed(*args, **kwargs):
            stack = self._local.__dict__.setdefault("stack", [])
            frame = [stage, sticky, 0.0]  # stage, sticky, seconds of nested calls
            stack.append(frame)
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                stack.pop()
                owner = next((f[0] for f in stack if f[1]), stage)
                self._add(owner, elapsed - frame[2], stage)
                if stack:
                    stack[-1][2] += elapsed

        return timed

    def _add(self, stage: str, seconds: float, called: str) -> None:
        with self._lock:
            self.seconds[stage] += seconds
            self.calls[called] += 1


def _status_mb(field: str) -> float:
    """``VmRSS``/``VmHWM`` of this process in MB (Linux ``/proc/self/status``)."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Start a new ``VmHWM`` from the current RSS (``clear_refs`` value 5, Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


class MemoryProbe:
    """Peak RSS by phase of a build and the RSS after each written block, for telling a peak
    that grows with the record from one that grows with the block. A phase's peak is ``VmHWM``
    at its end, reset at its start; a phase starts when its function is called (``setup``: from
    the start; ``shards``: the engine; then the finishing steps in order) and ends when the next
    starts. Linux only."""

    PHASES = {
        "shards": [("dambench.assembly.engines", "run_local"),
                   ("dambench.assembly.engines", "run_distributed")],
        "parquet": [("dambench.assembly.builder", "_write_parquet")],
        "statistics": [("dambench.assembly.builder", "_train_stats")],
        "preview": [("dambench.assembly.builder", "_write_preview")],
        "card, manifest": [("dambench.assembly.builder", "_write_card")],
    }

    def __init__(self) -> None:
        self.peaks_mb: dict[str, float] = {}
        self.after_blocks_mb: list[float] = []
        self._phase = "setup"
        _reset_peak()

    def install(self) -> None:
        for phase, targets in self.PHASES.items():
            for owner, attribute in targets:
                holder = _resolve(owner)
                setattr(holder, attribute, self._entering(getattr(holder, attribute), phase))
        writers = _resolve("dambench.assembly.writers")
        write = writers.write_store_block

        @functools.wraps(write)
        def written(*args, **kwargs):
            try:
                return write(*args, **kwargs)
            finally:
                self.after_blocks_mb.append(_status_mb("VmRSS"))

        writers.write_store_block = written

    def _entering(self, func, phase: str):
        @functools.wraps(func)
        def entered(*args, **kwargs):
            self.enter(phase)
            return func(*args, **kwargs)

        return entered

    def enter(self, phase: str) -> None:
        self.peaks_mb[self._phase] = _status_mb("VmHWM")
        _reset_peak()
        self._phase = phase

    def finish(self) -> dict:
        self.peaks_mb[self._phase] = _status_mb("VmHWM")
        return {"peaks_mb": dict(self.peaks_mb), "after_blocks_mb": list(self.after_blocks_mb)}
