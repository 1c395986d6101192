"""A timm-style model registry: ``@register_model`` on factory functions, ``create_model(name)``."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import torch

_MODELS: dict[str, Callable[..., torch.nn.Module]] = {}
_DEFAULTS: dict[str, dict] = {}


def register_model(factory: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
    """Register ``factory`` under its function name; names must be unique."""
    name = factory.__name__
    if name in _MODELS:
        raise ValueError(f"Model {name!r} is registered twice.")
    _MODELS[name] = factory
    return factory


def register_variants(
    model_class: Callable[..., torch.nn.Module], variants: dict[str, tuple[str, dict]]
) -> None:
    """Register one factory per variant: ``{name: (docstring, default kwargs)}``.

    ``create_model(name, **kwargs)`` then builds ``model_class(**{**defaults, **kwargs})``;
    :func:`variant_defaults` returns the defaults.
    """
    for name, (doc, defaults) in variants.items():

        def factory(_defaults: dict = defaults, **kwargs) -> torch.nn.Module:
            return model_class(**{**_defaults, **kwargs})

        factory.__name__ = factory.__qualname__ = name
        factory.__doc__ = doc
        register_model(factory)
        _DEFAULTS[name] = dict(defaults)


def variant_defaults(name: str) -> dict:
    """The default kwargs of a variant registered with :func:`register_variants`."""
    _import_models()
    if name not in _DEFAULTS:
        raise ValueError(f"{name!r} is not a registered variant; variants: {sorted(_DEFAULTS)}.")
    return dict(_DEFAULTS[name])


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
