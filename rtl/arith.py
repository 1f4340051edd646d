"""Arithmetic helpers shared by the RTL units, each the twin of a golden-model operation."""
from typing import cast

from amaranth import *

__all__ = ["round_shift", "const_mul", "clamp"]


def round_shift(v: Value, n: int) -> Value:
    """Hardware twin of :func:`cimstack.chip.prng.round_shift` (add half, arithmetic shift)."""
    if n == 0:
        return v
    return (v + (1 << (n - 1))) >> n


def const_mul(v: Value, k: int) -> Value:
    """``v * k`` for a config constant ``k >= 0`` as shifts and adds (canonical signed digits):
    Yosys would give every product of 11 or more bits a DSP block, and a small FPGA has few
    (the iCE40UP5K 8) while these constants have few nonzero digits."""
    assert k >= 0
    terms, i = [], 0
    while k:
        if k & 1:
            digit = 2 - (k & 3)          # +1 or -1: the non-adjacent form
            terms.append((digit, i))
            k -= digit
        k >>= 1
        i += 1
    if not terms:
        return C(0, 1)
    total = None
    for digit, shift in reversed(terms):
        t = v << shift
        total = (t if digit > 0 else -t) if total is None else (total + t if digit > 0 else total - t)
    assert total is not None                           # terms is not empty
    return total


def clamp(v: Value, lo: int, hi: int) -> Value:
    """``v`` limited to ``lo .. hi``. The ranges of an n-bit number (signed or unsigned) are
    tested on the bits above n instead of with two comparators: a 48-bit saturation costs a
    dozen LUTs instead of two carry chains."""
    v = Value.cast(v)
    width, is_signed = len(v), cast(Shape, v.shape()).signed     # amaranth's Value.shape() is unannotated
    for n in range(1, width + 1):
        if lo == -(1 << (n - 1)) and hi == (1 << (n - 1)) - 1 and is_signed:
            top = v[n - 1:]                            # all equal when v fits
            return Mux(top.all() | ~top.any(), v[:n].as_signed(), Mux(v[-1], lo, hi))
        if lo == 0 and hi == (1 << n) - 1:
            over = v[n:width - 1].any() if is_signed else v[n:].any()
            under = v[-1] if is_signed else C(0)
            return Mux(under, 0, Mux(over, hi, v[:n]))
    return Mux(v < lo, lo, Mux(v > hi, hi, v))
