"""Integrity of a built folder: ``dambench verify``, checks on open, and checksums on read.

Each corruption here went unnoticed before (issue 9): flipped bytes in a Zarr shard or a Parquet
file were read as wrong values, a deleted shard as NaN.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dambench.cli import main
from dambench.exceptions import DambenchIntegrityError
from dambench.load import ensure_embedded, load_rows, open_dataset
from dambench.verify import ManifestError, UnfinishedBuildError, verify

SHARD = "era5-sample.zarr/target/c/1/0/0/0"
PARQUET = "data/train-00000-of-00002.parquet"


@pytest.fixture
def folder(tmp_path):
    """A private copy of the built era5-sample folder (built once per session in the cache)."""
    return shutil.copytree(ensure_embedded(), tmp_path / "era5-sample")


def flip(path, n=64):
    """Invert ``n`` bytes in the middle of a file (its size is unchanged)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + n] = bytes(b ^ 0xFF for b in data[middle : middle + n])
    path.write_bytes(bytes(data))


def test_an_intact_folder_verifies(folder):
    report = verify(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert report.ok and report.n_files == len(manifest["files"]) > 40
    assert report.n_bytes == sum(entry["bytes"] for entry in manifest["files"].values())
    assert "match manifest.json (sha256)" in report.summary()


@pytest.mark.parametrize("relative", [SHARD, PARQUET, "README.md"])
def test_flipped_bytes_are_named(folder, relative):
    flip(folder / relative)
    with pytest.raises(ManifestError, match=rf"changed files \['{relative}'\]") as info:
        verify(folder)
    assert isinstance(info.value, DambenchIntegrityError)
    assert verify(folder, hashes=False).ok  # same size: only the hash sees it
    report = verify(folder, strict=False)
    assert report.changed == [relative] and not report.ok


def test_missing_extra_and_leftover_files_are_named(folder):
    (folder / SHARD).unlink()
    (folder / "notes.txt").write_text("mine")
    report = verify(folder, strict=False)
    assert report.missing == [SHARD] and report.extra == ["notes.txt"]
    # a manifest listing a leftover of an interrupted write (what dambench 0.1 could write)
    partial = "era5-sample.zarr/target/c/0.0f3a.partial"
    (folder / partial).write_bytes(b"half")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][partial] = {
        "sha256": __import__("hashlib").sha256(b"half").hexdigest(),
        "bytes": 4,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    report = verify(folder, strict=False)
    assert report.leftovers == [partial]
    assert "leftovers of interrupted writes" in report.summary()


def test_a_corrupt_or_absent_manifest_names_the_file(folder):
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match=r"manifest\.json is not valid JSON"):
        verify(folder)
    with pytest.raises(ManifestError, match=r"manifest\.json is not valid JSON"):
        open_dataset(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(ManifestError, match="no manifest.json and no .dambench-build"):
        open_dataset(folder)  # the store says it is a dambench dataset: an incomplete copy


def test_an_unfinished_folder_is_refused_by_every_reader(folder):
    (folder / "manifest.json").unlink()
    (folder / ".dambench-build").mkdir()
    for read in (verify, open_dataset, lambda f: load_rows(f, split="train")):
        with pytest.raises(UnfinishedBuildError, match="unfinished dambench build.*resume"):
            read(folder)


def test_flipped_zarr_bytes_fail_on_read(folder):
    flip(folder / SHARD)
    ds = open_dataset(folder)  # sizes match: opens
    assert ds["target"].isel(time=0).values.shape == (4, 121, 240)  # shard 0 is intact
    with pytest.raises(ValueError, match="checksum"):
        ds["target"].isel(time=slice(8, 16)).load()  # the crc32c of a chunk of shard 1
    with pytest.raises(ManifestError, match=rf"changed files \['{SHARD}'\]"):
        open_dataset(folder, verify=True)


def test_flipped_parquet_bytes_fail_on_read(folder):
    flip(folder / PARQUET)
    rows = load_rows(folder, split="train", streaming=True).with_format("numpy")
    with pytest.raises(OSError, match="CRC checksum verification failed"):
        for _ in rows:
            pass
    with pytest.raises(ManifestError, match=rf"changed files \['{PARQUET}'\]"):
        load_rows(folder, split="train", streaming=True, verify=True)


def test_a_deleted_shard_is_refused_not_read_as_nan(folder):
    (folder / SHARD).unlink()
    with pytest.raises(ManifestError, match=rf"missing files \['{SHARD}'\]"):
        open_dataset(folder)


def test_load_rows_reads_the_same_arrays_as_open_dataset(folder):
    ds = open_dataset(folder, split="validation").load()
    rows = load_rows(folder, split="validation", cache_dir=str(folder.parent / "hf"))
    rows = rows.with_format("numpy")
    np.testing.assert_array_equal(np.stack(rows["target"]), ds["target"].values)


def test_urls_are_verified_through_fsspec(folder):
    assert verify(f"file://{folder}").ok
    flip(folder / PARQUET)
    assert verify(f"file://{folder}", strict=False).changed == [PARQUET]


def test_verify_command_lists_files_and_sets_the_exit_status(folder, capsys):
    assert main(["verify", str(folder)]) == 0
    assert "files" in capsys.readouterr().out
    flip(folder / SHARD)
    (folder / "data" / "test-00000-of-00001.parquet").unlink()
    assert main(["verify", str(folder)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert f"changed: {SHARD}" in out and "missing: data/test-00000-of-00001.parquet" in out
    assert "does not match its manifest.json" in out[-1]
    assert main(["verify", str(folder), "--quick"]) == 1  # the missing file, by listing alone
