"""benchmarks/bench_rehearsal.py reporting: the block size is an option and is printed; with
--scheduler the stage figures are said to be unmeasured instead of printed as zeros; a child's
peak RSS is its own, not the benchmark process's; the peak is reported by phase."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_rehearsal.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_rehearsal_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(cycles_per_shard: int) -> dict:
    """A build result as child_build writes it (8 cycles, 4 forecaster steps each)."""
    seconds = {"read": 16.0, "forecaster": 3.2, "write": 1.6, "setup": 2.0, "finalise": 0.8}
    return {
        "build_s": 24.0,
        "seconds": seconds,
        "calls": {"forecaster": 32},
        "missing_hooks": [],
        "peak_rss_mb": 1000.0,
        "cycles_per_shard": cycles_per_shard,
        "memory": {
            "peaks_mb": {"setup": 220.0, "shards": 800.0, "preview": 1000.0},
            "after_blocks_mb": [600.0, 650.0],
        },
    }


def test_cycles_per_shard_is_an_option_and_is_printed(bench):
    args = bench.parse_args(["--cycles", "8", "--cycles-per-shard", "4"])
    assert args.cycles_per_shard == 4
    header = bench.header_lines(args, 8, _result(4))
    assert "4 cycles per shard (--cycles-per-shard)" in header[0]
    shipped = bench.parse_args(["--cycles", "8"])
    assert "32 cycles per shard (the config's)" in bench.header_lines(shipped, 8, _result(32))[0]
    with pytest.raises(SystemExit):
        bench.parse_args(["--cycles-per-shard", "0"])


def test_threads_print_the_stage_figures(bench):
    args = bench.parse_args(["--cycles", "8"])
    stages, projection, hours = bench.figure_lines(args, 8, _result(32))
    assert any(line.split()[:2] == ["read", "2.00"] for line in stages)
    assert "(4 steps per cycle, 0.10 s/step)" in "\n".join(stages)
    assert projection[0].startswith("projection, full build") and hours > 0


def test_scheduler_says_the_stages_are_not_measured(bench):
    args = bench.parse_args(["--cycles", "8", "--scheduler", "tcp://127.0.0.1:8786"])
    stages, projection, hours = bench.figure_lines(args, 8, _result(32))
    assert stages == [bench.SCHEDULER_STAGES_NOTE] and "NOT MEASURED" in stages[0]
    assert projection == [bench.SCHEDULER_PROJECTION_NOTE] and math.isnan(hours)
    assert "workers are not measured" in bench.header_lines(args, 8, _result(32))[1]


def test_a_child_s_peak_rss_is_its_own_not_the_benchmark_s(bench):
    """Regression: Linux keeps the peak RSS across fork and exec, so a child forked from the
    benchmark process reported at least the benchmark's own RSS (evaluate printed the same
    3,880 MB for every split)."""
    import numpy as np

    held = np.ones(400 * 2**20 // 8)  # 400 MiB resident in this process
    status, _, idle_mb, _ = bench.run_measured([sys.executable, "-c", "pass"])
    assert status == 0 and held.sum() > 0
    assert idle_mb < 200, idle_mb
    grow = "import numpy as np; a = np.ones(300 * 2**20 // 8); print(a.sum())"
    status, _, grown_mb, output = bench.run_measured([sys.executable, "-c", grow])
    assert status == 0 and output.strip()
    assert 300 <= grown_mb < 600, grown_mb
    status, *_ = bench.run_measured([sys.executable, "-c", "raise SystemExit(3)"])
    assert status == 3


def test_the_peak_is_printed_by_phase_with_the_rss_after_each_block(bench):
    line = bench.header_lines(bench.parse_args(["--cycles", "8"]), 8, _result(4))[2]
    assert "setup 220, shards 800, preview 1000" in line
    assert "after block 1 of 2: 600 MB, after the last: 650 MB, largest: 650 MB" in line


def test_memory_probe_gives_each_phase_its_own_peak():
    """A phase's peak is its own: a large allocation freed before the next phase does not raise
    the next phase's peak (the kernel's peak is reset between phases)."""
    import numpy as np

    sys.path.insert(0, str(BENCH.parent))
    from _stages import MemoryProbe

    probe = MemoryProbe()
    big = np.ones(300 * 2**20 // 8)  # 300 MiB resident in "setup"
    assert big.sum() > 0
    del big
    probe.enter("shards")
    small = np.ones(50 * 2**20 // 8)
    assert small.sum() > 0
    peaks = probe.finish()["peaks_mb"]
    assert peaks["setup"] - peaks["shards"] > 200, peaks
    assert peaks["shards"] > 50, peaks
