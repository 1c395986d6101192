"""Which dataset a score belongs to: its name and a digest of its contents.

The digest of a build folder is the sha256 of its ``manifest.json`` (which lists the sha256 of
every file), so two scores share a digest exactly when they were computed on byte-identical
datasets. It attests what was read: every open (:func:`dambench.load.check_folder`) hashes the
files it reads whole, the Zarr metadata with the normalisation statistics, ``stats.json`` and the
coordinates, against the manifest and refuses a folder where one differs; the data chunks are
read through their crc32c. A store without a manifest gets a weaker ``metadata`` digest of its attributes, times
and channels, labelled as such. Paired comparisons refuse results whose digests, splits or cycles
differ.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import fsspec
import numpy as np
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchInputError

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class DatasetIdentity:
    """``name`` (the build's dataset name), ``digest`` and how it was computed (``kind``:
    ``"manifest"`` or ``"metadata"``), and the ``location`` of the store."""

    name: str
    digest: str
    kind: str
    location: str

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "digest": self.digest,
            "digest_kind": self.kind,
            "location": self.location,
        }


def _manifest_bytes(store: str) -> bytes | None:
    folder = store.rstrip("/").rsplit("/", 1)[0] if "/" in store else "."
    try:
        with fsspec.open(f"{folder}/{MANIFEST}", "rb") as handle:
            return handle.read()
    except (FileNotFoundError, OSError):
        return None


def _metadata_digest(ds: xr.Dataset) -> str:
    payload = {
        "attrs": {k: str(v) for k, v in sorted(ds.attrs.items())},
        "times": [str(t) for t in np.asarray(ds[schema.TIME].values)],
        "channels": [str(c) for c in ds[schema.CHANNEL].values],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def dataset_identity(
    name_or_path: str | os.PathLike, revision: str | None = None
) -> DatasetIdentity:
    """Identity of the dataset ``name_or_path`` (and Hub ``revision``) as given to
    ``open_dataset``: the sha256 of its ``manifest.json``, else a metadata digest of the whole
    dataset (every split, so it does not depend on the split scored)."""
    from dambench.load import open_dataset, resolve

    store = resolve(name_or_path, revision)
    manifest = _manifest_bytes(store)
    whole = open_dataset(name_or_path, revision=revision)
    name = str(whole.attrs.get("dambench_dataset", os.path.basename(store).removesuffix(".zarr")))
    if manifest is not None:
        return DatasetIdentity(name, hashlib.sha256(manifest).hexdigest(), "manifest", store)
    return DatasetIdentity(name, _metadata_digest(whole), "metadata", store)


def check_same_data(a: dict, b: dict) -> None:
    """Refuse to compare two results (``summary.json`` dicts) scored on different data.

    Both must share the dataset digest, the split and the list of cycles.
    """
    for key in ("dataset_digest", "split", "times"):
        if a.get(key) != b.get(key):
            shown_a, shown_b = str(a.get(key))[:80], str(b.get(key))[:80]
            raise DambenchInputError(
                f"Cannot compare {a.get('model')!r} and {b.get('model')!r}: their {key} differ "
                f"({shown_a} vs {shown_b}). Score both on the same dataset build, split and "
                "cycles."
            )
