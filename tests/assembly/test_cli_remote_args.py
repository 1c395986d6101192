"""dambench build's remote arguments: --fengwu URL is kept verbatim (its statistics beside it
as URLs), and on failure the CLI prints one error line, without the remote libraries' logs."""

from __future__ import annotations

import argparse
import subprocess
import sys

from dambench.cli import _fengwu_background


def _args(model: str, mean: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(fengwu=model, fengwu_mean=mean, fengwu_std=None)


def test_fengwu_url_stays_a_url():
    url = "http://127.0.0.1:8080/fengwu/fengwu_v1.onnx"
    background = _fengwu_background({"lead_hours": 24}, _args(url))
    assert background == {
        "lead_hours": 24,
        "model": url,
        "mean": "http://127.0.0.1:8080/fengwu/global_means.npy",
        "std": "http://127.0.0.1:8080/fengwu/global_stds.npy",
    }
    given = _fengwu_background({}, _args("gs://bucket/fengwu_v1.onnx", mean="m.npy"))
    assert given["mean"] == "m.npy" and given["std"] == "gs://bucket/global_stds.npy"


def test_fengwu_local_path_takes_the_statistics_beside_it(tmp_path):
    background = _fengwu_background({}, _args(str(tmp_path / "fengwu_v1.onnx")))
    assert background["mean"] == str(tmp_path / "global_means.npy")


FAILING_BUILD = """
import logging, sys
from dambench import cli
from dambench.exceptions import DambenchRemoteError

def failing(args):
    logging.getLogger("gcsfs").error("Location failed: {'x-goog': 'noise'}")
    logging.getLogger("aiohttp.client").warning("noise from aiohttp")
    logging.getLogger("asyncio").error("Unclosed client session")
    logging.getLogger("dambench.assembly").warning("kept: a dambench warning")
    raise DambenchRemoteError("Cannot read gs://bucket/store.zarr: unknown host")

cli._build = failing
sys.exit(cli.main(sys.argv[1:]))
"""


def _run(*flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", FAILING_BUILD, *flags, "build", "era5-fengwu", "--out", "x"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_failure_prints_one_error_line_without_dependency_logs():
    done = _run()
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "WARNING dambench.assembly: kept: a dambench warning",
        "dambench build: error: Cannot read gs://bucket/store.zarr: unknown host "
        "(--debug shows the traceback)",
    ], done.stderr


def test_debug_shows_the_dependency_logs():
    done = _run("--debug")
    assert "Location failed" in done.stderr and "Unclosed client session" in done.stderr
