"""Automatic tuning of the hardware parameters of a deployment (see :mod:`.tuner`)."""
from .settings import LayerSetting, Settings

__all__ = ["LayerSetting", "Settings"]
