"""``dambench publish``: verify a built folder against its manifest, then upload it to the Hub.

A built folder (see :mod:`dambench.assembly.builder`) ends with ``manifest.json``::

    {"name": NAME, "schema_version": "1.0",
     "files": {"relative/path": {"sha256": HEX, "bytes": N}, ...}, ...}

listing every file of the folder except itself. :func:`verify_manifest` recomputes every size
and checksum and refuses a folder with missing, changed or unlisted files; :func:`publish`
verifies, creates the dataset repository, uploads the folder (resumable) and, by default, checks
the checksums the Hub reports against the manifest (:func:`verify_remote`).

Hidden paths (any component starting with ``.``, e.g. the Hub client's ``.cache/`` or an
unfinished build's ``.dambench-build/``) are neither required in the manifest nor uploaded.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from dambench.exceptions import DambenchError
from dambench.sources.base import is_network_error
from dambench.verify import (
    MANIFEST,
    ManifestError,
    few,
    is_hidden,
    read_manifest,
    sha256_file,
    verify,
)

logger = logging.getLogger(__name__)

HUB_URL = "https://huggingface.co"
HIDDEN_PATTERNS = (".*", "*/.*")
"""Upload ignore patterns (fnmatch, ``*`` crosses ``/``): every path with a hidden component."""
__all__ = [
    "HIDDEN_PATTERNS",
    "HubUnreachableError",
    "ManifestError",
    "RemoteMismatchError",
    "git_blob_sha1",
    "is_hidden",
    "is_network_error",
    "publish",
    "read_manifest",
    "sha256_file",
    "verify_manifest",
    "verify_remote",
]


class RemoteMismatchError(DambenchError, RuntimeError):
    """The files on the Hub do not match the manifest after an upload."""


class HubUnreachableError(DambenchError, ConnectionError):
    """The Hugging Face Hub cannot be reached; the local folder was not changed."""


# --- local verification ------------------------------------------------------------------------


def git_blob_sha1(path: str | Path, block_size: int = 4 << 20) -> str:
    """Git object id of a file (``sha1("blob <size>\\0" + content)``), as the Hub reports for
    files stored without LFS."""
    path = Path(path)
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_manifest(folder: str | Path) -> dict:
    """Check every file of a built folder against ``manifest.json`` (see
    :func:`dambench.verify.verify`) and return the manifest.

    Raises
    ------
    ManifestError
        Naming (up to 10 of each, with counts) the listed files that are missing, the files whose
        size or checksum changed, the files present but absent from the manifest (hidden paths
        such as ``.cache/`` excepted) and listed leftovers of interrupted writes.
    UnfinishedBuildError
        The folder holds an unfinished build.
    """
    return verify(folder).manifest


# --- the Hub -----------------------------------------------------------------------------------


def dataset_url(repo_id: str) -> str:
    """Web address of the Hub dataset ``repo_id``."""
    return f"{HUB_URL}/datasets/{repo_id}"


def publish(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    api=None,
    verify_upload: bool = True,
) -> str:
    """Verify a built folder and upload it as the Hub dataset ``repo_id``.

    Parameters
    ----------
    folder
        The built dataset folder; refused unless :func:`verify_manifest` passes.
    repo_id
        ``owner/name``, e.g. ``"dambench/era5-sample"``.
    token
        Hub token (default: the one saved by ``hf auth login`` or ``HF_TOKEN``).
    private
        Create the repository as private (an existing repository keeps its visibility).
    revision
        Branch to upload to (created from the default branch when missing); default: ``main``.
    api
        An ``huggingface_hub.HfApi``-like object (for tests); default ``HfApi(token=token)``.
    verify_upload
        After the upload, compare the sizes and checksums the Hub reports with the manifest
        (:func:`verify_remote`).

    Returns
    -------
    The dataset's web address, ``https://huggingface.co/datasets/REPO_ID``.

    Raises
    ------
    ManifestError
        The folder does not match its manifest; nothing is sent.
    HubUnreachableError
        No network, or ``HF_HUB_OFFLINE=1``: raised at the first call, the folder is unchanged.
    RemoteMismatchError
        The Hub's files differ from the manifest after the upload.

    Notes
    -----
    The upload uses ``HfApi.upload_large_folder`` (resumable, multi-commit) when the installed
    ``huggingface_hub`` has it, else ``HfApi.upload_folder``, which in ``huggingface_hub`` 2.x
    with ``hf_xet`` is itself resumable and commits large folders in batches. Hidden paths are
    not uploaded. Re-running after an interruption resumes the upload.
    """
    folder = Path(folder)
    manifest = verify_manifest(folder)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with _hub_errors(repo_id, folder):
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
        _upload(api, folder, repo_id, revision)
        if verify_upload:
            verify_remote(folder, repo_id, revision=revision, api=api, manifest=manifest)
    url = dataset_url(repo_id)
    logger.info("published %s to %s", folder, url)
    return url


def _upload(api, folder: Path, repo_id: str, revision: str | None) -> None:
    kwargs = {
        "repo_id": repo_id,
        "folder_path": str(folder),
        "repo_type": "dataset",
        "revision": revision,
        "ignore_patterns": list(HIDDEN_PATTERNS),
    }
    if hasattr(api, "upload_large_folder"):
        api.upload_large_folder(**kwargs)
    else:
        api.upload_folder(commit_message=f"Upload {folder.name} (dambench publish)", **kwargs)


def verify_remote(
    folder: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    api=None,
    token: str | None = None,
    manifest: Mapping | None = None,
) -> int:
    """Check that the Hub dataset ``repo_id`` holds every manifest file, unchanged.

    LFS/Xet files are compared by size and sha256 with the manifest; small files stored in git
    by their git object id, recomputed from the local copy.

    Returns
    -------
    Number of files checked (the manifest's files and ``manifest.json``).

    Raises
    ------
    RemoteMismatchError
        Naming files missing on the Hub and files whose size or checksum differs.
    HubUnreachableError
        The Hub cannot be reached.
    """
    folder = Path(folder)
    manifest = manifest if manifest is not None else read_manifest(folder)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with _hub_errors(repo_id, folder):
        tree = api.list_repo_tree(
            repo_id, recursive=True, expand=False, revision=revision, repo_type="dataset"
        )
        remote = {entry.path: entry for entry in tree if hasattr(entry, "blob_id")}
    expected = dict(manifest["files"])
    missing = sorted(set(expected) - set(remote) | ({MANIFEST} - set(remote)))
    differ = sorted(
        name
        for name, entry in expected.items()
        if name in remote and not _remote_matches(remote[name], entry, folder / name)
    )
    if MANIFEST in remote and not _remote_matches(remote[MANIFEST], None, folder / MANIFEST):
        differ.append(MANIFEST)
    if missing or differ:
        parts = ([f"missing on the Hub {few(missing)}"] if missing else []) + (
            [f"different on the Hub {few(differ)}"] if differ else []
        )
        raise RemoteMismatchError(
            f"{repo_id} does not match {folder / MANIFEST}: " + "; ".join(parts) + ". "
            "Publish again to resume the upload."
        )
    return len(expected) + 1


def _remote_matches(remote, entry: Mapping | None, local: Path) -> bool:
    lfs = getattr(remote, "lfs", None)
    size = entry["bytes"] if entry is not None else local.stat().st_size
    if getattr(remote, "size", size) != size:
        return False
    if lfs is not None:
        digest = entry["sha256"] if entry is not None else sha256_file(local)
        return str(lfs.sha256).lower() == digest.lower()
    return str(remote.blob_id) == git_blob_sha1(local)


@contextmanager
def _hub_errors(repo_id: str, folder: Path) -> Iterator[None]:
    """Turn network and offline-mode errors into :class:`HubUnreachableError`."""
    try:
        yield
    except DambenchError:
        raise
    except Exception as err:
        if not is_network_error(err):
            raise
        raise HubUnreachableError(
            f"Cannot reach the Hugging Face Hub to publish {repo_id} "
            f"({type(err).__name__}: {err}). The folder {folder} is intact and verified; "
            "publish again when online (unset HF_HUB_OFFLINE if it is set)."
        ) from err
