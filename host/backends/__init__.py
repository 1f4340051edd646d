"""Backends: one interface over the three models of the chip, so that a deployment runs
unchanged on any of them.

``EmulatorBackend``
    The PyTorch physics emulator (:class:`cimstack.physics.TileEmulator`): float, batched,
    conductances in µS with every device non-ideality (``mode="physical"``, the default) or
    the float twin of the integer datapath. Write-verify runs the chip's ISPP algorithm on
    every cell at once, with the float pulse model (cycle-to-cycle noise, soft bounds) and
    Gaussian verify-read noise. Agrees with the others statistically.
``GoldenBackend``
    The bit-exact NumPy model (:class:`cimstack.golden.GoldenSoC`).
``DeviceBackend``
    A real or simulated SoC over a :class:`cimstack.link.Link` (``socket://`` to the
    simulation server, or a serial port). Write-verify runs on the chip's controller
    (``write_verify="chip"``) or host-driven through the single-cell registers
    (``"host"``, the same ISPP loop as the golden model). Equals the golden backend bit for bit.

The interface, the capabilities callers test (``keeps_state_across_processes``, ``bit_exact``),
the write-verify settings (:class:`WriteVerifyParams`) and what every backend shares are in
:mod:`cimstack.backends.base`.
"""
from cimstack.backends.base import Backend, CellJobs, Region, WriteVerifyParams, adc_tie_bias, fabricate
from cimstack.backends.device import DeviceBackend
from cimstack.backends.emulator import EmulatorBackend
from cimstack.backends.golden import GoldenBackend
from cimstack.chip.config import ChipConfig
from cimstack.errors import ConfigError

__all__ = ["Backend", "EmulatorBackend", "GoldenBackend", "DeviceBackend", "CellJobs", "Region", "WriteVerifyParams", "fabricate",
           "backend", "adc_tie_bias"]


def backend(name: str, cfg: ChipConfig, **kwargs) -> Backend:
    """A backend by name: ``emulator``, ``golden`` or ``device`` (``target=`` a link URL)."""
    if name == "emulator":
        return EmulatorBackend(cfg, **kwargs)
    if name == "golden":
        return GoldenBackend(cfg, **kwargs)
    if name == "device":
        return DeviceBackend(kwargs.pop("target"), cfg, **kwargs)
    raise ConfigError(f"unknown backend {name!r}; backends: emulator, golden, device")
