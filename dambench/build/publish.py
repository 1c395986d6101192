"""``dambench publish``: verify a built folder against its manifest, then upload it to the Hub.

A built folder (see :mod:`dambench.build.builder`) ends with ``manifest.json``::

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
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from dambench.exceptions import DambenchError, DambenchInputError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
HUB_URL = "https://huggingface.co"
HIDDEN_PATTERNS = (".*", "*/.*")
"""Upload ignore patterns (fnmatch, ``*`` crosses ``/``): every path with a hidden component."""
_REPORT_LIMIT = 10
_NETWORK_ERROR_NAMES = frozenset(
    {
        "OfflineModeIsEnabled",
        "ConnectionError",  # requests' ConnectionError is not the built-in one
        "Timeout",
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "TimeoutException",
        "TransportError",
        "NetworkError",
        "ProxyError",
        "SSLError",
        "MaxRetryError",
        "NewConnectionError",
    }
)


class ManifestError(DambenchInputError):
    """A built folder does not match its ``manifest.json`` (or has none)."""


class RemoteMismatchError(DambenchError, RuntimeError):
    """The files on the Hub do not match the manifest after an upload."""


class HubUnreachableError(DambenchError, ConnectionError):
    """The Hugging Face Hub cannot be reached; the local folder was not changed."""


# --- local verification ------------------------------------------------------------------------


def sha256_file(path: str | Path, block_size: int = 4 << 20) -> str:
    """Hex sha256 of a file, read in blocks of ``block_size`` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()


def git_blob_sha1(path: str | Path, block_size: int = 4 << 20) -> str:
    """Git object id of a file (``sha1("blob <size>\\0" + content)``), as the Hub reports for
    files stored without LFS."""
    path = Path(path)
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()


def is_hidden(relative: str) -> bool:
    """True when a folder-relative POSIX path has a component starting with ``.``."""
    return any(part.startswith(".") for part in PurePosixPath(relative).parts)


def read_manifest(folder: str | Path) -> dict:
    """Load and check the structure of ``folder/manifest.json``.

    Raises
    ------
    ManifestError
        No manifest, invalid JSON, no ``files`` mapping, an entry without an integer ``bytes`` and
        a 64-hex ``sha256``, or a path that is absolute or leaves the folder.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{folder} has no {MANIFEST}: is it a finished dambench build?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ManifestError(f"{path} is not valid JSON: {err}") from err
    files = manifest.get("files") if isinstance(manifest, Mapping) else None
    if not isinstance(files, Mapping) or not files:
        raise ManifestError(f"{path} has no 'files' mapping of relative path -> sha256, bytes.")
    bad = [name for name, entry in files.items() if not _valid_entry(name, entry)]
    if bad:
        raise ManifestError(f"{path} has invalid entries {_few(bad)}.")
    return manifest


def _valid_entry(name: str, entry) -> bool:
    parts = PurePosixPath(name).parts
    safe = bool(parts) and not name.startswith("/") and ".." not in parts and name != MANIFEST
    if not safe or not isinstance(entry, Mapping):
        return False
    digest = entry.get("sha256")
    size = entry.get("bytes")
    hex_ok = (
        isinstance(digest, str)
        and len(digest) == 64
        and all(c in "0123456789abcdef" for c in digest.lower())
    )
    return hex_ok and isinstance(size, int) and not isinstance(size, bool) and size >= 0


def folder_files(folder: str | Path) -> set[str]:
    """Relative POSIX paths of the files of ``folder``, without hidden paths and the manifest."""
    folder = Path(folder)
    found = set()
    for path in folder.rglob("*"):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and not is_hidden(relative) and relative != MANIFEST:
            found.add(relative)
    return found


def verify_manifest(folder: str | Path) -> dict:
    """Check every file of a built folder against ``manifest.json``.

    Sizes are compared first; the sha256 of every listed file is then recomputed.

    Parameters
    ----------
    folder
        The built dataset folder.

    Returns
    -------
    The manifest (a dict).

    Raises
    ------
    ManifestError
        Naming (up to 10 of each, with counts) the listed files that are missing, the files whose
        size or checksum changed, and the files present but absent from the manifest (hidden
        paths such as ``.cache/`` excepted).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(f"{folder} is not a folder.")
    manifest = read_manifest(folder)
    listed = manifest["files"]
    present = folder_files(folder) | {n for n in listed if is_hidden(n) and (folder / n).is_file()}
    missing = sorted(set(listed) - present)
    extra = sorted(present - set(listed))
    changed = _changed_files(folder, listed, sorted(set(listed) & present))
    problems = []
    if missing:
        problems.append(f"missing files {_few(missing)}")
    if changed:
        problems.append(f"changed files {_few(changed)}")
    if extra:
        problems.append(f"files not in the manifest {_few(extra)}")
    if problems:
        raise ManifestError(f"{folder} does not match its {MANIFEST}: " + "; ".join(problems) + ".")
    return manifest


def _changed_files(folder: Path, listed: Mapping, names: list[str]) -> list[str]:
    """Names whose size or sha256 differs from the manifest (hashed on a few threads: hashlib
    releases the GIL on large blocks)."""
    resized = [n for n in names if (folder / n).stat().st_size != listed[n]["bytes"]]
    skip = set(resized)
    to_hash = [n for n in names if n not in skip]
    workers = min(8, os.cpu_count() or 1, max(1, len(to_hash)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = pool.map(lambda n: sha256_file(folder / n), to_hash)
        pairs = zip(to_hash, digests, strict=True)
        rehashed = [n for n, d in pairs if d != listed[n]["sha256"].lower()]
    return sorted(resized + rehashed)


def _few(names: list[str]) -> str:
    shown = repr(names[:_REPORT_LIMIT])
    more = len(names) - _REPORT_LIMIT
    return shown if more <= 0 else f"{shown} and {more} more ({len(names)} in all)"


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
        parts = ([f"missing on the Hub {_few(missing)}"] if missing else []) + (
            [f"different on the Hub {_few(differ)}"] if differ else []
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


def is_network_error(err: BaseException) -> bool:
    """True when ``err``, or an error it was raised from, is a network or offline-mode error."""
    for link in _chain(err):
        if isinstance(link, ConnectionError | TimeoutError):
            return True
        if {cls.__name__ for cls in type(link).__mro__} & _NETWORK_ERROR_NAMES:
            return True
    return False


def _chain(err: BaseException | None) -> Iterable[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__
