"""Background producers: the state the assimilation starts from, valid at requested times.

Every producer implements :class:`Background` (``at(times) -> DataArray (time, channel, latitude,
longitude)`` whose ``time`` is the requested valid time):

- :class:`OnnxForecaster` rolls out an ONNX model with FengWu's two-state contract;
- :class:`ForecastArchive` reads stored forecasts (WeatherBench2 layout or GRIB);
- :class:`Persistence` and :class:`Climatology` are model-free references.

``onnxruntime`` is imported only when an :class:`OnnxForecaster` loads a model file.
"""

from dambench.backgrounds.archive import ForecastArchive
from dambench.backgrounds.base import (
    INIT_TIME,
    Background,
    BackgroundBase,
    as_times,
)
from dambench.backgrounds.onnx import FENGWU_GRID, OnnxForecaster, rollout
from dambench.backgrounds.reference import Climatology, Persistence, day_slot

__all__ = [
    "FENGWU_GRID",
    "INIT_TIME",
    "Background",
    "BackgroundBase",
    "Climatology",
    "ForecastArchive",
    "OnnxForecaster",
    "Persistence",
    "as_times",
    "day_slot",
    "rollout",
]
