"""``dambench publish``: verify a built folder against its manifest, then upload it to the Hub."""

from __future__ import annotations

import json
from pathlib import Path

from dambench.exceptions import DambenchError, DambenchInputError

MANIFEST = "manifest.json"


class ManifestError(DambenchInputError):
    """A built folder does not match its manifest."""


class HubUnreachableError(DambenchError, ConnectionError):
    """The Hugging Face Hub cannot be reached; nothing was changed locally."""


def verify_manifest(folder: str | Path) -> dict:
    """Check every file's size and sha256 against ``manifest.json``; return the manifest.

    Raises
    ------
    ManifestError
        Naming missing files, files whose content changed and files not in the manifest.
    """
    from dambench.build.builder import STATE_DIR, sha256_file

    folder = Path(folder)
    path = folder / MANIFEST
    if not path.exists():
        raise ManifestError(f"{folder} has no {MANIFEST}: is it a finished dambench build?")
    manifest = json.loads(path.read_text())
    listed = manifest.get("files", {})
    present = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not p.relative_to(folder).as_posix().startswith((STATE_DIR, "."))
    } - {MANIFEST}
    problems = []
    missing = sorted(set(listed) - present)
    extra = sorted(present - set(listed))
    if missing:
        problems.append(f"missing files {missing[:5]}")
    if extra:
        problems.append(f"files not in the manifest {extra[:5]}")
    changed = [
        name
        for name in sorted(set(listed) & present)
        if (folder / name).stat().st_size != listed[name]["bytes"]
        or sha256_file(folder / name) != listed[name]["sha256"]
    ]
    if changed:
        problems.append(f"changed files {changed[:5]}")
    if problems:
        raise ManifestError(f"{folder} does not match its manifest: " + "; ".join(problems) + ".")
    return manifest


def publish(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    api=None,
) -> str:
    """Verify ``folder`` and upload it as the Hub dataset ``repo_id``; return its URL.

    Uses ``HfApi.create_repo`` and ``HfApi.upload_large_folder`` (resumable, many files).
    """
    verify_manifest(folder)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
        api.upload_large_folder(repo_id=repo_id, folder_path=str(folder), repo_type="dataset",
                                revision=revision, private=private)
    except DambenchError:
        raise
    except Exception as err:  # noqa: BLE001 - the hub client raises many connection types
        if _is_connection_error(err):
            raise HubUnreachableError(
                f"Cannot reach the Hugging Face Hub to publish {repo_id} ({type(err).__name__}: "
                f"{err}); {folder} is verified and unchanged: publish again when online."
            ) from err
        raise
    return f"https://huggingface.co/datasets/{repo_id}"


def _is_connection_error(err: Exception) -> bool:
    """True when ``err`` or an error it was raised from is a network or offline-mode error."""
    names = {cls.__name__ for e in _chain(err) for cls in type(e).__mro__}
    return bool(names & {"OfflineModeIsEnabled", "ConnectionError", "ConnectError",
                         "ConnectTimeout", "TimeoutError", "LocalEntryNotFoundError"})


def _chain(err: BaseException | None):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__
