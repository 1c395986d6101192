"""The package version, read from the installed metadata: the one version source."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dambench")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"
