"""A corrupted chunk of the dataset's background or observation array ends ``dambench
evaluate`` in one line naming the file and ``dambench verify``.

Regression of issue 18: the scorer read the background (the ``Background`` row) and the
observations (the observation-space statistics) around :func:`dambench.load.read_block`, so a
damaged chunk of either ended in a zarr/asyncio traceback naming no file.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from dambench.cli import main
from dambench.exceptions import DambenchIntegrityError
from dambench.load import ensure_embedded, open_dataset, read_cycle
from dambench.scoring import evaluate_predictions
from dambench.testing import write_prediction_store

STORE = "era5-sample.zarr"


@pytest.fixture
def folder(tmp_path):
    """A private copy of the built era5-sample folder."""
    return shutil.copytree(ensure_embedded(), tmp_path / "era5-sample")


@pytest.fixture
def predictions(folder, tmp_path):
    """The target of the test split plus a small offset, as a prediction store (read before
    any damage)."""
    ds = open_dataset(folder, split="test").load()
    return write_prediction_store(tmp_path / "pred.zarr", ds, "target", offset=0.1, model="near")


def _flip(path, at: float = 0.5, n: int = 16) -> None:
    """Invert ``n`` bytes at fraction ``at`` of a file (its size is unchanged, so only the
    chunk's checksum can tell)."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    data[start : start + n] = bytes(b ^ 0xFF for b in data[start : start + n])
    path.write_bytes(bytes(data))


def _test_shard(folder, variable: str) -> str:
    """The key of the shard holding the last test cycle of ``variable``."""
    ds = open_dataset(folder)
    last = int(np.flatnonzero(ds["split"].values == "test")[-1])
    per_shard = ds[variable].encoding["shards"][0]
    return f"c/{last // per_shard}/0/0/0"


def _evaluate_cli(capsys, predictions, folder, out) -> tuple[int, list[str]]:
    code = main(
        ["evaluate", "--predictions", str(predictions), "--dataset", str(folder),
         "--out", str(out), "--bootstrap", "20", "--quiet"]
    )  # fmt: skip
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("variable", ["background", "observation"])
def test_a_corrupted_chunk_is_one_line_naming_the_file_and_verify(
    folder, predictions, tmp_path, capsys, variable
):
    shard = _test_shard(folder, variable)
    _flip(folder / STORE / variable / shard)
    code, lines = _evaluate_cli(capsys, predictions, folder, tmp_path / "out")
    assert code != 0 and len(lines) == 1, lines
    assert f"{folder / STORE}/{variable}/{shard}" in lines[0]
    assert f"dambench verify {folder}" in lines[0]
    assert "Traceback" not in lines[0]
    assert not (tmp_path / "out").exists()  # nothing half-written
    with pytest.raises(DambenchIntegrityError, match=rf"{variable}/{shard} \(cycle "):
        evaluate_predictions(predictions, folder, n_resamples=20, figure_channel=None)


def test_read_cycle_equals_the_plain_read(folder):
    ds = open_dataset(folder, split="test")
    time = ds.time.values[3]
    for channels in (None, ["t2m", "msl"], "t2m"):
        picked = {"time": time} | ({} if channels is None else {"channel": channels})
        expected = ds["background"].sel(picked).load()
        assert read_cycle(ds, "background", time, channels).identical(expected)
