"""What scoring reads is what the manifest attests, and damage surfaces as one line.

Regressions of issue 18: a same-size edit of the normalisation statistics in the store's root
``zarr.json`` changed MSE silently while ``summary.json`` recorded the clean digest; a corrupted
chunk or coordinate ended ``dambench evaluate`` in a 30-line zarr/asyncio traceback naming no
file; a Parquet checksum failure in ``load_rows`` named no file.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import xarray as xr

from dambench.cli import main
from dambench.exceptions import DambenchIntegrityError
from dambench.load import ensure_embedded, load_rows, open_dataset
from dambench.scoring import evaluate_predictions
from dambench.testing import write_prediction_store
from dambench.scoring.identity import dataset_identity
from dambench.verify import ManifestError

STORE = "era5-sample.zarr"


@pytest.fixture
def folder(tmp_path):
    """A private copy of the built era5-sample folder."""
    return shutil.copytree(ensure_embedded(), tmp_path / "era5-sample")


@pytest.fixture
def predictions(folder, tmp_path):
    """The background of the test split, written as a prediction store."""
    ds = open_dataset(folder, split="test").load()
    return write_prediction_store(tmp_path / "pred.zarr", ds, "background", model="copy")


def flip(path, at: float = 0.5, n: int = 16):
    """Invert ``n`` bytes at fraction ``at`` of a file (its size is unchanged)."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    data[start : start + n] = bytes(b ^ 0xFF for b in data[start : start + n])
    path.write_bytes(bytes(data))


def edit_one_digit_of_the_statistics(folder) -> None:
    """Change one digit of the first channel's mean in the root zarr.json (same size)."""
    path = folder / STORE / "zarr.json"
    text = path.read_text()
    norm = json.loads(json.loads(text)["attributes"]["normalization"])
    digits = repr(norm["mean"][0])
    index = next(i for i, c in enumerate(digits) if c.isdigit() and c not in "09")
    edited = digits[:index] + str(int(digits[index]) + 1) + digits[index + 1 :]
    assert text.count(digits) == 1
    path.write_text(text.replace(digits, edited))
    assert path.stat().st_size == len(text.encode())


def test_an_edit_of_the_statistics_is_refused_on_open(folder):
    edit_one_digit_of_the_statistics(folder)
    pattern = rf"changed files \['{STORE}/zarr.json'\].*`dambench verify {re.escape(str(folder))}`"
    with pytest.raises(ManifestError, match=pattern):
        open_dataset(folder)
    with pytest.raises(ManifestError, match="changed files"):
        dataset_identity(folder)


def test_an_edit_of_the_statistics_is_refused_by_the_scorer(folder, predictions):
    """Regression: the edit changed MSE and MAE, and the clean digest was recorded."""
    clean = evaluate_predictions(predictions, folder, n_resamples=20, figure_channel=None)
    assert clean.summary["dataset_digest"]
    edit_one_digit_of_the_statistics(folder)
    with pytest.raises(ManifestError, match=f"{STORE}/zarr.json"):
        evaluate_predictions(predictions, folder, n_resamples=20, figure_channel=None)


def test_edits_of_array_metadata_coordinates_and_stats_are_refused(folder):
    for relative in (f"{STORE}/time/c/0", f"{STORE}/latitude/zarr.json", "stats.json"):
        copy = folder.parent / relative.replace("/", "_")
        shutil.copytree(folder, copy)
        flip(copy / relative, n=1)
        with pytest.raises(ManifestError, match=rf"changed files \['{relative}'\]"):
            open_dataset(copy)


def _evaluate_cli(capsys, predictions, folder, out) -> tuple[int, list[str]]:
    code = main(
        ["evaluate", "--predictions", str(predictions), "--dataset", str(folder),
         "--out", str(out), "--bootstrap", "20", "--quiet"]
    )  # fmt: skip
    return code, capsys.readouterr().err.strip().splitlines()


def test_a_corrupted_coordinate_is_one_line_naming_the_file(folder, predictions, tmp_path, capsys):
    """Regression: a corrupted time coordinate ended in a traceback suggesting cftime."""
    flip(folder / STORE / "time" / "c" / "0", n=1)
    code, lines = _evaluate_cli(capsys, predictions, folder, tmp_path / "out")
    assert code != 0 and len(lines) == 1, lines
    assert f"{STORE}/time/c/0" in lines[0] and "dambench verify" in lines[0]
    assert "cftime" not in lines[0]


def _test_shard(folder) -> str:
    ds = open_dataset(folder)
    last = int(np.flatnonzero(ds["split"].values == "test")[-1])
    per_shard = ds["target"].encoding["shards"][0]
    return f"c/{last // per_shard}/0/0/0"


def test_a_corrupted_chunk_is_one_line_naming_store_array_and_chunk(
    folder, predictions, tmp_path, capsys
):
    """Regression: a corrupted chunk ended in a 30-line zarr/asyncio traceback naming no file."""
    shard = _test_shard(folder)
    flip(folder / STORE / "target" / shard, at=0.5)
    code, lines = _evaluate_cli(capsys, predictions, folder, tmp_path / "out")
    assert code != 0 and len(lines) == 1, lines
    assert f"{folder / STORE}/target/{shard}" in lines[0]
    assert f"dambench verify {folder}" in lines[0]
    with pytest.raises(DambenchIntegrityError, match="checksum"):
        evaluate_predictions(predictions, folder, n_resamples=20, figure_channel=None)


def test_a_truncated_prediction_chunk_names_the_prediction_store(folder, predictions):
    chunk = sorted(p for p in (predictions / "analysis" / "c").rglob("*") if p.is_file())[2]
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    key = chunk.relative_to(predictions / "analysis").as_posix()
    with pytest.raises(DambenchIntegrityError, match=rf"pred.zarr/analysis/{key} \(cycle "):
        evaluate_predictions(predictions, folder, n_resamples=20, figure_channel=None)


def test_a_parquet_checksum_failure_names_the_file(folder, tmp_path):
    """Regression: load_rows said only "An error occurred while generating the dataset"."""
    parquet = "data/train-00000-of-00002.parquet"
    flip(folder / parquet, n=64)
    pattern = rf"page checksum failed in .*: {parquet} \(OSError: .*CRC.*dambench verify"
    with pytest.raises(DambenchIntegrityError, match=pattern):
        load_rows(folder, split="train", cache_dir=str(tmp_path / "hf"))


def test_intact_reads_are_unchanged(folder, predictions):
    ds = open_dataset(folder, split="test")
    from dambench.load import read_block

    block = read_block(ds, "target", {"time": ds.time.values[:2]})
    xr.testing.assert_identical(block, ds["target"].isel(time=slice(0, 2)).load())
    assert evaluate_predictions(predictions, folder, n_resamples=20, figure_channel=None).summary


def test_a_parquet_checksum_failure_from_the_hub_is_one_error_with_the_remedy(monkeypatch):
    import datasets

    from dambench import load

    def damaged(*args, **kwargs):
        try:
            raise OSError("could not verify page integrity, CRC checksum verification failed")
        except OSError as err:
            raise datasets.exceptions.DatasetGenerationError("An error occurred") from err

    monkeypatch.setattr(load, "guard_hub", lambda location: None)
    monkeypatch.setattr(datasets, "load_dataset", damaged)
    pattern = r"failed reading hf://datasets/dambench/era5-fengwu.*OSError.*dambench verify"
    with pytest.raises(DambenchIntegrityError, match=pattern):
        load_rows("era5-fengwu", split="train")
