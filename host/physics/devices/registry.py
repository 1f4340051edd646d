"""The device-model registry: ``device.model`` name -> :class:`~.base.DeviceModel` subclass.

A model registers itself with the :func:`register_device_model` decorator when its module is
imported (the package ``__init__`` imports the built-in ones); :func:`~.base.device_model` and
``DeviceModel(cfg)`` look the config's ``device.model`` up here.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from cimstack.errors import ConfigError

__all__ = ["DEVICE_MODELS", "register_device_model", "registered_models", "model_class"]

# The registry holds DeviceModel subclasses, but does not import base (base imports this module to
# pick a subclass in DeviceModel(cfg)); `type` stands for "a DeviceModel subclass" below.
M = TypeVar("M", bound=type)

#: Every registered model class, by its ``device.model`` name.
DEVICE_MODELS: dict[str, type] = {}


def register_device_model(name: str) -> Callable[[M], M]:
    """Class decorator: make a concrete :class:`DeviceModel` subclass the model ``name``.

    Sets the class's ``name`` attribute. A name can be registered once; a class that leaves a
    hook abstract is refused.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a device model name must be a non-empty string, got {name!r}")

    def register(cls: M) -> M:
        if not isinstance(cls, type):
            raise TypeError(f"register_device_model({name!r}) decorates a class, got {cls!r}")
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        if missing:
            raise TypeError(f"device model {cls.__qualname__} ({name!r}) does not implement {', '.join(missing)}")
        if name in DEVICE_MODELS:
            raise ConfigError(f"device model {name!r} is already registered ({DEVICE_MODELS[name].__qualname__})")
        cls.name = name
        DEVICE_MODELS[name] = cls
        return cls

    return register


def registered_models() -> tuple[str, ...]:
    """The registered ``device.model`` names, sorted."""
    return tuple(sorted(DEVICE_MODELS))


def model_class(name: str) -> type:
    """The class registered as ``name``; :class:`ConfigError` naming it if there is none."""
    try:
        return DEVICE_MODELS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"device.model = {name!r} is not a registered device model; "
                          f"registered: {', '.join(registered_models())}") from None
