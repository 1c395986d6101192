"""Building the published datasets: configs, recipes, Zarr and Parquet writers, cards, publish."""

from dambench.assembly.builder import build
from dambench.assembly.config import BuildConfig, available_configs, load_config

__all__ = ["BuildConfig", "available_configs", "build", "load_config"]
