"""The on-chip pseudo-random number generator, bit-exact with the RTL (:mod:`cimstack.rtl.prng`).

Generator: Marsaglia xorshift32 with shifts (13, 17, 5)::

    x ^= x << 13; x ^= x >> 17; x ^= x << 5        (all mod 2**32)

Gaussian approximation: after each step, z = b0 + b1 + b2 + b3 - 510 where b0..b3 are the
four bytes of the new state (an Irwin-Hall sum of four uniforms on 0..255, mean 0,
sigma = :data:`~cimstack.chip.config.IRWIN_HALL_SIGMA` = 147.80, support [-510, 510]). A noise
value of sigma ``s`` is ``round_shift(z * q, NOISE_FRAC_BITS)`` with
``q = round(s / 147.80 * 2**NOISE_FRAC_BITS)``.

Seeding: stream ``index`` of a chip seeded with ``seed`` starts from
``seed_state(seed, index) = seed_key(seed) ^ stream_key(index)``, replaced by 0x6D2B79F5 when
that is zero (xorshift's one fixed point), where ``seed_key(seed) = seed * 0x9E3779B1`` and
``stream_key(index) = (index + 1) * 0x85EBCA6B``, both mod 2**32. The multiplication by the
seed happens on the host (the chip's ``SEED_KEY`` register holds the key), so the gateware
only XORs constants: no multiplier per generator on a small FPGA.
Stream indices: tile ``t`` read-noise lane ``l`` is ``t * 1024 + l``; tile ``t`` cell-update
generator is ``t * 1024 + 1023``.
"""
from __future__ import annotations

from typing import Any, overload

import numpy as np
import numpy.typing as npt

__all__ = ["seed_key", "stream_key", "seed_state", "xorshift32", "xorshift32_states", "gauss_from_state", "round_shift", "noise",
           "read_lane_stream", "update_stream", "VERIFY_STREAM"]

MASK32 = 0xFFFF_FFFF
SEED_MUL = 0x9E3779B1
INDEX_MUL = 0x85EBCA6B
ZERO_SEED = 0x6D2B79F5


def seed_key(seed: int) -> int:
    """What the host writes to ``SEED_KEY`` for ``seed``."""
    return (seed * SEED_MUL) & MASK32


def stream_key(index: int) -> int:
    return ((index + 1) * INDEX_MUL) & MASK32


def seed_state(seed: int, index: int) -> int:
    return (seed_key(seed) ^ stream_key(index)) or ZERO_SEED


VERIFY_STREAM = 0xFFFF          # stream index of the write-verify read noise


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


_JUMP_BLOCK = 512
_jump_tables: np.ndarray | None = None


def _jump() -> np.ndarray:
    """Byte tables of xorshift32's powers: ``T[k-1, j, v]`` is ``k`` steps applied to the
    state ``v << 8j`` (k = 1 .. _JUMP_BLOCK). xorshift32 is linear over GF(2), so ``k`` steps
    of any state are the XOR of the tables of its four bytes."""
    global _jump_tables
    if _jump_tables is None:
        cols = np.array([1 << i for i in range(32)], dtype=np.uint32)        # images of the unit states
        bits = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(bool)  # (256, 8)
        tables = np.empty((_JUMP_BLOCK, 4, 256), dtype=np.uint32)
        for k in range(_JUMP_BLOCK):
            cols = xorshift32(cols)
            for j in range(4):
                picked = np.where(bits, cols[8 * j:8 * j + 8][None, :], np.uint32(0))
                tables[k, j] = np.bitwise_xor.reduce(picked, axis=1)
        _jump_tables = tables
    return _jump_tables


def xorshift32_states(x: np.ndarray, n: int) -> np.ndarray:
    """The next ``n`` states of every generator in ``x`` (uint32, shape (lanes,)): shape
    (n, lanes), equal to ``n`` calls of :func:`xorshift32` but computed a block at a time."""
    x = np.asarray(x, dtype=np.uint32).reshape(-1)
    tables = _jump()
    out = np.empty((n, len(x)), dtype=np.uint32)
    for start in range(0, n, _JUMP_BLOCK):
        m = min(_JUMP_BLOCK, n - start)
        t = tables[:m]
        out[start:start + m] = (t[:, 0, x & 0xFF] ^ t[:, 1, (x >> 8) & 0xFF]
                                ^ t[:, 2, (x >> 16) & 0xFF] ^ t[:, 3, x >> 24])
        x = out[start + m - 1]
    return out


def gauss_from_state(x: np.ndarray) -> np.ndarray:
    """The Irwin-Hall integer z in [-510, 510] read from a generator's state."""
    x = x.astype(np.int64)
    return (x & 0xFF) + ((x >> 8) & 0xFF) + ((x >> 16) & 0xFF) + ((x >> 24) & 0xFF) - 510


@overload
def round_shift(v: int, n: int) -> int: ...
@overload
def round_shift(v: npt.NDArray[Any], n: int) -> npt.NDArray[Any]: ...


def round_shift(v: int | npt.NDArray[Any], n: int) -> int | npt.NDArray[Any]:
    """Divide by 2**n rounding half up (add half, arithmetic shift right); n = 0 is identity."""
    if n == 0:
        return v
    return (v + (1 << (n - 1))) >> n


def noise(z: np.ndarray, q: int, frac_bits: int) -> np.ndarray:
    """Scale Irwin-Hall integers to noise of sigma q / 2**frac_bits * 147.80."""
    return round_shift(z * q, frac_bits)
