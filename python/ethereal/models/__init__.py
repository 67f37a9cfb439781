"""The model world as data: the registry (``registry.py``) over the shipped ``models.toml``."""

from ethereal.models.registry import (
    DATA_FILE,
    Model,
    RateCard,
    Rates,
    Registry,
    RegistryError,
    Rules,
    load_registry,
)

__all__ = ["DATA_FILE", "Model", "RateCard", "Rates", "Registry", "RegistryError", "Rules", "load_registry"]
