"""Hardware twin of :mod:`cimstack.chip.prng`: xorshift32 generators and the Irwin-Hall Gaussian."""
from typing import cast

from amaranth import *

from cimstack.chip import prng as ref

__all__ = ["xorshift32_next", "irwin_hall", "reseed_value"]


def xorshift32_next(x: Value) -> Value:
    """Combinational next state of a 32-bit xorshift (13, 17, 5)."""
    a = (x ^ (x << 13))[:32]
    b = a ^ (a >> 17)
    return cast(Value, (b ^ (b << 5))[:32])            # a Slice: amaranth's Value.__getitem__ is unannotated


def irwin_hall(x: Value) -> Value:
    """Signed sum of the four bytes of ``x`` minus 510, in [-510, 510]."""
    s = x[0:8] + x[8:16] + x[16:24] + x[24:32]
    return (s - 510).as_signed()


def reseed_value(key: Value, index: int) -> Value:
    """Initial state of stream ``index`` for a run-time seed key (``SEED_KEY``, the host's
    :func:`cimstack.chip.prng.seed_key`; see :func:`cimstack.chip.prng.seed_state`)."""
    s = key ^ ref.stream_key(index)
    return Mux(s == 0, ref.ZERO_SEED, s)
