"""Publishing: manifest verification, the Hub calls (with a recording fake), offline failures."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dambench.assembly.publish import (
    HIDDEN_PATTERNS,
    HubUnreachableError,
    ManifestError,
    RemoteMismatchError,
    git_blob_sha1,
    is_network_error,
    publish,
    verify_manifest,
    verify_remote,
)
from dambench.exceptions import DambenchError, DambenchInputError

REPO = "dambench/era5-sample"
PARQUET = "data/test-00000-of-00001.parquet"


def write_manifest(folder: Path, name: str = "era5-sample") -> dict:
    """manifest.json listing every non-hidden file of ``folder`` (as the builder writes it)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative != "manifest.json" and not relative.startswith("."):
            data = path.read_bytes()
            files[relative] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest = {"name": name, "schema_version": "1.0", "files": files}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def make_folder(folder: Path) -> Path:
    """A small built folder: Parquet splits, a Zarr-like store, stats.json, README.md, manifest."""
    (folder / "data").mkdir(parents=True)
    names = [
        "train-00000-of-00002",
        "train-00001-of-00002",
        "validation-00000-of-00001",
        "test-00000-of-00001",
    ]
    for i, name in enumerate(names):
        values = np.full((2, 2 * 3 * 4), i, np.float32)
        table = pa.table(
            {
                "time": pa.array(np.array(["2026-03-25", "2026-03-26"], dtype="datetime64[ns]")),
                "target": pa.array(list(values)),
            }
        )
        pq.write_table(table, folder / "data" / f"{name}.parquet")
    store = folder / "era5-sample.zarr"
    (store / "target" / "c" / "0" / "0" / "0").mkdir(parents=True)
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    (store / "target" / "c" / "0" / "0" / "0" / "0").write_bytes(bytes(range(256)) * 4)
    (folder / "stats.json").write_text(
        json.dumps({"channels": ["u10"], "mean": [0.0], "std": [1.0], "split": "train"})
    )
    (folder / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# card\n")
    write_manifest(folder)
    return folder


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "era5-sample")


class RecordingApi:
    """Records the HfApi calls publish makes; its tree mirrors what was 'uploaded'."""

    def __init__(self, large=True, tamper=None):
        self.calls = []
        self.uploaded = None
        self.tamper = tamper or {}
        if large:
            self.upload_large_folder = self._upload

    def create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))

    def create_branch(self, *args, **kwargs):
        self.calls.append(("create_branch", args, kwargs))

    def upload_folder(self, **kwargs):
        self._upload(**kwargs)
        self.calls[-1] = ("upload_folder", (), kwargs)

    def _upload(self, **kwargs):
        self.calls.append(("upload_large_folder", (), kwargs))
        self.uploaded = Path(kwargs["folder_path"])

    def list_repo_tree(self, *args, **kwargs):
        from huggingface_hub.hf_api import RepoFile, RepoFolder

        self.calls.append(("list_repo_tree", args, kwargs))
        entries = [RepoFile(path=".gitattributes", size=3, oid="0" * 40)]
        for path in sorted(self.uploaded.rglob("*")):
            relative = path.relative_to(self.uploaded).as_posix()
            if relative.startswith(".") or relative in self.tamper.get("drop", ()):
                continue
            if path.is_dir():
                entries.append(RepoFolder(path=relative, oid="1" * 40))
                continue
            data = path.read_bytes()
            if relative in self.tamper.get("change", ()):
                data = data + b"!"
            if path.suffix == ".parquet":  # LFS/Xet: the Hub reports sha256
                lfs = {
                    "size": len(data),
                    "oid": hashlib.sha256(data).hexdigest(),
                    "pointerSize": 130,
                }
                entries.append(RepoFile(path=relative, size=len(data), oid="2" * 40, lfs=lfs))
            else:
                blob = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
                entries.append(RepoFile(path=relative, size=len(data), oid=blob))
        return iter(entries)

    def names(self):
        return [call[0] for call in self.calls]


# --- verify_manifest ----------------------------------------------------------------------------


def test_verify_accepts_an_intact_folder_and_ignores_hidden_folders(folder):
    (folder / ".cache" / "huggingface").mkdir(parents=True)
    (folder / ".cache" / "huggingface" / "upload.lock").write_text("x")
    (folder / "data" / ".partial.tmp").write_text("x")
    manifest = verify_manifest(folder)
    assert manifest["name"] == "era5-sample"
    assert set(manifest["files"]) == {
        "README.md",
        "stats.json",
        "era5-sample.zarr/zarr.json",
        "era5-sample.zarr/target/c/0/0/0/0",
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
        "data/validation-00000-of-00001.parquet",
        PARQUET,
    }


def test_a_tampered_byte_is_named(folder):
    target = folder / PARQUET
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=rf"changed files \['{PARQUET}'\]") as info:
        verify_manifest(folder)
    assert isinstance(info.value, DambenchInputError)


def test_a_resized_file_is_named(folder):
    with open(folder / "stats.json", "a") as handle:
        handle.write(" ")
    with pytest.raises(ManifestError, match=r"changed files \['stats.json'\]"):
        verify_manifest(folder)


def test_missing_and_unlisted_files_are_named(folder):
    (folder / "era5-sample.zarr" / "target" / "c" / "0" / "0" / "0" / "0").unlink()
    (folder / "notes.txt").write_text("extra")
    message = (
        r"missing files \['era5-sample.zarr/target/c/0/0/0/0'\]; "
        r"files not in the manifest \['notes.txt'\]"
    )
    with pytest.raises(ManifestError, match=message):
        verify_manifest(folder)


def test_long_lists_are_cut(folder):
    for i in range(13):
        (folder / f"extra{i:02d}.txt").write_text("x")
    with pytest.raises(ManifestError, match=r"'extra09.txt'\] and 3 more \(13 in all\)"):
        verify_manifest(folder)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "has no manifest.json"),
        ("{not json", "not valid JSON"),
        ('{"name": "x"}', "no 'files' mapping"),
        (
            '{"files": {"../etc/passwd": {"sha256": "' + "0" * 64 + '", "bytes": 1}}}',
            r"invalid entries \['../etc/passwd'\]",
        ),
        ('{"files": {"stats.json": {"sha256": "abc", "bytes": 1}}}', "invalid entries"),
        (
            '{"files": {"stats.json": {"sha256": "' + "0" * 64 + '", "bytes": "1"}}}',
            "invalid entries",
        ),
    ],
)
def test_bad_manifests_are_refused(folder, content, message):
    if content is None:
        (folder / "manifest.json").unlink()
    else:
        (folder / "manifest.json").write_text(content)
    with pytest.raises(ManifestError, match=message):
        verify_manifest(folder)


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(ManifestError, match="is not a folder"):
        verify_manifest(tmp_path / "nothing")


# --- publish ------------------------------------------------------------------------------------


def test_publish_creates_the_repo_then_uploads_then_checks(folder):
    api = RecordingApi()
    url = publish(folder, REPO, api=api, private=True)
    assert url == "https://huggingface.co/datasets/dambench/era5-sample"
    assert api.names() == ["create_repo", "upload_large_folder", "list_repo_tree"]
    _, args, kwargs = api.calls[0]
    assert args == (REPO,) and kwargs == {"repo_type": "dataset", "exist_ok": True, "private": True}
    _, _, kwargs = api.calls[1]
    assert kwargs == {
        "repo_id": REPO,
        "folder_path": str(folder),
        "repo_type": "dataset",
        "revision": None,
        "ignore_patterns": list(HIDDEN_PATTERNS),
    }
    _, args, kwargs = api.calls[2]
    assert args == (REPO,) and kwargs["repo_type"] == "dataset" and kwargs["recursive"] is True


def test_publish_to_a_branch_creates_it(folder):
    api = RecordingApi()
    publish(folder, REPO, api=api, revision="v1.0", verify_upload=False)
    assert api.names() == ["create_repo", "create_branch", "upload_large_folder"]
    assert api.calls[1][2] == {"branch": "v1.0", "repo_type": "dataset", "exist_ok": True}
    assert api.calls[2][2]["revision"] == "v1.0"


def test_publish_falls_back_to_upload_folder(folder):
    api = RecordingApi(large=False)  # huggingface_hub 2.x has no upload_large_folder
    publish(folder, REPO, api=api)
    assert api.names() == ["create_repo", "upload_folder", "list_repo_tree"]
    kwargs = api.calls[1][2]
    assert kwargs["folder_path"] == str(folder) and kwargs["repo_type"] == "dataset"
    assert kwargs["ignore_patterns"] == list(HIDDEN_PATTERNS)


def test_publish_refuses_a_damaged_folder_before_any_hub_call(folder):
    api = RecordingApi()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["stats.json"]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"changed files \['stats.json'\]"):
        publish(folder, REPO, api=api)
    assert api.calls == []


def test_publish_offline_fails_fast_and_clearly(folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError, match="Hub.*intact and verified") as info:
        publish(folder, REPO, token="hf_not_a_real_token")
    assert time.perf_counter() - start < 5
    assert isinstance(info.value, DambenchError) and isinstance(info.value, ConnectionError)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == before
    verify_manifest(folder)


class FailingApi(RecordingApi):
    def __init__(self, error):
        super().__init__()
        self.error = error

    def create_repo(self, *args, **kwargs):
        raise self.error


def _http_client_errors():
    """Connection errors of the HTTP clients huggingface_hub has used (httpx2, httpx,
    requests), real where installed, else a stand-in class of the same name."""
    import importlib

    errors = []
    for module, name in (
        ("httpx2", "ConnectError"),
        ("httpx", "ConnectTimeout"),
        ("requests.exceptions", "ConnectionError"),
    ):
        try:
            cls = getattr(importlib.import_module(module), name)
        except ImportError:
            cls = type(name, (Exception,), {})
        errors.append(cls("no route to host"))
    return errors


def test_network_errors_become_hub_unreachable(folder):
    for error in (ConnectionError("refused"), TimeoutError("slow"), *_http_client_errors()):
        with pytest.raises(HubUnreachableError, match="Cannot reach the Hugging Face Hub"):
            publish(folder, REPO, api=FailingApi(error))


def test_other_hub_errors_pass_through(folder):
    with pytest.raises(PermissionError, match="no write access"):
        publish(folder, REPO, api=FailingApi(PermissionError("no write access")))


def test_network_errors_are_found_in_the_cause_chain():
    try:
        try:
            raise ConnectionError("socket")
        except ConnectionError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_network_error(outer)
    assert not is_network_error(ValueError("bad repo id"))


# --- verify_remote ------------------------------------------------------------------------------


def test_verify_remote_counts_every_file(folder):
    api = RecordingApi()
    api.uploaded = folder
    assert verify_remote(folder, REPO, api=api) == len(verify_manifest(folder)["files"]) + 1


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ({"drop": [PARQUET]}, rf"missing on the Hub \['{PARQUET}'\]"),
        ({"change": [PARQUET]}, rf"different on the Hub \['{PARQUET}'\]"),
        ({"change": ["stats.json"]}, r"different on the Hub \['stats.json'\]"),
        ({"drop": ["manifest.json"]}, r"missing on the Hub \['manifest.json'\]"),
    ],
)
def test_publish_reports_files_that_differ_on_the_hub(folder, tamper, message):
    with pytest.raises(RemoteMismatchError, match=message):
        publish(folder, REPO, api=RecordingApi(tamper=tamper))


def test_git_blob_sha1_matches_git(tmp_path):
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")  # `git hash-object hello.txt`
    assert git_blob_sha1(path) == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_a_copied_folder_still_verifies(folder, tmp_path):
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert verify_manifest(copy)["files"] == verify_manifest(folder)["files"]
