"""``dambench verify``: check a built dataset folder, local or remote, against its manifest.

A finished build ends with ``manifest.json``::

    {"name": NAME, "schema_version": "1.0", "config_digest": HEX,
     "files": {"relative/path": {"sha256": HEX, "bytes": N}, ...}, ...}

listing every file of the folder except itself and hidden paths (any component starting with
``.``: an unfinished build's ``.dambench-build/``, the lock file, the Hub client's ``.cache/``).
:func:`verify` recomputes every size and sha256 and reports the files that are missing, changed
or not listed, and listed files that are leftovers of interrupted writes (``*.partial``,
``*.tmp``: a manifest written by dambench < 0.2 may list them). A folder without a manifest is
an unfinished build (or no build) and is refused as such.

Local folders and any fsspec URL (``hf://datasets/ORG/NAME@REVISION``, ``s3://...``,
``file://...``) go through the same code; remote files are streamed, not stored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from dambench.exceptions import DambenchInputError, DambenchIntegrityError

MANIFEST = "manifest.json"
STATE_DIR = ".dambench-build"
STATE_DIRS = (STATE_DIR, STATE_DIR + ".tmp")
"""An unfinished build's state folder, and the staging folder it is renamed from."""
LEFTOVER_SUFFIXES = (".partial", ".tmp")
STATS_FILE = "stats.json"
METADATA_NAMES = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")
"""Zarr metadata files (v3 and v2): read on every open, kilobytes each."""
REPORT_LIMIT = 10
_BLOCK = 4 << 20


class ManifestError(DambenchIntegrityError, DambenchInputError):
    """A folder has no readable manifest, or does not match it."""


class UnfinishedBuildError(DambenchIntegrityError):
    """A folder holds a build that is running or was killed: not a dataset yet."""


@dataclass
class VerifyReport:
    """The outcome of :func:`verify`.

    Attributes
    ----------
    location
        The folder or URL checked.
    manifest
        The manifest's content.
    missing, changed, extra, leftovers
        Sorted relative paths: listed but absent; size or sha256 differs; present but not
        listed; listed although they are temporary files of an interrupted write.
    n_files, n_bytes
        Files and bytes checked.
    hashed
        Whether sha256 sums were recomputed (else sizes only).
    opened
        Whether (sizes only otherwise) the sha256 of what every open reads was recomputed.
    """

    location: str
    manifest: dict
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    n_files: int = 0
    n_bytes: int = 0
    hashed: bool = True
    opened: bool = False

    @property
    def ok(self) -> bool:
        return not (self.missing or self.changed or self.extra or self.leftovers)

    def problems(self) -> list[str]:
        """One phrase per kind of problem, naming up to :data:`REPORT_LIMIT` files each."""
        kinds = (
            ("missing files", self.missing),
            ("changed files", self.changed),
            ("files not in the manifest", self.extra),
            ("leftovers of interrupted writes listed in the manifest", self.leftovers),
        )
        return [f"{label} {few(names)}" for label, names in kinds if names]

    def summary(self) -> str:
        """One line: verified, or what differs and what to do."""
        how = "sha256" if self.hashed else "sizes only"
        how = "sizes; sha256 of the metadata and coordinates" if self.opened else how
        if self.ok:
            return (
                f"{self.location}: {self.n_files} files, {self.n_bytes / 1e6:.1f} MB match "
                f"{MANIFEST} ({how})."
            )
        return (
            f"{self.location} does not match its {MANIFEST}: " + "; ".join(self.problems()) + ". "
            "Download or build the folder again (a build is deterministic)."
        )

    def raise_if_failed(self) -> VerifyReport:
        """``self`` when :attr:`ok`, else raise :class:`ManifestError` with :meth:`summary`."""
        if not self.ok:
            raise ManifestError(self.summary())
        return self


def few(names: list[str]) -> str:
    """``['a', 'b']``, or the first :data:`REPORT_LIMIT` names and how many more."""
    shown = repr(names[:REPORT_LIMIT])
    more = len(names) - REPORT_LIMIT
    return shown if more <= 0 else f"{shown} and {more} more ({len(names)} in all)"


def sha256_file(path: str | os.PathLike, block_size: int = _BLOCK) -> str:
    """Hex sha256 of a local file, read in blocks of ``block_size`` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()


def is_hidden(relative: str) -> bool:
    """True when a folder-relative POSIX path has a component starting with ``.``."""
    return any(part.startswith(".") for part in PurePosixPath(relative).parts)


class Folder:
    """A local folder or an fsspec URL, seen as relative paths."""

    def __init__(self, location: str | os.PathLike):
        import fsspec
        import fsspec.implementations.local

        text = str(location).rstrip("/")
        self.location = text
        if "://" in text and not text.startswith("file://"):
            self.fs, self.root = fsspec.core.url_to_fs(text)
        else:
            self.fs = fsspec.filesystem("file")
            self.root = str(Path(text.removeprefix("file://")).resolve())
        self.local = isinstance(self.fs, fsspec.implementations.local.LocalFileSystem)

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def exists(self, relative: str) -> bool:
        return bool(self.fs.exists(self.path(relative)))

    def is_dir(self) -> bool:
        return bool(self.fs.isdir(self.root))

    def unfinished(self) -> bool:
        """No manifest, and a build's state (or staging) folder is there."""
        return not self.exists(MANIFEST) and any(self.exists(d) for d in STATE_DIRS)

    def read_text(self, relative: str) -> str:
        with self.fs.open(self.path(relative), "rb") as handle:
            return handle.read().decode("utf-8")

    def sizes(self, prefix: str = "") -> dict[str, int]:
        """Relative path -> size of every non-hidden file under ``prefix`` (manifest excluded)."""
        base = self.path(prefix.rstrip("/")) if prefix else self.root
        if not self.fs.exists(base):
            return {}
        found = self.fs.find(base, detail=True)
        out = {}
        for name, info in found.items():
            relative = name[len(self.fs._strip_protocol(self.root)) :].lstrip("/")
            if info.get("type", "file") == "file" and not is_hidden(relative):
                out[relative] = int(info["size"])
        out.pop(MANIFEST, None)
        return out

    def sizes_of(self, names: list[str]) -> dict[str, int]:
        """Relative path -> size of those of ``names`` that exist."""
        return {n: int(self.fs.size(self.path(n))) for n in names if self.exists(n)}

    def read_bytes(self, relative: str) -> bytes:
        with self.fs.open(self.path(relative), "rb") as handle:
            return handle.read()

    def sha256(self, relative: str) -> str:
        if self.local:
            return sha256_file(self.path(relative))
        digest = hashlib.sha256()
        with self.fs.open(self.path(relative), "rb", block_size=_BLOCK) as handle:
            for block in iter(lambda: handle.read(_BLOCK), b""):
                digest.update(block)
        return digest.hexdigest()


def read_manifest(location: str | os.PathLike) -> dict:
    """Load and check the structure of ``LOCATION/manifest.json``.

    Raises
    ------
    UnfinishedBuildError
        No manifest, and an unfinished build's state folder is there.
    ManifestError
        No manifest, invalid JSON, no ``files`` mapping, an entry without an integer ``bytes``
        and a 64-hex ``sha256``, or a path that is absolute or leaves the folder; the message
        names the file.
    """
    folder = location if isinstance(location, Folder) else Folder(location)
    path = folder.path(MANIFEST)
    if not folder.exists(MANIFEST):
        if folder.unfinished():
            raise UnfinishedBuildError(unfinished_message(folder.location))
        raise ManifestError(
            f"{folder.location} has no {MANIFEST}: is it a finished dambench build?"
        )
    try:
        manifest = json.loads(folder.read_text(MANIFEST))
    except ValueError as err:
        raise ManifestError(
            f"{path} is not valid JSON ({err}); download or build the folder again."
        ) from err
    files = manifest.get("files") if isinstance(manifest, Mapping) else None
    if not isinstance(files, Mapping) or not files:
        raise ManifestError(f"{path} has no 'files' mapping of relative path -> sha256, bytes.")
    bad = [name for name, entry in files.items() if not _valid_entry(name, entry)]
    if bad:
        raise ManifestError(f"{path} has invalid entries {few(bad)}.")
    return manifest


def unfinished_message(location: str) -> str:
    """The refusal of a folder whose build is running or was killed."""
    return (
        f"{location} is an unfinished dambench build (no {MANIFEST}; {STATE_DIR}/ is there): a "
        "build is running or was killed. Run the same `dambench build NAME --out FOLDER` again "
        "to resume it (a running build holds .dambench-build.lock)."
    )


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


def is_metadata(relative: str) -> bool:
    """A Zarr metadata file or the folder's ``stats.json``."""
    return PurePosixPath(relative).name in METADATA_NAMES or relative == STATS_FILE


def _coordinate_folders(metadata: Mapping[str, bytes]) -> list[str]:
    """Folders (``STORE/NAME/``) of the 0-d and 1-d arrays among Zarr v3 array metadata: the
    coordinates, which every open reads whole."""
    folders = []
    for relative, data in metadata.items():
        if PurePosixPath(relative).name != "zarr.json" or "/" not in relative:
            continue
        try:
            meta = json.loads(data)
        except ValueError:
            continue  # a damaged file: its sha256 says so
        if isinstance(meta, Mapping) and meta.get("node_type") == "array":
            if len(meta.get("shape", ())) <= 1:
                folders.append(relative.rsplit("/", 1)[0] + "/")
    return folders


def read_on_open(folder: Folder, names: list[str], threads: int = 8) -> dict[str, str]:
    """sha256 of the files of ``names`` that every open of the dataset reads: the Zarr metadata
    files, ``stats.json`` and the chunks of the coordinate arrays (kilobytes in all)."""
    metadata = [n for n in names if is_metadata(n)]
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(metadata)))) as pool:
        contents = dict(zip(metadata, pool.map(folder.read_bytes, metadata), strict=True))
    digests = {n: hashlib.sha256(data).hexdigest() for n, data in contents.items()}
    folders = tuple(_coordinate_folders(contents))
    chunks = [n for n in names if n.startswith(folders) and n not in digests] if folders else []
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(chunks)))) as pool:
        digests.update(zip(chunks, pool.map(folder.sha256, chunks), strict=True))
    return digests


def verify(
    location: str | os.PathLike | Folder,
    *,
    hashes: bool = True,
    prefix: str = "",
    strict: bool = True,
    threads: int = 8,
    opened: bool = False,
) -> VerifyReport:
    """Check every file of a built folder against its ``manifest.json``.

    Parameters
    ----------
    location
        A build folder, or an fsspec URL of one (``hf://datasets/ORG/NAME@REVISION``).
    hashes
        Recompute every sha256 (default); ``False`` compares only the list of files and sizes
        (one listing, no reads: what ``open_dataset`` does on every open).
    prefix
        Check only the files under this relative folder (e.g. ``"NAME.zarr/"``).
    strict
        Raise :class:`ManifestError` when something differs (default); else return the report.
    threads
        Files hashed at once (hashlib releases the GIL).
    opened
        With ``hashes=False``: also recompute the sha256 of what every open reads
        (:func:`read_on_open`: metadata, ``stats.json``, coordinates), so that a same-size edit
        of the normalisation statistics is caught (what ``open_dataset`` does).

    Returns
    -------
    VerifyReport

    Raises
    ------
    UnfinishedBuildError, ManifestError
        No manifest (an unfinished build is named as such), an invalid one, or (``strict``)
        missing, changed, unlisted or leftover files.
    """
    folder = location if isinstance(location, Folder) else Folder(location)
    if not folder.is_dir():
        raise ManifestError(f"{folder.location} is not a folder.")
    manifest = read_manifest(folder)
    extra = (STATS_FILE,) if opened and prefix else ()
    listed = {k: v for k, v in manifest["files"].items() if k.startswith((prefix, *extra))}
    present = {**folder.sizes(prefix), **folder.sizes_of([n for n in extra if n in listed])}
    report = VerifyReport(folder.location, manifest, hashed=hashes, opened=opened and not hashes)
    report.missing = sorted(n for n in listed if n not in present and not is_hidden(n))
    report.extra = sorted(set(present) - set(listed))
    report.leftovers = sorted(n for n in listed if n.endswith(LEFTOVER_SUFFIXES))
    common = sorted(set(listed) & set(present))
    resized = [n for n in common if present[n] != listed[n]["bytes"]]
    same_size = [n for n in common if n not in set(resized)]
    digests = _digests(folder, same_size, hashes, opened, threads)
    rehashed = [n for n, digest in digests.items() if digest != listed[n]["sha256"].lower()]
    report.changed = sorted(resized + rehashed)
    report.n_files = len(common)
    report.n_bytes = sum(present[n] for n in common)
    return report.raise_if_failed() if strict else report


def _digests(folder: Folder, names: list[str], hashes: bool, opened: bool, threads: int):
    if not hashes:
        return read_on_open(folder, names, threads) if opened else {}
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(names)))) as pool:
        return dict(zip(names, pool.map(folder.sha256, names), strict=True))
