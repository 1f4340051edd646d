"""DAC, ADC and digital back end of a tile, in torch, with straight-through gradients.

These are the float counterparts of steps 1-4 of :mod:`cimstack.golden`: the word-line
drivers (input digits per pulse, :func:`cimstack.chip.datapath.input_digits` semantics), the column
ADC (gain as integration time, offset, round half up, saturation), the shift-accumulator and
the post-processing unit. Every rounding step is round-half-up (``floor(v + 1/2)``), which
is what the RTL's ``round_shift`` computes, so on integer-valued float64 data these functions
reproduce the golden model exactly. Where they quantise, the backward pass is a
straight-through estimator (STE): rounding passes the gradient unchanged, saturation
(``torch.clamp``) zeroes it outside the range, as in the clipped STE of Bengio et al. 2013 and
the LSQ-style quantisers of OpenCIMTC (Yu et al., Nat. Commun. 2025).
"""
from __future__ import annotations

import numpy as np
import torch

from cimstack.chip.config import ChipConfig
from cimstack.chip.datapath import check_adc_registers, pulse_weights, slice_weights
from cimstack.errors import InputRangeError

__all__ = ["round_half_up", "floor_ste", "input_range", "as_input_tensor", "Dac", "Adc",
           "shift_add", "post_process"]


def round_half_up(v: torch.Tensor) -> torch.Tensor:
    """``floor(v + 1/2)`` forward, identity backward (STE).

    Half up, not half to even, because the RTL rounds by adding half an LSB and shifting.
    """
    return v + (torch.floor(v + 0.5) - v).detach()


def floor_ste(v: torch.Tensor) -> torch.Tensor:
    """``floor(v)`` forward, identity backward (STE)."""
    return v + (torch.floor(v) - v).detach()


def input_range(cfg: ChipConfig, mode: str | None = None) -> tuple[int, int]:
    """Smallest and largest integer input of input ``mode`` (default: the config's; unary
    inputs are symmetric: no ``-2**(b-1)``)."""
    md = cfg.datapath.mode(mode)
    return md.in_min, md.in_max


def as_input_tensor(x, cfg: ChipConfig, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None, mode: str | None = None) -> torch.Tensor:
    """Validate integer-valued inputs of shape ``(rows,)`` or ``(batch, rows)``.

    Returns a float tensor (keeping the autograd graph of a float tensor handed in), so the
    same call serves inference on integers and training on STE-quantised floats. Raises
    :class:`~cimstack.errors.InputRangeError` for a wrong shape, NaN/inf, non-integral values
    or values outside the input range: nothing is silently clipped.
    """
    rows = cfg.array.rows
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bool or x.is_complex():
            raise InputRangeError(f"inputs must be a real tensor, got dtype {x.dtype}")
        t = x.to(dtype=dtype, device=device) if x.is_floating_point() else x.to(device=device).to(dtype)
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "iuf":
            raise InputRangeError(f"inputs must be numeric, got dtype {arr.dtype}")
        t = torch.as_tensor(arr, dtype=dtype, device=device)
    if t.ndim not in (1, 2) or t.shape[-1] != rows:
        raise InputRangeError(f"inputs have shape {tuple(t.shape)}, expected ({rows},) or (batch, {rows})")
    with torch.no_grad():
        if not torch.isfinite(t).all():
            raise InputRangeError("inputs contain NaN or infinity")
        if (t != torch.floor(t)).any():
            raise InputRangeError("inputs must hold integers (quantise floats with Dac.quantize first)")
        lo, hi = input_range(cfg, mode)
        if t.numel() and (t.min() < lo or t.max() > hi):
            raise InputRangeError(f"inputs span [{t.min().item():g}, {t.max().item():g}], outside [{lo}, {hi}] "
                                  f"for {cfg.input.bits}-bit {cfg.datapath.mode(mode).name} inputs")
    return t


class Dac:
    """Word-line drivers: integer inputs to signed pulse digits and voltages.

    Bit-serial and multi-bit amplitude modes send two's-complement digits of ``dac_bits``
    (all unsigned but the signed top digit) with pulse ``p`` weighing ``2**(p*dac_bits)``;
    unary mode sends ``2**(bits-1) - 1`` pulses of ``sign(x)``, pulse ``k`` active while
    ``|x| > k`` (OpenCIMTC's unary expansion, Yu et al. 2025). This is
    :func:`cimstack.chip.datapath.input_digits` in torch, vectorised over the batch.
    """

    def __init__(self, cfg: ChipConfig):
        self.cfg = cfg

    def quantize(self, x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
        """Real-valued activations to integer inputs ``clamp(round(x / scale))`` with STE.

        The output is a float tensor with integer values that :meth:`digits` accepts.
        """
        lo, hi = input_range(self.cfg)
        return torch.clamp(round_half_up(x / scale), lo, hi)

    def pulse_digits(self, x: torch.Tensor, mode: str | None = None, *, dtype: torch.dtype = torch.float32,
                     dim: int = 0, first: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """Signed pulse digits of integer inputs ``x`` as ``dtype``, the pulses along a new
        dimension ``dim`` (0: shape ``(pulses, *x.shape)``); only the ``first`` pulses if given;
        written into ``out`` if given (of that shape and dtype).

        :func:`cimstack.chip.datapath.input_digits` in torch: shifts and masks on the
        integers (an arithmetic shift gives the signed top digit), each pulse written once
        into the output, no float ``floor``/``remainder`` chains.
        """
        md = self.cfg.datapath.mode(mode)
        count = md.pulses if first is None else first
        shape = list(x.shape)
        shape.insert(dim, count)
        if out is None:
            out = torch.empty(shape, dtype=dtype, device=x.device)
        if md.name == "unary":                     # pulse k drives sign(x) while |x| > k
            sign, mag = torch.sign(x), x.abs()
            for k in range(count):
                out.select(dim, k).copy_(sign * (mag > k))
            return out
        bits = self.cfg.input.bits                 # the narrowest integers that hold the inputs: fewer bytes to shift
        xs = x.to(torch.int8 if bits <= 8 else torch.int16 if bits <= 16 else torch.int32)
        step, mask = md.pulse_shift, (1 << md.pulse_shift) - 1
        for p in range(count):                     # a handful of pulses: not a per-element loop
            digit = xs >> (p * step)
            out.select(dim, p).copy_(digit if p == md.pulses - 1 else digit & mask)   # the top digit is signed
        return out

    def live_pulses(self, x: torch.Tensor, mode: str | None = None) -> int:
        """How many leading pulses of integer inputs ``x`` drive any word line: the digits of
        the others are all zero, so their column sums are exactly zero (the chip still
        converts them: the ADC sees its noise alone). Small non-negative inputs (after a ReLU)
        leave the high digits, in bit-serial mode the signed top digit, at zero."""
        md = self.cfg.datapath.mode(mode)
        if x.numel() == 0:
            return md.pulses
        low, high = (int(v) for v in torch.aminmax(x))
        if md.name == "unary":
            return min(md.pulses, max(abs(low), abs(high)))
        if low < 0:
            return md.pulses
        # the digits above the highest set bit are zero (the signed top digit too: its weight
        # is the sign only when it is one bit wide)
        return min(md.pulses, -(-high.bit_length() // md.pulse_shift))

    def digits(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """Signed pulse digits, shape ``(pulses, *x.shape)``, in pulse order, for input
        ``mode`` (default: the config's; every mode a VMM may select is available).

        The forward values are exact (:meth:`pulse_digits` of the integer-valued ``x``); the
        backward pass gives pulse ``p`` the gradient ``1 / (pulses * w_p)`` of ``x`` so that
        the weighted digit sum ``sum_p w_p d_p = x`` has gradient one (a straight-through
        estimator of the decomposition).
        """
        md = self.cfg.datapath.mode(mode)
        xd = x.detach()
        d = self.pulse_digits(xd.to(torch.int32), mode, dtype=x.dtype)
        if x.requires_grad:
            c = torch.tensor([1.0 / (md.pulses * int(w)) for w in pulse_weights(self.cfg, md.name)],
                             dtype=x.dtype, device=x.device)
            c = c.reshape((-1,) + (1,) * x.ndim)
            d = d + c * (x - xd).unsqueeze(0)
        return d


class Adc:
    """Column ADC: ``code = clamp(round_half_up(a * gain / 2**gain_shift) + offset)``.

    ``a`` is the column unit's analog sum in code units (one cell code times one input unit).
    ``gain`` is the integration time (OpenCIMTC's IT): a current-integrating ADC collects a
    charge proportional to current times integration time, so doubling ``gain`` doubles the
    code. ``gain`` and ``offset`` are run-time registers, as on the chip. Column sharing
    (``array.adc_share`` units per converter) serialises conversions but does not change any
    value.
    """

    def __init__(self, cfg: ChipConfig):
        self.cfg = cfg
        self.bits = cfg.adc.bits
        self.gain_shift = cfg.adc.gain_shift
        self.gain = cfg.adc.gain
        self.offset = cfg.adc.offset
        self.code_min, self.code_max = cfg.datapath.adc_min, cfg.datapath.adc_max

    def set_registers(self, gain: int | None = None, offset: int | None = None) -> None:
        """Change the run-time gain (integration time, 1..255) and offset registers."""
        self.gain, self.offset = check_adc_registers(self.cfg, self.gain if gain is None else gain,
                                                     self.offset if offset is None else offset)

    @property
    def scale(self) -> float:
        """Codes per code-unit of analog sum: ``gain / 2**gain_shift``."""
        return self.gain / float(1 << self.gain_shift)

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        code = round_half_up(a * self.scale) + self.offset
        return torch.clamp(code, self.code_min, self.code_max)


def shift_add(codes: torch.Tensor, cfg: ChipConfig, mode: str | None = None) -> torch.Tensor:
    """Shift-accumulate ADC codes ``(pulses, batch, units)`` of input ``mode`` into columns ``(batch, cols)``.

    ``y[j] = sum_s sum_p code[p, j*slices + s] * 2**(p*pulse_shift) * 2**(s*cell_bits)``:
    the golden model's shift-accumulator and slice combiner as one weighted sum.
    """
    dp = cfg.datapath
    pw = torch.as_tensor(pulse_weights(cfg, mode), dtype=codes.dtype, device=codes.device)
    acc = torch.einsum("pbu,p->bu", codes, pw)
    acc = acc.reshape(acc.shape[0], cfg.array.cols, dp.slices)
    sw = torch.as_tensor(slice_weights(cfg), dtype=codes.dtype, device=codes.device)
    return acc @ sw


def post_process(y: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, shift: int,
                 relu: bool, out_bits: int) -> torch.Tensor:
    """``sat(relu(round_half_up((y + bias) * scale / 2**shift)))`` with STE gradients.

    Exact on float64 while ``|(y + bias) * scale| < 2**53``.
    """
    v = round_half_up((y + bias) * scale / float(1 << shift))
    if relu:
        v = torch.relu(v)
    half = float(1 << (out_bits - 1))
    return torch.clamp(v, -half, half - 1)

