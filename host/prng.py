"""The on-chip pseudo-random number generator, bit-exact with the RTL (:mod:`cimstack.rtl.prng`).

Generator: Marsaglia xorshift32 with shifts (13, 17, 5)::

    x ^= x << 13; x ^= x >> 17; x ^= x << 5        (all mod 2**32)

Gaussian approximation: after each step, z = b0 + b1 + b2 + b3 - 510 where b0..b3 are the
four bytes of the new state (an Irwin-Hall sum of four uniforms on 0..255, mean 0,
sigma = :data:`~cimstack.config.IRWIN_HALL_SIGMA` = 147.80, support [-510, 510]). A noise
value of sigma ``s`` is ``round_shift(z * q, NOISE_FRAC_BITS)`` with
``q = round(s / 147.80 * 2**NOISE_FRAC_BITS)``.

Seeding: stream ``index`` of a chip seeded with ``seed`` starts from
``seed_state(seed, index) = ((seed * 0x9E3779B1) ^ ((index + 1) * 0x85EBCA6B)) mod 2**32``,
replaced by 0x6D2B79F5 when that is zero (xorshift's one fixed point).
Stream indices: tile ``t`` read-noise lane ``l`` is ``t * 1024 + l``; tile ``t`` cell-update
generator is ``t * 1024 + 1023``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["seed_state", "xorshift32", "gauss_from_state", "round_shift", "noise",
           "read_lane_stream", "update_stream"]

MASK32 = 0xFFFF_FFFF
SEED_MUL = 0x9E3779B1
INDEX_MUL = 0x85EBCA6B
ZERO_SEED = 0x6D2B79F5


def seed_state(seed: int, index: int) -> int:
    s = ((seed * SEED_MUL) & MASK32) ^ (((index + 1) * INDEX_MUL) & MASK32)
    return s or ZERO_SEED


def read_lane_stream(tile: int, lane: int) -> int:
    return tile * 1024 + lane


def update_stream(tile: int) -> int:
    return tile * 1024 + 1023


def xorshift32(x: np.ndarray) -> np.ndarray:
    """One step of every generator in ``x`` (uint32 array), returned as a new array."""
    x = x.astype(np.uint32, copy=True)
    x ^= x << np.uint32(13)
    x ^= x >> np.uint32(17)
    x ^= x << np.uint32(5)
    return x


def gauss_from_state(x: np.ndarray) -> np.ndarray:
    """The Irwin-Hall integer z in [-510, 510] read from a generator's state."""
    x = x.astype(np.int64)
    return (x & 0xFF) + ((x >> 8) & 0xFF) + ((x >> 16) & 0xFF) + ((x >> 24) & 0xFF) - 510


def round_shift(v, n: int):
    """Divide by 2**n rounding half up (add half, arithmetic shift right); n = 0 is identity."""
    if n == 0:
        return v
    return (v + (1 << (n - 1))) >> n


def noise(z: np.ndarray, q: int, frac_bits: int) -> np.ndarray:
    """Scale Irwin-Hall integers to noise of sigma q / 2**frac_bits * 147.80."""
    return round_shift(z * q, frac_bits)
