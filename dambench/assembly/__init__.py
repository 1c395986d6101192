"""Building the published datasets: configs, recipes, Zarr and Parquet writers, cards, publish.

The names below are imported on first use, so that a light submodule (``lock``, used by the
scorer's result folders) imports without the writers' dependencies (zarr, pyarrow): the GPU
benchmarks import the package with torch and numpy alone.
"""

from importlib import import_module

_EXPORTS = {
    "build": "dambench.assembly.builder",
    "BuildConfig": "dambench.assembly.config",
    "available_configs": "dambench.assembly.config",
    "load_config": "dambench.assembly.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dambench.assembly' has no attribute {name!r}")
