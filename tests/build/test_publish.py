import json
import shutil
import time

import pytest

from dambench.build import build
from dambench.build.publish import HubUnreachableError, ManifestError, publish, verify_manifest


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build("era5-sample", tmp_path_factory.mktemp("pub") / "era5-sample", verbose=False)


@pytest.fixture
def copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


class RecordingApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))

    def upload_large_folder(self, **kwargs):
        self.calls.append(("upload_large_folder", (), kwargs))


def test_verify_accepts_a_fresh_build(folder):
    manifest = verify_manifest(folder)
    assert manifest["name"] == "era5-sample" and len(manifest["files"]) > 20


def test_verify_names_tampered_missing_and_extra_files(copy):
    target = copy / "data" / "test-00000-of-00001.parquet"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(
        ManifestError, match=r"changed files \['data/test-00000-of-00001.parquet'\]"
    ):
        verify_manifest(copy)
    (copy / "stats.json").unlink()
    (copy / "notes.txt").write_text("extra")
    with pytest.raises(ManifestError, match=r"missing files \['stats.json'\].*not in the manifest"):
        verify_manifest(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ManifestError, match="no manifest.json"):
        verify_manifest(copy)


def test_publish_calls_the_hub_api_after_verifying(folder):
    api = RecordingApi()
    url = publish(folder, "dambench/era5-sample", api=api, private=True)
    assert url == "https://huggingface.co/datasets/dambench/era5-sample"
    (name1, args1, kw1), (name2, _, kw2) = api.calls
    assert name1 == "create_repo" and args1 == ("dambench/era5-sample",)
    assert kw1 == {"repo_type": "dataset", "exist_ok": True, "private": True}
    assert name2 == "upload_large_folder"
    assert kw2["folder_path"] == str(folder) and kw2["repo_type"] == "dataset"


def test_publish_refuses_a_damaged_folder(copy):
    api = RecordingApi()
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["stats.json"]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError):
        publish(copy, "dambench/era5-sample", api=api)
    assert api.calls == []


def test_publish_offline_fails_fast_and_clearly(folder):
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError, match="verified and unchanged"):
        publish(folder, "dambench/era5-sample", token="hf_fake")  # HF_HUB_OFFLINE=1 in tests
    assert time.perf_counter() - start < 10
