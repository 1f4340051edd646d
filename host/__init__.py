"""cimstack: an FPGA-targeted emulator of a memristor computation-in-memory accelerator.

The host API. ``cimstack.chip.config`` holds the chip configuration every layer reads,
``cimstack.golden`` the bit-exact integer model of the RTL datapath, ``cimstack.physics`` the
differentiable float model of the devices, ``cimstack.rtl`` the Amaranth gateware;
``cimstack.compile`` turns a model into a :class:`Deployment` that runs on any backend
(``cimstack.backends``).
"""
from typing import TYPE_CHECKING

from cimstack.chip.config import PRESETS, ChipConfig, load, preset
from cimstack.errors import CimstackError, CompileError, ConfigError, InputRangeError, PlacementError, SimulationError

if TYPE_CHECKING:                 # for type checkers and readers; at run time __getattr__ loads them
    from cimstack.runtime.deployment import Deployment, compile


def __getattr__(name: str):
    """``compile`` and ``Deployment`` import torch: load them on first use, so the command
    line's config, help and usage paths start in a fraction of a second."""
    if name in ("compile", "Deployment"):
        from cimstack.runtime import deployment  # torch: only when asked for (see above)
        return getattr(deployment, name)
    raise AttributeError(f"module 'cimstack' has no attribute {name!r}")


__all__ = ["ChipConfig", "load", "preset", "PRESETS", "compile", "Deployment",
           "CimstackError", "CompileError", "ConfigError", "InputRangeError", "PlacementError", "SimulationError"]
__version__ = "0.1.0"
