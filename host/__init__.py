"""cimstack: an FPGA-targeted emulator of a memristor computation-in-memory accelerator.

The host API. ``cimstack.chip.config`` holds the chip configuration every layer reads,
``cimstack.golden`` the bit-exact integer model of the RTL datapath, ``cimstack.physics`` the
differentiable float model of the devices, ``cimstack.rtl`` the Amaranth gateware;
``cimstack.compile`` turns a model into a :class:`Deployment` that runs on any backend
(``cimstack.backends``).
"""
from cimstack.chip.config import PRESETS, ChipConfig, load, preset
from cimstack.errors import CimstackError, CompileError, ConfigError, InputRangeError, PlacementError, SimulationError


def __getattr__(name: str):
    """``compile`` and ``Deployment`` import torch: load them on first use, so the command
    line's config, help and usage paths start in a fraction of a second."""
    if name in ("compile", "Deployment"):
        from cimstack.runtime import deployment
        return getattr(deployment, name)
    raise AttributeError(f"module 'cimstack' has no attribute {name!r}")


__all__ = ["ChipConfig", "load", "preset", "PRESETS", "compile", "Deployment",
           "CimstackError", "CompileError", "ConfigError", "InputRangeError", "PlacementError", "SimulationError"]
__version__ = "0.1.0"
