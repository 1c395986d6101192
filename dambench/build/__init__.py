"""Building the published datasets: configs, recipes, Zarr and Parquet writers, cards, publish."""

from dambench.build.builder import build
from dambench.build.config import BuildConfig, available_configs, load_config

__all__ = ["BuildConfig", "available_configs", "build", "load_config"]
