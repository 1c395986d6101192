"""Result folders that are whole (issue 18, item 3): one evaluation per ``--out`` at a time,
earlier results refused unless ``--overwrite``, a full disk leaves the folder as it was, two
concurrent runs and runs killed at random moments never leave a folder mixing two runs."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from test_comparison import write_store

from dambench.cli import main
from dambench.exceptions import DambenchError, DambenchInputError
from dambench.scoring import evaluate_predictions, outputs
from dambench.scoring.outputs import DambenchOutputError, ResultFolder

WHOLE = {
    "scores.parquet",
    "summary.json",
    "table3.md",
    "channels.md",
    "regions.md",
    "observed.md",
    "maps.png",
    "spectra.png",
    "per_cycle_mse.png",
}
"""What one deterministic evaluation with figures writes."""
KILLED_EVALUATIONS = int(os.environ.get("DAMBENCH_KILLED_EVALUATIONS", "3"))
"""Whole ``dambench evaluate`` runs killed in the test (each takes seconds; the writer test kills
10 writers at any moment of their writing); set the variable to 10 for the issue's 10 tries."""


@pytest.fixture(scope="module")
def store(sample_test, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stores")
    return write_store(sample_test, folder / "mine.zarr", ["u10", "v10", "t2m", "msl"], "mine")


def _argv(store, sample_folder, out, name, *extra) -> list[str]:
    return [
        "evaluate", "--predictions", str(store), "--dataset", str(sample_folder), "--out",
        str(out), "--name", name, "--bootstrap", "20", "--quiet", *extra,
    ]  # fmt: skip


def run_of(out: Path) -> tuple[str, str]:
    """(model name, run id) of a result folder, asserting that it is whole and that every
    file in it belongs to that one run."""
    from PIL import Image

    files = {p.name for p in out.iterdir() if p.name in outputs.OUTPUT_NAMES}
    assert files == WHOLE, f"incomplete or extra outputs: {sorted(files ^ WHOLE)}"
    summary = json.loads((out / "summary.json").read_text())
    run, model = summary["run"], summary["model"]
    for name in sorted(f for f in files if f.endswith(".md")):
        assert f"Evaluation run {run};" in (out / name).read_text(), name
    for name in sorted(f for f in files if f.endswith(".png")):
        with Image.open(out / name) as image:
            assert image.info.get("Description") == f"dambench run {run}", name
    models = set(pd.read_parquet(out / "scores.parquet")["model"])
    assert models == {model, "Background"}
    return model, run


def test_earlier_results_are_refused_unless_overwrite(store, sample_folder, tmp_path):
    out = tmp_path / "out"
    evaluate_predictions(store, sample_folder, out=out, n_resamples=20, figure_channel=None)
    (out / "predictions").mkdir()
    (out / "predictions" / "kept.txt").write_text("a model's own files")
    (out / "ensemble.md").write_text("left by an earlier ensemble run")
    before = (out / "summary.json").read_bytes()
    with pytest.raises(DambenchInputError, match="holds earlier results .*--overwrite"):
        evaluate_predictions(store, sample_folder, out=out, n_resamples=20, figure_channel=None)
    assert (out / "summary.json").read_bytes() == before
    evaluate_predictions(
        store, sample_folder, out=out, overwrite=True, n_resamples=20, figure_channel=None
    )
    assert (out / "summary.json").read_bytes() != before
    assert not (out / "ensemble.md").exists()  # the set of outputs is replaced as a whole
    assert (out / "predictions" / "kept.txt").read_text() == "a model's own files"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no lock, no staging left


class _FullDisk:
    """``open`` for the outputs module whose writes of ``name`` fail like a full disk, after
    part of the data is written."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        if Path(path).name != self.name:
            return handle
        original = handle.write

        def write(data):
            original(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        handle.write = write
        return handle


def test_a_full_disk_leaves_the_folder_as_it_was(
    store, sample_folder, tmp_path, monkeypatch, capsys
):
    """Regression: a full disk left a 0-byte table3.md beside the earlier results."""
    out = tmp_path / "out"
    assert main(_argv(store, sample_folder, out, "first")) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    monkeypatch.setattr(outputs, "open", _FullDisk("table3.md"), raising=False)
    assert main(_argv(store, sample_folder, out, "second", "--overwrite")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"No space left writing {out.absolute() / 'table3.md'}" in err and "free space" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True)  # fmt: skip
    return done.returncode == 0


def test_a_real_full_disk_writes_nothing(store, sample_folder, tmp_path):
    """On a 256 KiB tmpfs (root only) the maps do not fit: nothing is left behind."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "256k"):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        with pytest.raises(DambenchOutputError, match="No space left writing .*free space"):
            evaluate_predictions(store, sample_folder, out=disk / "out", n_resamples=20)
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_live_evaluation_holds_the_folder(store, sample_folder, tmp_path):
    out = tmp_path / "out"
    with ResultFolder(out):
        with pytest.raises(DambenchError, match=f"{out} is being written by another"):
            evaluate_predictions(store, sample_folder, out=out, n_resamples=20)


def _start(argv: list[str], module: bool = True) -> subprocess.Popen:
    """A subprocess of ``python -m dambench.cli ARGV`` (``module=False``: ``python ARGV``)."""
    return subprocess.Popen(
        [sys.executable, *(["-m", "dambench.cli"] if module else []), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_concurrent_runs_into_one_folder(store, sample_folder, tmp_path):
    out = tmp_path / "out"
    runs = [_start(_argv(store, sample_folder, out, n, "--overwrite")) for n in ("A", "B")]
    finished = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    for status, err in finished:
        assert status == 0 or "is being written by another evaluation" in err, err
    assert any(status == 0 for status, _ in finished)
    model, _ = run_of(out)
    winners = [n for n, (status, _) in zip("AB", finished, strict=True) if status == 0]
    assert model in winners


WRITER = """
import sys, uuid
from dambench.scoring.outputs import ResultFolder
names = sys.argv[2].split(",")
print("ready", flush=True)
while True:
    run = uuid.uuid4().hex.encode()
    with ResultFolder(sys.argv[1], overwrite=True) as folder:
        for name in names:
            folder.write(name, run * 4096)  # 128 KiB per file, fsynced
        folder.commit()
"""


def _runs_in(out: Path, names: list[str]) -> set[bytes]:
    """The run ids of the outputs in ``out`` (one when whole), asserting none is missing."""
    present = sorted(p.name for p in out.iterdir() if p.name in outputs.OUTPUT_NAMES)
    assert present == sorted(names), present
    return {(out / name).read_bytes()[:32] for name in names}


def test_writers_killed_at_random_moments_never_leave_a_mixed_folder(tmp_path):
    """10 writers, each replacing a folder's outputs as fast as it can (lock, staging, exchange,
    clean-up) and killed by SIGKILL at a random moment: each time the folder holds exactly one
    run's complete outputs."""
    out, names = tmp_path / "out", sorted(WHOLE)
    rng = random.Random(18)
    for _ in range(10):
        writer = _start(["-c", WRITER, str(out), ",".join(names)], module=False)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 1.5))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
        if out.exists():
            assert len(_runs_in(out, names)) == 1
    assert out.exists()


def _wait_for_staging(parent: Path, run: subprocess.Popen, timeout_s: float = 300) -> None:
    """Return once ``run`` has staged its first output (or ended)."""
    deadline = time.monotonic() + timeout_s
    while not any(parent.glob(f".out{outputs.STAGING}*/*")) and run.poll() is None:
        assert time.monotonic() < deadline, "the evaluation staged nothing"
        time.sleep(0.02)


def test_evaluations_killed_at_random_moments_never_leave_a_mixed_folder(
    store, sample_folder, tmp_path
):
    """``dambench evaluate`` runs into a folder holding a complete earlier run, each killed
    during its writing phase (0 to 5 s after its first output is staged, so some finish): the
    folder is always one run's complete outputs, and the killed holders' lock is taken over."""
    out = tmp_path / "out"
    first = _start(_argv(store, sample_folder, out, "run0"))
    assert first.wait(timeout=300) == 0, first.stderr.read()
    rng = random.Random(18)
    seen = []
    for k in range(1, 1 + KILLED_EVALUATIONS):
        run = _start(_argv(store, sample_folder, out, f"run{k}", "--overwrite"))
        _wait_for_staging(tmp_path, run)
        time.sleep(rng.uniform(0.0, 5.0))
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
        seen.append(run_of(out)[0])
    print(f"after {KILLED_EVALUATIONS} kills the folder held: {seen}")
    assert main(_argv(store, sample_folder, out, "last", "--overwrite")) == 0
    assert run_of(out)[0] == "last"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
