"""The one exception hierarchy of cimstack: one subclass per cause, messages name the culprit."""
from typing import Any


class CimstackError(Exception):
    """Base class of every error cimstack raises on purpose."""


class ConfigError(CimstackError, ValueError):
    """A chip configuration (preset, TOML file or constructor call) is invalid."""


class InputRangeError(CimstackError, ValueError):
    """A tensor handed to a model of the chip has the wrong shape, dtype or out-of-range values."""


class SimulationError(CimstackError, RuntimeError):
    """Building or running the Verilator simulation failed."""


class LinkError(CimstackError, IOError):
    """The host link failed: the port cannot be opened, or frames keep getting lost."""


class LinkTimeout(LinkError, TimeoutError):
    """The device stopped answering within the link's timeout (after every retry)."""


class DeviceError(CimstackError, RuntimeError):
    """The device answered a request with an error response (bad address, busy, ...)."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code


class ConfigMismatchError(CimstackError, RuntimeError):
    """The gateware was built from a different chip config than the host is using."""


class CompileError(CimstackError, ValueError):
    """A model cannot be imported: an op, module or attribute the compiler cannot map onto
    the chip, or a malformed graph. The message names the op and the node."""


class PlacementError(CimstackError, ValueError):
    """A compiled model does not fit on the chip: the message names the layer and the shortfall."""


class ProgrammingError(CimstackError, RuntimeError):
    """Write-verify left cells out of tolerance where the caller asked for none to be."""

    #: the per-cell account (a ``cimstack.runtime.programming.ProgramReport``, a layer above
    #: this module), set where programming raises it
    report: Any


class BuildError(CimstackError, RuntimeError):
    """A bitstream build failed: tools missing, the design does not fit, or it misses timing."""


class FlashError(CimstackError, RuntimeError):
    """A board could not be programmed: no loader, no board attached, or the loader failed."""
