"""The one exception hierarchy of cimstack: one subclass per cause, messages name the culprit."""


class CimstackError(Exception):
    """Base class of every error cimstack raises on purpose."""


class ConfigError(CimstackError, ValueError):
    """A chip configuration (preset, TOML file or constructor call) is invalid."""


class InputRangeError(CimstackError, ValueError):
    """A tensor handed to a model of the chip has the wrong shape, dtype or out-of-range values."""


class SimulationError(CimstackError, RuntimeError):
    """Building or running the Verilator simulation failed."""
