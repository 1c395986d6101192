"""A timm-style model registry: ``@register_model`` on factory functions, ``create_model(name)``."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import torch

_MODELS: dict[str, Callable[..., torch.nn.Module]] = {}


def register_model(factory: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
    """Register ``factory`` under its function name; names must be unique."""
    name = factory.__name__
    if name in _MODELS:
        raise ValueError(f"Model {name!r} is registered twice.")
    _MODELS[name] = factory
    return factory


def _import_models() -> None:
    package = importlib.import_module("baselines.models")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"baselines.models.{module.name}")


def list_models() -> list[str]:
    """Names of every registered model."""
    _import_models()
    return sorted(_MODELS)


def create_model(name: str, **config) -> torch.nn.Module:
    """Build model ``name``; ``None`` values in ``config`` are dropped (they mean "unset")."""
    _import_models()
    if name not in _MODELS:
        raise ValueError(f"Unknown model {name!r}; registered: {sorted(_MODELS)}.")
    return _MODELS[name](**{k: v for k, v in config.items() if v is not None})
