"""Golden model: the integer datapath of one RTL tile, vectorised in NumPy, bit for bit.

One VMM ``y = post(x @ W)`` runs, for each group ``g`` of ``mac_lanes`` column units, for
each input pulse ``p``, over all rows:

1. **Crossbar.** Each cell stores a ``state_bits`` conductance state plus a 2-bit stuck flag
   (bit 1: stuck at the top code, else bit 0: stuck at code 0). A read takes the code
   ``state >> frac_bits``, forced by the flag. Unit ``u`` contributes
   ``sum_r digit[p, r] * (code+[r, u] - code-[r, u])`` (code- is the reference code in the
   offset scheme).
2. **ADC**, per unit and pulse: the lane's xorshift32 steps once (see :mod:`cimstack.chip.prng`),
   ``a = sum + round_shift(z * read_noise_q, 16)``,
   ``code = clamp(round_shift(a * gain, gain_shift) + offset, adc_min, adc_max)``.
3. **Shift-accumulator:** ``acc[u] += code << (p * pulse_shift)``; after the last pulse,
   column ``j`` is ``y[j] = sum_s acc[j*slices + s] << (s * cell_bits)``.
4. **Post-processing:** ``v = round_shift((y + bias[j]) * scale[j], post.shift)``, ReLU if
   enabled, saturated to ``post.out_bits`` signed.

Lane ``l`` converts units ``g * mac_lanes + l``; its generator is used in order of VMM, then
group, then pulse. Run-time registers (ADC gain and offset, ReLU, seed) start from the config
and can be changed as on the chip.

Cell update (a programming pulse): with Gs = 2**state_bits - 1 and ``dist = Gs + 1 - g`` for
SET or ``g + 1`` for RESET, ``d = round_shift(amplitude * pulse_step_q * dist, state_bits + 4)``,
``d += round_shift(d * z * c2c_noise_q, 16)`` from the tile's update generator (stepped once
per pulse, stuck or not), ``g = clamp(g +/- d, 0, Gs)``. Stuck cells do not change.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cimstack.chip import prng
from cimstack.chip.config import NOISE_FRAC_BITS, ChipConfig
from cimstack.chip.datapath import check_inputs, check_post_params, input_digits, weights_to_codes
from cimstack.chip.enums import Polarity, Stuck
from cimstack.errors import InputRangeError

__all__ = ["GoldenTile", "Pulse"]


@dataclass(frozen=True)
class Pulse:
    """One programming pulse on one physical cell (``cell`` 0 = G+, 1 = G-)."""

    row: int
    unit: int
    cell: int
    polarity: Polarity
    amplitude: int       # 1 .. device.pulse_max_amplitude

def _clamp_signed(v: np.ndarray, bits: int) -> np.ndarray:
    return np.clip(v, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


class GoldenTile:
    """Bit-exact model of one tile's state and datapath."""

    def __init__(self, cfg: ChipConfig, tile: int = 0):
        self.cfg, self.tile = cfg, tile
        dp, a = cfg.datapath, cfg.array
        self.state = np.zeros((a.rows, dp.units, dp.cells_per_unit), dtype=np.int64)
        self.stuck = np.zeros_like(self.state)
        self.bias = np.zeros(a.cols, dtype=np.int64)
        self.scale = np.ones(a.cols, dtype=np.int64)
        self.adc_gain, self.adc_offset = cfg.adc.gain, cfg.adc.offset
        self.relu = cfg.post.relu
        self.reseed(cfg.seed)

    # -- registers -------------------------------------------------------------------------
    def reseed(self, seed: int) -> None:
        lanes = self.cfg.array.mac_lanes
        self.lane_rng = np.array(
            [prng.seed_state(seed, prng.read_lane_stream(self.tile, l)) for l in range(lanes)],
            dtype=np.uint32)
        self.update_rng = np.array([prng.seed_state(seed, prng.update_stream(self.tile))], dtype=np.uint32)

    def set_post(self, bias: npt.ArrayLike | None = None, scale: npt.ArrayLike | None = None) -> None:
        for name, arr in check_post_params(bias, scale, self.cfg).items():
            setattr(self, name, arr)

    # -- programming -----------------------------------------------------------------------
    def program_weights(self, w: npt.ArrayLike) -> None:
        """Set every cell exactly to the code of integer weights ``w`` (fraction bits zero)."""
        pos, neg = weights_to_codes(w, self.cfg)
        frac = self.cfg.cell.frac_bits
        self.state[..., 0] = pos << frac
        if self.cfg.datapath.cells_per_unit == 2:
            self.state[..., 1] = neg << frac

    def set_state(self, state: npt.ArrayLike, stuck: npt.ArrayLike | None = None) -> None:
        dp = self.cfg.datapath
        state = np.asarray(state, dtype=np.int64)
        if state.shape != self.state.shape or state.min() < 0 or state.max() >= 1 << dp.state_bits:
            raise InputRangeError(f"cell states must have shape {self.state.shape} and lie in [0, {(1 << dp.state_bits) - 1}]")
        self.state = state.copy()
        if stuck is not None:
            stuck = np.asarray(stuck, dtype=np.int64)
            if stuck.shape != self.state.shape or not np.isin(stuck, tuple(Stuck)).all():
                raise InputRangeError(f"stuck map must have shape {self.state.shape} with values 0, 1, 2")
            self.stuck = stuck.copy()

    def codes(self) -> np.ndarray:
        """Effective conductance codes (rows, units, cells) as a VMM reads them."""
        dp = self.cfg.datapath
        code = self.state >> self.cfg.cell.frac_bits
        code = np.where(self.stuck == Stuck.AT_0, 0, code)
        return np.where(self.stuck >= Stuck.AT_MAX, dp.code_max, code)      # the unused 3 too (bit 1)

    def effective_weights(self) -> np.ndarray:
        """Per-unit signed cell difference (rows, units) the bit lines see."""
        c = self.codes()
        if self.cfg.datapath.cells_per_unit == 2:
            return c[..., 0] - c[..., 1]
        return c[..., 0] - self.cfg.datapath.ref_code

    def pulse(self, p: Pulse) -> int:
        """Apply one programming pulse; returns the cell's new state. (Write-verify runs this
        update inlined, :func:`cimstack.golden.writeverify.ispp_cells`; tests/golden holds the
        two equal.)"""
        dp, dev = self.cfg.datapath, self.cfg.device
        if not (0 <= p.row < self.cfg.array.rows and 0 <= p.unit < dp.units and 0 <= p.cell < dp.cells_per_unit):
            raise InputRangeError(f"pulse targets cell ({p.row}, {p.unit}, {p.cell}) outside the tile")
        if p.polarity not in tuple(Polarity) or not 1 <= p.amplitude <= dev.pulse_max_amplitude:
            raise InputRangeError(f"pulse polarity {p.polarity} / amplitude {p.amplitude} invalid "
                                  f"(polarity 0 SET or 1 RESET, amplitude 1..{dev.pulse_max_amplitude})")
        self.update_rng = prng.xorshift32(self.update_rng)
        z = int(prng.gauss_from_state(self.update_rng)[0])
        g = int(self.state[p.row, p.unit, p.cell])
        if self.stuck[p.row, p.unit, p.cell]:
            return g
        gs = (1 << dp.state_bits) - 1
        dist = gs + 1 - g if p.polarity == Polarity.SET else g + 1
        d = prng.round_shift(p.amplitude * dp.pulse_step_q * dist, dp.state_bits + 4)
        d += prng.round_shift(d * z * dp.c2c_noise_q, NOISE_FRAC_BITS)
        g = g + d if p.polarity == Polarity.SET else g - d
        g = min(max(g, 0), gs)
        self.state[p.row, p.unit, p.cell] = g
        return g

    def read_cell(self, row: int, unit: int, cell: int) -> int:
        """The cell's effective state, noise-free (stuck cells read as 0 or full scale)."""
        dp = self.cfg.datapath
        if not (0 <= row < self.cfg.array.rows and 0 <= unit < dp.units and 0 <= cell < dp.cells_per_unit):
            raise InputRangeError(f"read targets cell ({row}, {unit}, {cell}) outside the tile")
        st = int(self.stuck[row, unit, cell])
        if st == Stuck.AT_0:
            return 0
        if st == Stuck.AT_MAX:
            return (1 << dp.state_bits) - 1
        return int(self.state[row, unit, cell])

    # -- inference -------------------------------------------------------------------------
    def column_sums(self, x: npt.ArrayLike, mode: str | None = None) -> np.ndarray:
        """Noise-free analog sums per pulse: shape (pulses, ..., units)."""
        digits = input_digits(x, self.cfg, mode)
        w = self.effective_weights()
        # Integers whose partial sums all stay below 2**24 (2**53) in magnitude are exact in
        # float32 (float64), summed in any order: BLAS then gives the integer product exactly,
        # ten times and more faster than NumPy's integer matmul. |digit| is within the mode's
        # digit range and |w| <= code_max (both cells' codes lie in 0..code_max).
        md, dp = self.cfg.datapath.mode(mode), self.cfg.datapath
        bound = self.cfg.array.rows * max(-md.digit_min, md.digit_max, 1) * max(dp.code_max, 1)
        for dtype, limit in ((np.float32, 1 << 24), (np.float64, 1 << 53)):
            if bound < limit:
                return (digits.astype(dtype) @ w.astype(dtype)).astype(np.int64)
        return digits @ w

    def vmm(self, x: npt.ArrayLike, mode: str | None = None) -> np.ndarray:
        """Run VMMs for inputs of shape (rows,) or (batch, rows), in order, in input ``mode``
        (default: the config's); returns int64 outputs."""
        cfg, dp = self.cfg, self.cfg.datapath
        md = dp.mode(mode)
        x = check_inputs(x, cfg, md.name)
        single = x.ndim == 1
        xb = x.reshape(-1, cfg.array.rows)
        sums = self.column_sums(xb, md.name)                     # (P, B, U)
        lanes, groups, pulses = cfg.array.mac_lanes, dp.groups, md.pulses
        n_batch = xb.shape[0]
        # Draw the lane noise in the RTL's order: VMM, group, pulse.
        steps = n_batch * groups * pulses
        if steps == 0:
            return np.zeros((0, cfg.array.cols), dtype=np.int64)
        states = prng.xorshift32_states(self.lane_rng, steps)
        z = prng.gauss_from_state(states)
        self.lane_rng = states[-1].copy()
        z = z.reshape(n_batch, groups, pulses, lanes)
        # (P, B, U) -> (B, G, P, L) to line up with the noise draws
        s = sums.reshape(pulses, n_batch, groups, lanes).transpose(1, 2, 0, 3)
        a = s + prng.noise(z, dp.read_noise_q, NOISE_FRAC_BITS)
        code = prng.round_shift(a * self.adc_gain, cfg.adc.gain_shift) + self.adc_offset
        code = np.clip(code, dp.adc_min, dp.adc_max)
        shifts = (np.arange(pulses) * md.pulse_shift).reshape(1, 1, pulses, 1)
        acc = (code << shifts).sum(axis=2)                       # (B, G, L)
        acc = acc.reshape(n_batch, cfg.array.cols, dp.slices)
        y = (acc << (np.arange(dp.slices) * cfg.cell.cell_bits)).sum(axis=-1)
        y = self.post_process(y)
        return y[0] if single else y

    def post_process(self, y: np.ndarray) -> np.ndarray:
        p = self.cfg.post
        v = prng.round_shift((y + self.bias) * self.scale, p.shift)
        if self.relu:
            v = np.maximum(v, 0)
        return _clamp_signed(v, p.out_bits)

    def adc_scale(self) -> float:
        """Output units per unit of the ideal product (gain / 2**gain_shift)."""
        return self.adc_gain / (1 << self.cfg.adc.gain_shift)

    # -- memory image for the RTL ----------------------------------------------------------
    def memory_image(self) -> list[int]:
        """Crossbar memory words, address ``g * rows + r``; lane l, cell c at bit
        ``(l * cells + c) * (state_bits + 2)``: state in the low bits, stuck flag above."""
        cfg, dp = self.cfg, self.cfg.datapath
        rows, lanes, cells = cfg.array.rows, cfg.array.mac_lanes, dp.cells_per_unit
        entry_bits = dp.state_bits + 2
        entry = self.state | (self.stuck << dp.state_bits)                # (R, U, C)
        entry = entry.reshape(rows, dp.groups, lanes * cells).transpose(1, 0, 2)  # (G, R, L*C)
        words: list[int] = []
        for vals in entry.reshape(-1, lanes * cells):
            w = 0
            for k, v in enumerate(vals.tolist()):
                w |= v << (k * entry_bits)
            words.append(w)
        return words

