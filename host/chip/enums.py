"""Enumerations of the chip, defined once and shared by the host models and the RTL.

Each is an :class:`amaranth.lib.enum.IntEnum` whose ``shape`` is the width the hardware stores
it in: the RTL uses the class as a signal's, port's or layout field's shape and its members as
constants; the host uses the members as plain ints (so ``status == WriteVerifyStatus.CONVERGED``
and ``np.where(stuck == Stuck.AT_0, ...)`` work on NumPy arrays and torch tensors).
"""
from __future__ import annotations

from amaranth.lib.enum import IntEnum  # pyright: ignore[reportMissingTypeStubs]  # amaranth ships no stubs or py.typed

from cimstack.errors import ConfigError

__all__ = ["Polarity", "Stuck", "WriteVerifyStatus", "FlitKind", "InputEncoding", "RunUnit"]


class Polarity(IntEnum, shape=1):
    """Polarity of a programming pulse (``CELL_OP.polarity``, a tile's pulse requests)."""

    SET = 0            # conductance up
    RESET = 1          # conductance down


class Stuck(IntEnum, shape=2):
    """Stuck-at flag of a cell, stored beside its state in the crossbar memory."""

    NONE = 0
    AT_0 = 1           # reads as code 0
    AT_MAX = 2         # reads as the top code (so does the unused value 3: the flag's bit 1 wins)


class WriteVerifyStatus(IntEnum, shape=2):
    """``status`` of a write-verify result (the ``WV_RESULTS`` memory space)."""

    PENDING = 0        # not processed (yet)
    CONVERGED = 1      # the verify read is within the tolerance
    FAILED = 2         # out of budget, the cell moved
    STUCK = 3          # out of budget, the cell did not move beyond the tolerance


class FlitKind(IntEnum, shape=2):
    """Kind of a flit on the on-chip network (:mod:`cimstack.rtl.noc`)."""

    ACT = 0            # an input word for a tile's x stream
    OUT = 1            # a tile's output word, stored into the activation buffer
    ACC = 2            # a tile's output word, added to the activation buffer
    CFG = 3            # where a tile's outputs go, accumulate or not, and its input mode


class InputEncoding(IntEnum, shape=2):
    """How a VMM's inputs become pulses: the hardware code of an input mode.

    The config (``input.mode``) and the host API name the modes by the strings
    :attr:`config_name` / :meth:`from_config` map to; a VMM's ``mode`` field (register
    ``VMM_FLAGS``, instruction ``VMM``) holds the code plus 1, 0 selecting the config's own
    (:func:`cimstack.chip.isa.mode_field`)."""

    BIT_SERIAL = 0     # 1-bit digits, one pulse per input bit
    AMPLITUDE = 1      # input.dac_bits-bit digits
    UNARY = 2          # |x| pulses of +-1

    @property
    def config_name(self) -> str:
        """The mode's name in the config and the host API (``"bit_serial"``, ...)."""
        return self.name.lower()

    @classmethod
    def from_config(cls, name: str) -> InputEncoding:
        """The encoding a config string names; :class:`~cimstack.errors.ConfigError` for
        anything else."""
        for e in cls:
            if e.config_name == name:
                return e
        raise ConfigError(f"input mode {name!r} is not one of {', '.join(e.config_name for e in cls)}")


class RunUnit(IntEnum, shape=2):
    """The unit byte of a ``RUN`` request; also the order of the bridge's ``run``/``busy`` bits."""

    VMM = 0            # a single VMM from the VMM_* registers
    WRITE_VERIFY = 1   # the write-verify job list
    PROGRAM = 2        # a sequencer program from SEQ_PC

