"""Integer encodings shared by every model of the chip: weights to cell codes, inputs to pulses.

Weights (signed integers, ``mapping.weight_bits`` wide) become ``slices`` column units per
logical column; unit ``u = col * slices + s`` holds slice ``s`` (least significant first).

* ``differential``: |w| is split into ``cell_bits``-wide digits; the digit goes to G+ when
  w > 0 and to G- when w < 0; the other cell of the pair holds code 0.
* ``offset``: w is split into balanced digits ``d_s`` in [-2**(cb-1), 2**(cb-1) - 1] with
  ``w = sum_s d_s * 2**(s*cb)``; the cell holds ``d_s + ref_code`` and the reference column
  (code ``ref_code`` = 2**(cb-1)) is subtracted on the bit line.

Inputs (signed integers, ``input.bits`` wide) become ``pulses`` signed digits per row:

* ``bit_serial`` / ``amplitude``: two's-complement digits of ``dac_bits``; all but the top
  digit are unsigned, the top one is signed; pulse p weighs 2**(p*dac_bits).
* ``unary``: pulse k carries sign(x) while |x| > k; every pulse weighs 1.
"""
from __future__ import annotations

from typing import Any, cast

import numpy as np
import numpy.typing as npt

from cimstack.chip.config import ChipConfig
from cimstack.errors import InputRangeError

__all__ = ["check_weights", "check_inputs", "check_post_params", "weights_to_codes", "codes_to_weights",
           "input_digits", "pulse_weights", "slice_weights", "memory_word_bits"]


def _as_int_array(a: npt.ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise InputRangeError(f"{what} contains NaN or infinity")
        if np.any(arr != np.round(arr)):
            raise InputRangeError(f"{what} must hold integers, got non-integral floats")
    elif arr.dtype.kind not in "iub":
        raise InputRangeError(f"{what} must be an integer array, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def check_weights(w: npt.ArrayLike, cfg: ChipConfig) -> np.ndarray:
    """Integer weights of shape (rows, cols) within the mapping's range, as int64."""
    dp, a = cfg.datapath, cfg.array
    w = _as_int_array(w, "weights")
    if w.shape != (a.rows, a.cols):
        raise InputRangeError(f"weights have shape {w.shape}, the tile holds ({a.rows}, {a.cols})")
    if w.min() < dp.weight_min or w.max() > dp.weight_max:
        raise InputRangeError(
            f"weights span [{w.min()}, {w.max()}], outside [{dp.weight_min}, {dp.weight_max}] "
            f"for {cfg.mapping.weight_bits}-bit {cfg.mapping.scheme} mapping")
    return w


def check_inputs(x: npt.ArrayLike, cfg: ChipConfig, mode: str | None = None) -> np.ndarray:
    """Integer inputs of shape (..., rows) within the input range of ``mode`` (default: the
    config's input mode), as int64."""
    x = _as_int_array(x, "inputs")
    rows, bits = cfg.array.rows, cfg.input.bits
    if x.ndim == 0 or x.shape[-1] != rows:
        raise InputRangeError(f"inputs have shape {x.shape}, the last axis must be the {rows} rows")
    md = cfg.datapath.mode(mode)
    lo, hi = md.in_min, md.in_max
    if x.size and (x.min() < lo or x.max() > hi):
        raise InputRangeError(f"inputs span [{x.min()}, {x.max()}], outside [{lo}, {hi}] "
                              f"for {bits}-bit {md.name} inputs")
    return x


def weights_to_codes(w: npt.ArrayLike, cfg: ChipConfig) -> tuple[np.ndarray, np.ndarray]:
    """Cell codes (G+, G-) of shape (rows, units); for ``offset`` G- is the reference code."""
    dp, cb = cfg.datapath, cfg.cell.cell_bits
    w = check_weights(w, cfg)
    mask = (1 << cb) - 1
    if cfg.mapping.scheme == "differential":
        mag = np.abs(w)
        digits = np.stack([(mag >> (s * cb)) & mask for s in range(dp.slices)], axis=-1)
        pos = np.where(w[..., None] > 0, digits, 0)
        neg = np.where(w[..., None] < 0, digits, 0)
    else:
        half = 1 << (cb - 1)
        balanced: list[np.ndarray] = []
        rest = w.copy()
        for _ in range(dp.slices):
            d = ((rest + half) & mask) - half
            balanced.append(d)
            rest = (rest - d) >> cb
        pos = np.stack(balanced, axis=-1) + dp.ref_code
        neg = np.full_like(pos, dp.ref_code)
    rows = cfg.array.rows
    return pos.reshape(rows, dp.units), neg.reshape(rows, dp.units)


def slice_weights(cfg: ChipConfig) -> np.ndarray:
    """Weight of each slice in a logical column: 2**(s*cell_bits)."""
    return np.array([1 << (s * cfg.cell.cell_bits) for s in range(cfg.datapath.slices)], dtype=np.int64)


def codes_to_weights(pos: npt.ArrayLike, neg: npt.ArrayLike, cfg: ChipConfig) -> np.ndarray:
    """Inverse of :func:`weights_to_codes` for any codes: sum_s (G+ - G-) * 2**(s*cb)."""
    dp = cfg.datapath
    diff = (np.asarray(pos, dtype=np.int64) - np.asarray(neg, dtype=np.int64))
    diff = diff.reshape(*diff.shape[:-1], cfg.array.cols, dp.slices)
    return diff @ slice_weights(cfg)


def input_digits(x: npt.ArrayLike, cfg: ChipConfig, mode: str | None = None) -> np.ndarray:
    """Signed pulse digits of shape (pulses, ..., rows), in pulse order, for ``mode``
    (default: the config's input mode)."""
    md = cfg.datapath.mode(mode)
    x = check_inputs(x, cfg, md.name)
    if md.name == "unary":
        k = np.arange(md.pulses).reshape((-1,) + (1,) * x.ndim)
        return np.where(np.abs(x)[None] > k, np.sign(x)[None], 0)
    db = md.pulse_shift
    mask = (1 << db) - 1
    out: list[np.ndarray] = []
    for p in range(md.pulses - 1):
        out.append((x >> (p * db)) & mask)
    out.append(x >> ((md.pulses - 1) * db))          # arithmetic shift: the signed top digit
    return np.stack(out)


def pulse_weights(cfg: ChipConfig, mode: str | None = None) -> np.ndarray:
    """Weight of each pulse's partial result in the shift-add."""
    md = cfg.datapath.mode(mode)
    return np.array([1 << (p * md.pulse_shift) for p in range(md.pulses)], dtype=np.int64)


def check_adc_registers(cfg: ChipConfig, gain: object, offset: object) -> tuple[int, int]:
    """The ADC gain (integration time, 1..255) and offset (ADC codes) registers, checked."""
    lo, hi = cfg.datapath.adc_min, cfg.datapath.adc_max
    for name, v, a, b in (("gain", gain, 1, 255), ("offset", offset, lo, hi)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not a <= v <= b:
            raise InputRangeError(f"ADC {name} must be an integer in {a}..{b}, got {v!r}")
    # the loop above checked both: integers (not bools) within range
    return int(cast("int | np.integer[Any]", gain)), int(cast("int | np.integer[Any]", offset))


def check_post_params(bias: npt.ArrayLike | None, scale: npt.ArrayLike | None, cfg: ChipConfig) -> dict[str, np.ndarray]:
    """Per-column post-processing registers within their RTL widths; ``None`` entries are
    left out of the returned dict."""
    p, cols = cfg.post, cfg.array.cols
    out: dict[str, np.ndarray] = {}
    for name, value, lo, hi in (("bias", bias, -(1 << (p.bias_bits - 1)), (1 << (p.bias_bits - 1)) - 1),
                                ("scale", scale, 0, (1 << p.scale_bits) - 1)):
        if value is None:
            continue
        arr = np.asarray(value)
        if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise InputRangeError(f"post {name} must hold integers, got non-integral values")
        if arr.dtype.kind not in "iuf" or arr.shape != (cols,) or arr.min() < lo or arr.max() > hi:
            raise InputRangeError(f"post {name} must be {cols} integers in [{lo}, {hi}]")
        out[name] = arr.astype(np.int64)
    return out


def memory_word_bits(cfg: ChipConfig) -> int:
    """Bits of one crossbar memory word: every lane's cells, each state plus a 2-bit stuck flag."""
    dp = cfg.datapath
    return cfg.array.mac_lanes * dp.cells_per_unit * (dp.state_bits + 2)
