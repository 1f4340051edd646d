"""The chip's analog layer as a differentiable PyTorch function, for hardware-aware training.

:func:`analog_matmul` computes ``x @ M`` the way a deployed layer computes it on the chip
(:mod:`cimstack.compiler.mapper`, :class:`cimstack.physics.TileEmulator`), with every step that loses
information drawn from the same config and the same device model:

1. inputs quantised to the config's input bits over a (learned) input range, LSQ gradients
   (Esser et al., ICLR 2020) to the range;
2. weights quantised to the signed weight codes with one scale per output column (the
   mapper's default), straight-through;
3. each weight split into cells (differential pair or offset reference column, bit slices:
   :func:`cimstack.chip.datapath.weights_to_codes` semantics), and each cell's conductance drawn
   from :class:`cimstack.physics.DeviceModel`: what write-verify leaves
   (:meth:`DeviceModel.post_verify`: the residual in the verify window and the relaxation
   after it) or open-loop programming noise, stuck-at faults, drift to a read time with per-device exponents,
   read noise at that time, optional global drift compensation;
4. the rows cut into array-sized blocks (:func:`cimstack.compiler.mapper.even_splits`); per block, per
   input pulse and per slice a column sum with the word-line I-V nonlinearity, Gaussian
   output noise of ``device.output_noise_lsb`` per conversion, then the ADC (rounding and
   saturation, straight-through inside the range, zero gradient when saturated);
5. shift-add of pulses and slices, dequantisation, digital sum of the row blocks.

Steps 4-5 are one autograd node per block (:class:`PulsedAdcMatmul`): every pulse in one
product, one noise draw, the straight-through gradients in closed form.

Fresh noise is drawn on every call (one chip instance per mini-batch, as aihwkit draws its
training noise). The layers :class:`AnalogLinear`, :class:`AnalogConv1d` and
:class:`AnalogConv2d` are ``nn.Linear`` / ``nn.Conv*d`` subclasses, so the compiler
(:func:`cimstack.compile`) maps a trained model directly and takes each layer's learned input
range instead of calibrating one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from cimstack.chip.config import ChipConfig
from cimstack.chip.datapath import pulse_weights, slice_weights
from cimstack.chip.enums import Stuck
from cimstack.compiler.mapper import even_splits
from cimstack.errors import ConfigError
from cimstack.physics.converters import Adc, Dac, round_half_up
from cimstack.physics.devices import DeviceModel, device_model, level_step_us
from cimstack.physics.irdrop import fast_transfer

__all__ = ["Nonidealities", "analog_matmul", "CellUnits", "PulsedAdcMatmul", "AnalogLayer", "AnalogLinear",
           "AnalogConv1d", "AnalogConv2d", "convert", "analog_layers", "set_nonidealities", "clip_weights",
           "PROGRAMMING"]

#: how cells reach their conductance: the write-verify residual (what ``Deployment.program``
#: leaves), open-loop programming noise (``DeviceModel.program``), or exact targets
PROGRAMMING = ("write_verify", "open_loop", "none")


@dataclass(frozen=True)
class Nonidealities:
    """Which of the chip's non-idealities a training forward draws.

    ``quantise``: inputs and weights to the chip's integers (needed by everything below
    but ``weight_noise_range``). ``adc``: column sums per pulse and slice through the ADC with
    output noise (False: ideal integer products). ``programming``: one of
    :data:`PROGRAMMING`. ``drift_t``: read time in seconds after programming, a number or a
    ``(lo, hi)`` range sampled log-uniformly per call (None: the first read at ``t0``).
    ``noise_scale`` multiplies every random non-ideality (training a little noisier than the
    chip is a common margin). ``ir_drop``: the first-order IR-drop model
    (:func:`cimstack.physics.irdrop.fast_transfer`) on each array-sized block, placed at an
    array's corner, when the config's wires have resistance; off by default because
    ``cimstack.compile`` corrects IR drop at mapping time (switch it on to train for a chip
    deployed with ``ir_compensation=False``). ``weight_noise_range``: OpenCIMTC's noise fine-tuning, additive
    ``clamp(N(0,1), ±3) * frac * (max w - min w)`` on the quantised weights (Yu et al., Nat.
    Commun. 2025: 0.06).
    """

    quantise: bool = True
    adc: bool = True
    programming: str = "write_verify"
    stuck: bool = True
    read_noise: bool = True
    output_noise: bool = True
    drift_t: float | tuple[float, float] | None = None
    drift_compensation: bool = True
    noise_scale: float = 1.0
    weight_noise_range: float = 0.0
    ir_drop: bool = False

    def __post_init__(self):
        if self.programming not in PROGRAMMING:
            raise ConfigError(f"programming = {self.programming!r} is not one of {', '.join(PROGRAMMING)}")
        if not (math.isfinite(self.noise_scale) and self.noise_scale >= 0):
            raise ConfigError(f"noise_scale = {self.noise_scale!r} must be a non-negative number")
        if not (0 <= self.weight_noise_range < 1):
            raise ConfigError(f"weight_noise_range = {self.weight_noise_range!r} must lie in [0, 1)")
        if self.adc and not self.quantise:
            raise ConfigError("the ADC model needs quantised inputs and weights (quantise=True)")
        t = self.drift_t
        ts = t if isinstance(t, tuple) else (t,) if t is not None else ()
        if any(not isinstance(v, (int, float)) or not v > 0 for v in ts) or len(ts) > 2 or \
                (len(ts) == 2 and ts[0] > ts[1]):
            raise ConfigError(f"drift_t = {t!r} must be a positive time in seconds or a (lo, hi) range")

    @classmethod
    def chip(cls, **kw) -> Nonidealities:
        """Everything the chip does (the default), with overrides."""
        return cls(**kw)

    @classmethod
    def off(cls) -> Nonidealities:
        """The floating-point layer."""
        return cls(quantise=False, adc=False, programming="none", stuck=False, read_noise=False,
                   output_noise=False, drift_compensation=False)

    @classmethod
    def opencimtc(cls, frac: float = 0.06) -> Nonidealities:
        """OpenCIMTC's post-deployment noise fine-tuning: quantised inputs and weights plus
        additive weight noise of ``frac`` times the layer's weight range."""
        return cls(adc=False, programming="none", stuck=False, read_noise=False, output_noise=False,
                   drift_compensation=False, weight_noise_range=frac)

    @property
    def active(self) -> bool:
        return self.quantise or self.weight_noise_range > 0


def _grad_scale(x: torch.Tensor, s: float) -> torch.Tensor:
    """``x`` forward, gradient times ``s`` backward (LSQ's step-size gradient scale)."""
    return (x - x * s).detach() + x * s


def _cells(w_int: torch.Tensor, cfg: ChipConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell codes (G+, G-) of integer weights, shape (..., slices), straight-through.

    Forward values are :func:`cimstack.chip.datapath.weights_to_codes`; backward, slice ``s`` of
    G+ takes ``1 / (slices * 2**(s*cell_bits))`` of the weight's gradient, so the slice
    recombination ``sum_s 2**(s*cb) (G+ - G-)`` has gradient one.
    """
    dp, cb = cfg.datapath, cfg.cell.cell_bits
    base = float(1 << cb)
    wd = w_int.detach()
    if cfg.mapping.scheme == "differential":
        mag = wd.abs()
        digits = torch.stack([torch.remainder(torch.floor(mag / base ** s), base) for s in range(dp.slices)], dim=-1)
        zero = torch.zeros((), dtype=wd.dtype, device=wd.device)
        pos = torch.where(wd.unsqueeze(-1) > 0, digits, zero)
        neg = torch.where(wd.unsqueeze(-1) < 0, digits, zero)
    else:
        half = base / 2
        digits, rest = [], wd
        for _ in range(dp.slices):
            d = torch.remainder(rest + half, base) - half
            digits.append(d)
            rest = (rest - d) / base
        pos = torch.stack(digits, dim=-1) + dp.ref_code
        neg = torch.full_like(pos, float(dp.ref_code))
    c = torch.tensor([1.0 / (dp.slices * base ** s) for s in range(dp.slices)], dtype=wd.dtype, device=wd.device)
    if w_int.requires_grad:
        pos = pos + c * (w_int - wd).unsqueeze(-1)
    return pos, neg


def _draw_time(t, device_cfg) -> float:
    t0 = device_cfg.drift_t0_s
    if t is None:
        return t0
    if isinstance(t, tuple):
        lo, hi = max(t[0], t0), max(t[1], t0)
        return float(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(()).item()))
    return max(float(t), t0)


def _unit_values(pos: torch.Tensor, neg: torch.Tensor, cfg: ChipConfig, ni: Nonidealities,
                 devices: DeviceModel) -> torch.Tensor:
    """Per-unit analog weights (G+ - G-) in code units with the cell non-idealities drawn."""
    return _draw_units(pos, neg, cfg, ni, devices)[0]


def _draw_units(pos: torch.Tensor, neg: torch.Tensor, cfg: ChipConfig, ni: Nonidealities,
                devices: DeviceModel) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_unit_values` and ``d u / d pos`` of its draw, which without IR drop is an
    elementwise factor (the G+ cell's drift factor times the drift compensation, zero where
    the cell is stuck): what :class:`CellUnits` needs for its backward."""
    d, dp = cfg.device, cfg.datapath
    step = level_step_us(cfg)
    k = ni.noise_scale
    frac = cfg.cell.frac_bits
    cells = torch.stack([pos, neg])                       # (2, ..., slices) codes
    target = cells.detach()
    if ni.programming == "write_verify" and frac and k > 0:
        # what the verify loop leaves (anywhere in its window), then the device's relaxation
        tol = ((1 << (frac - 1)) - 1) / float(1 << frac) * step      # the verify window, µS
        g_c = d.g_min_us + (target + 0.5) * step                       # targets sit at their code bin's centre
        cells = cells + k * (devices.post_verify(g_c, tol) - g_c) / step
    elif ni.programming == "open_loop" and k > 0:
        g_target = d.g_min_us + target * step
        cells = cells + k * devices.programming_sigma(g_target) / step * torch.randn_like(target)
    free = None                                           # G+ cells not stuck
    if ni.stuck and (d.stuck_at_0_rate > 0 or d.stuck_at_gmax_rate > 0):
        flags = devices.sample_stuck(target.shape, torch.default_generator, device=target.device)
        cells = torch.where(flags == Stuck.AT_0, torch.zeros_like(cells), cells)
        cells = torch.where(flags == Stuck.AT_MAX, torch.full_like(cells, float(dp.code_max)), cells)
        free = flags[0] == Stuck.NONE
    if cfg.mapping.scheme == "offset":
        cells = torch.stack([cells[0], cells[1].detach()])
    g_prog = d.g_min_us + cells * step                    # µS
    t = _draw_time(ni.drift_t, d)
    drifts = d.model == "pcm" or d.drift_nu > 0
    factor = None                                         # drift factor of every cell
    if drifts and t > d.drift_t0_s:
        nu = devices.sample_nu(g_prog.detach().clamp(min=0), torch.default_generator)
        factor = devices.drift_factor(nu, t)
        g_t = g_prog * factor
    else:
        g_t = g_prog
    if ni.ir_drop and d.wire_resistance_ohm > 0:
        g_prog, g_t = _ir_drop(g_prog, cfg), _ir_drop(g_t, cfg)
    u_t = (g_t[0] - g_t[1]) / step
    if ni.drift_compensation and drifts and t > d.drift_t0_s:
        # readout(t0) / readout(t) for one unit pulse on every row, from the noise-free reads
        # (TileEmulator.drift_compensation_factor)
        u0 = (g_prog[0] - g_prog[1]).detach() / step
        alpha = u0.sum(0).abs().sum() / u_t.detach().sum(0).abs().sum().clamp(min=1e-12)
    else:
        alpha = 1.0
    if ni.read_noise and k > 0:
        sig = devices.read_noise_sigma(g_prog.detach(), g_t.detach(), t)
        noise = k * sig * torch.randn_like(sig)
        u_t = u_t + (noise[0] - noise[1]) / step
    grad = torch.full_like(target[0], 1.0) * alpha
    if factor is not None:
        grad = grad * factor[0]
    if free is not None:
        grad = grad * free
    return u_t * alpha, grad.detach()


class CellUnits(torch.autograd.Function):
    """Integer weights (in, out) to per-unit analog weights (in, out, slices) with the cell
    non-idealities drawn (:func:`_cells`, :func:`_unit_values`) as one autograd node.

    The forward runs without building a graph; the backward is the chain's straight-through
    gradient in closed form: slice ``s`` of G+ passes ``1 / (slices * 2**(s*cell_bits))`` of
    the weight's gradient (:func:`_cells`) times ``d u / d G+`` (the drift factor and
    compensation, zero where stuck). Without IR drop only: with it, every cell of a block
    moves every current, and :func:`analog_matmul` keeps the chain.
    """

    @staticmethod
    def forward(ctx, w_int: torch.Tensor, cfg: ChipConfig, ni: Nonidealities, devices: DeviceModel) -> torch.Tensor:
        pos, neg = _cells(w_int.detach(), cfg)
        u, slope = _draw_units(pos, neg, cfg, ni, devices)
        dp, base = cfg.datapath, float(1 << cfg.cell.cell_bits)
        c = torch.tensor([1.0 / (dp.slices * base ** s) for s in range(dp.slices)], dtype=u.dtype, device=u.device)
        ctx.save_for_backward(slope * c)
        return u

    @staticmethod
    def backward(ctx, gu: torch.Tensor):
        slope, = ctx.saved_tensors
        return (gu * slope).sum(-1), None, None, None


def _ir_drop(g: torch.Tensor, cfg: ChipConfig) -> torch.Tensor:
    """Effective conductances of cells (2, in, out, slices) µS under IR drop, block by block
    as the mapper cuts the matrix; each block in its array's physical column order (units
    ``out * slices + s``, the pair's two cells side by side)."""
    r = cfg.device.wire_resistance_ohm
    n_in, n_out, slices = g.shape[1:]
    rows_out = []
    for in0, rows in even_splits(n_in, cfg.array.usable_rows):
        cols_out = []
        for out0, cols in even_splits(n_out, cfg.array.usable_cols):
            blk = g[:, in0:in0 + rows, out0:out0 + cols]                          # (2, rows, cols, slices)
            phys = blk.permute(1, 2, 3, 0).reshape(rows, cols * slices * 2)
            cols_out.append(fast_transfer(phys, r, r).reshape(rows, cols, slices, 2).permute(3, 0, 1, 2))
        rows_out.append(torch.cat(cols_out, dim=2))
    return torch.cat(rows_out, dim=1)


def analog_matmul(x: torch.Tensor, m: torch.Tensor, x_range: torch.Tensor | float, cfg: ChipConfig,
                  ni: Nonidealities, devices: DeviceModel | None = None) -> torch.Tensor:
    """``x @ m`` as the chip computes it (module docstring), differentiable.

    ``x`` (batch, in_features), ``m`` (in_features, out_features), ``x_range`` the input
    magnitude mapped onto the largest input code (a tensor to learn it). Returns (batch,
    out_features) in the units of ``x @ m``.
    """
    if not ni.active:
        return x @ m
    dp = cfg.datapath
    md = dp.mode()
    if devices is None:
        devices = device_model(cfg)
    # 1. inputs
    n_in = x.shape[-1]
    r = x_range if isinstance(x_range, torch.Tensor) else torch.tensor(float(x_range), dtype=x.dtype)
    r = _grad_scale(r.abs().clamp(min=1e-8), 1.0 / math.sqrt(max(x.numel(), 1) * md.in_max))
    s_x = r / md.in_max
    xq = torch.clamp(round_half_up(x / s_x), md.in_min, md.in_max)
    # 2. weights, one scale per output column
    s_w = (m.detach().abs().amax(dim=0).clamp(min=1e-30) / dp.weight_max)
    w_int = torch.clamp(round_half_up(m / s_w), dp.weight_min, dp.weight_max)
    if not ni.adc:
        w = w_int
        if ni.weight_noise_range > 0 and ni.noise_scale > 0:
            span = (w_int.detach().amax() - w_int.detach().amin()).clamp(min=1.0)
            w = w + ni.noise_scale * ni.weight_noise_range * span * torch.clamp(torch.randn_like(w_int), -3, 3)
        return (xq @ w) * s_x * s_w
    # 3.-5. cells, blocks, pulses, ADC
    if ni.ir_drop and cfg.device.wire_resistance_ohm > 0:
        u = _unit_values(*_cells(w_int, cfg), cfg, ni, devices)               # (in, out, slices)
    else:
        u = CellUnits.apply(w_int, cfg, ni, devices)
    if ni.weight_noise_range > 0 and ni.noise_scale > 0:
        span = float(2 * dp.code_max)
        u = u + ni.noise_scale * ni.weight_noise_range * span * torch.clamp(torch.randn_like(u), -3, 3)
    adc = Adc(cfg)
    out_f = m.shape[1]
    sigma_out = cfg.device.output_noise_lsb * ni.noise_scale if ni.output_noise else 0.0
    dev = cfg.device
    iv = None if (dev.iv_a1, dev.iv_a2, dev.iv_a3) == (0.0, 1.0, 0.0) else devices.iv
    y = None
    for in0, rows in even_splits(n_in, cfg.array.usable_rows):
        part = PulsedAdcMatmul.apply(xq[:, in0:in0 + rows], u[in0:in0 + rows].reshape(rows, -1), cfg, sigma_out, iv)
        y = part if y is None else y + part
    assert y is not None                                 # even_splits gives at least one block
    return y.reshape(-1, out_f) * (1.0 / adc.scale) * s_x * s_w


class PulsedAdcMatmul(torch.autograd.Function):
    """One array block of :func:`analog_matmul` (steps 4-5) as one autograd node.

    Forward: the input digits of every pulse (:meth:`Dac.pulse_digits`) through the word-line
    I-V curve ``iv`` (None: linear) times the unit weights ``u`` (rows, cols * slices) in one
    product, output noise of sigma ``sigma`` drawn once for every conversion, the ADC (round
    half up, saturation; its offset removed) and the shift-add of pulses and slices:
    (batch, cols) in ADC-code units.

    Backward: the straight-through estimators of the step-by-step chain (digit decomposition,
    rounding, clipped saturation: :mod:`cimstack.physics.converters`) in closed form. With a
    linear I-V curve and no conversion saturated they are the gradients of ``gain * x @ u``
    shift-added: two products, not two per pulse; each saturated conversion (pulse ``p``,
    sample ``b``) then takes its share back, computed on those rows only.
    """

    @staticmethod
    def forward(ctx, xq: torch.Tensor, u: torch.Tensor, cfg: ChipConfig, sigma: float, iv) -> torch.Tensor:
        dp, md, adc = cfg.datapath, cfg.datapath.mode(), Adc(cfg)
        batch, rows = xq.shape
        dac, xi = Dac(cfg), xq.detach().to(torch.int32)
        live = md.pulses if iv is not None else dac.live_pulses(xi)     # an I-V offset drives idle rows
        digits = dac.pulse_digits(xi, dtype=u.dtype, first=live)                      # (live, B, R)
        drive = digits if iv is None else iv(digits)
        # every conversion's noise, then the column sums of the pulses that drive anything added on
        s = torch.empty((md.pulses * batch, u.shape[1]), dtype=u.dtype, device=u.device)
        if sigma > 0:
            s.normal_(0.0, sigma)
        else:
            s.zero_()
        s[:live * batch].addmm_(drive.reshape(-1, rows), u.detach())
        s = s.reshape(md.pulses, batch, u.shape[1])                                      # (P, B, U)
        codes = s.mul_(adc.scale).add_(0.5).floor_()
        lo, hi = adc.code_min - adc.offset, adc.code_max - adc.offset
        low, high = torch.aminmax(codes) if codes.numel() else (lo, hi)
        saturated = None
        if low < lo or high > hi:
            saturated = (codes < lo) | (codes > hi)
            codes.clamp_(lo, hi)
        pw = torch.as_tensor(pulse_weights(cfg), dtype=u.dtype, device=u.device)
        sw = torch.as_tensor(slice_weights(cfg), dtype=u.dtype, device=u.device)
        y = (pw @ codes.reshape(md.pulses, -1)).reshape(batch, u.shape[1] // dp.slices, dp.slices) @ sw   # (B, cols)
        ctx.save_for_backward(xq.detach(), u.detach(), digits, saturated)
        ctx.iv, ctx.gain, ctx.pw, ctx.sw = iv, adc.scale, pw, sw
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, u, digits, saturated = ctx.saved_tensors
        pulses, batch = len(ctx.pw), digits.shape[1]
        pw = ctx.pw.reshape(-1, 1, 1)
        # d y / d (sum of pulse p at unit (c, s)) = pw[p] sw[s] gain while that conversion is in range
        g = (gy.unsqueeze(-1) * (ctx.sw * ctx.gain)).reshape(batch, u.shape[1])         # (B, U)
        if ctx.iv is not None:                 # nonlinear drive: pulse by pulse, through iv's slope
            gp = pw * g if saturated is None else pw * g * ~saturated                  # (P, B, U)
            d = digits.detach().requires_grad_()
            with torch.enable_grad():
                drive = ctx.iv(d)
                slope, = torch.autograd.grad(drive.sum(), d)
            grad_x = ((gp @ u.t()) * slope / (pulses * pw)).sum(0)
            return grad_x, torch.einsum("pbr,pbu->ru", drive.detach(), gp), None, None, None
        # linear drive: sum_p pw[p] d_p = x, and the digit STE gives pulse p 1/(P pw[p]) of x's gradient
        grad_x, grad_u = g @ u.t(), x.t() @ g
        if saturated is not None:
            p, b, unit = saturated.nonzero().unbind(1)
            pairs, row = torch.unique(p * batch + b, return_inverse=True)             # saturated (pulse, sample)
            lost = torch.zeros((len(pairs), g.shape[1]), dtype=g.dtype, device=g.device)
            lost[row, unit] = g[b, unit]
            pp, bb = pairs // batch, pairs % batch
            grad_x = grad_x.index_add(0, bb, lost @ u.t(), alpha=-1.0 / pulses)
            live = pp < digits.shape[0]                      # saturated pulses that drove nothing add no weight gradient
            grad_u = grad_u - (digits[pp[live], bb[live]] * ctx.pw[pp[live]].unsqueeze(1)).t() @ lost[live]
        return grad_x, grad_u, None, None, None


if TYPE_CHECKING:
    _ModuleMixin = nn.Module      # AnalogLayer is mixed into nn.Linear / nn.Conv*d: it uses their Module
else:
    _ModuleMixin = object


class AnalogLayer(_ModuleMixin):
    """What the analog layers share: the chip config, the non-idealities, a learned input range.

    ``enabled`` switches the chip model on (the staged schedule turns layers on one by one);
    off, the layer is its float parent. The input range is initialised on the first enabled
    training forward from the ``init_percentile`` of |x| (as ``cimstack.compile`` calibrates),
    then learned.
    """

    chip: ChipConfig
    nonidealities: Nonidealities
    enabled: bool
    init_percentile: float = 99.0
    if TYPE_CHECKING:             # set by _setup_analog (a buffer) and by the nn layer mixed in
        range_initialised: torch.Tensor
        weight: torch.Tensor

    def _setup_analog(self, cfg: ChipConfig, ni: Nonidealities, enabled: bool) -> None:
        if not isinstance(cfg, ChipConfig):
            raise ConfigError(f"analog layers need a ChipConfig, got {type(cfg).__name__}")
        self.chip, self.nonidealities, self.enabled = cfg, ni, enabled
        self.devices = device_model(cfg)
        self.input_range = nn.Parameter(torch.zeros(()))
        self.register_buffer("range_initialised", torch.zeros((), dtype=torch.bool))

    @property
    def learned_input_range(self) -> float | None:
        """The input magnitude the compiler should map onto the largest input code."""
        return float(self.input_range.detach().abs()) if bool(self.range_initialised) else None

    def _analog(self, x2d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        if not bool(self.range_initialised):
            with torch.no_grad():
                v = x2d.detach().abs().flatten().double()
                k = max(1, int(round(self.init_percentile / 100 * v.numel())))
                r = float(v.kthvalue(k).values) if v.numel() else 1.0
                self.input_range.fill_(r if r > 0 else 1.0)
                self.range_initialised.fill_(True)
        return analog_matmul(x2d, m, self.input_range.to(x2d.dtype), self.chip, self.nonidealities, self.devices)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", chip={self.chip.name}, analog={'on' if self.enabled else 'off'}"


class AnalogLinear(AnalogLayer, nn.Linear):
    """``nn.Linear`` computed through :func:`analog_matmul` while enabled."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, cfg: ChipConfig,
                 nonidealities: Nonidealities = Nonidealities(), enabled: bool = True):
        nn.Linear.__init__(self, in_features, out_features, bias)
        self._setup_analog(cfg, nonidealities, enabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return F.linear(x, self.weight, self.bias)
        y = self._analog(x.reshape(-1, self.in_features), self.weight.t()).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def conv_as_matmul(mod: nn.Module, x: torch.Tensor, matmul) -> torch.Tensor:
    """A Conv1d/Conv2d module's output without bias, with the product of its im2col patches
    (positions, C*k) and its (C*k, out) matrix computed by ``matmul(patches)`` (the IR's
    conv lowering: patch order is the weight's ``reshape(out, -1)`` order)."""
    conv = cast("nn.Conv1d | nn.Conv2d", mod)
    padding = cast("tuple[int, ...]", conv.padding)        # integer padding (not "same"/"valid")
    two_d = isinstance(mod, nn.Conv2d)
    x4 = x if two_d else x.unsqueeze(-2)
    k = conv.kernel_size if two_d else (1, conv.kernel_size[0])
    pad = padding if two_d else (0, padding[0])
    stride = conv.stride if two_d else (1, conv.stride[0])
    dil = conv.dilation if two_d else (1, conv.dilation[0])
    cols = F.unfold(x4, k, dilation=dil, padding=pad, stride=stride)               # (N, C*k, L)
    n, ck, positions = cols.shape
    y = matmul(cols.transpose(1, 2).reshape(n * positions, ck))
    h_out = (x4.shape[-2] + 2 * pad[0] - dil[0] * (k[0] - 1) - 1) // stride[0] + 1
    w_out = (x4.shape[-1] + 2 * pad[1] - dil[1] * (k[1] - 1) - 1) // stride[1] + 1
    y = y.reshape(n, h_out, w_out, -1).permute(0, 3, 1, 2)
    return y if two_d else y.squeeze(-2)


class _AnalogConv(AnalogLayer):
    if TYPE_CHECKING:             # from the nn.Conv1d / nn.Conv2d mixed in
        out_channels: int
        bias: torch.Tensor | None

        def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None) -> torch.Tensor: ...

    def __init__(self, *args, cfg: ChipConfig, nonidealities: Nonidealities = Nonidealities(),
                 enabled: bool = True, **kw):
        super().__init__(*args, **kw)                     # nn.Conv1d / nn.Conv2d
        self._setup_analog(cfg, nonidealities, enabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self._conv_forward(x, self.weight, self.bias)
        y = conv_as_matmul(self, x, lambda p: self._analog(p, self.weight.reshape(self.out_channels, -1).t()))
        return y if self.bias is None else y + self.bias.reshape((1, -1) + (1,) * (y.ndim - 2))


class AnalogConv1d(_AnalogConv, nn.Conv1d):
    """``nn.Conv1d`` (groups=1, zero padding) computed through :func:`analog_matmul` while enabled."""


class AnalogConv2d(_AnalogConv, nn.Conv2d):
    """``nn.Conv2d`` (groups=1, zero padding) computed through :func:`analog_matmul` while enabled."""


def _analog_twin(mod: nn.Module, cfg: ChipConfig, ni: Nonidealities, enabled: bool) -> nn.Module | None:
    common: dict[str, Any] = dict(cfg=cfg, nonidealities=ni, enabled=enabled)
    if type(mod) is nn.Linear:
        new = AnalogLinear(mod.in_features, mod.out_features, mod.bias is not None, **common)
    elif type(mod) in (nn.Conv1d, nn.Conv2d):
        if mod.groups != 1 or mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise ConfigError(f"{type(mod).__name__} with groups={mod.groups}, padding={mod.padding!r}, "
                              f"padding_mode={mod.padding_mode!r} does not map onto one crossbar matrix")
        cls = AnalogConv2d if type(mod) is nn.Conv2d else AnalogConv1d
        new = cls(mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride, padding=mod.padding,
                  dilation=mod.dilation, bias=mod.bias is not None, **common)
    else:
        return None
    new.load_state_dict(mod.state_dict(), strict=False)
    weight = cast(torch.Tensor, mod.weight)               # mod is an nn.Linear / nn.Conv1d / nn.Conv2d
    return new.to(weight.device, weight.dtype)


def convert(model: nn.Module, cfg: ChipConfig, nonidealities: Nonidealities = Nonidealities(),
            enabled: bool = True) -> nn.Module:
    """Replace every ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` of ``model`` in place by its
    analog twin (same parameters) and return ``model``. Layers already analog get the new
    config and non-idealities. Recurrent layers stay digital floats (not trained with noise)."""
    for name, child in list(model.named_children()):
        if isinstance(child, AnalogLayer):
            child.chip, child.nonidealities, child.enabled = cfg, nonidealities, enabled
            child.devices = device_model(cfg)
            continue
        twin = _analog_twin(child, cfg, nonidealities, enabled)
        if twin is not None:
            setattr(model, name, twin)
        else:
            convert(child, cfg, nonidealities, enabled)
    if not analog_layers(model) and isinstance(model, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        raise ConfigError("convert() replaces the layers inside a model; wrap a bare layer in nn.Sequential")
    return model


def analog_layers(model: nn.Module) -> list[tuple[str, AnalogLayer]]:
    """The analog layers of ``model`` with their qualified names, in definition order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AnalogLayer)]


def set_nonidealities(model: nn.Module, ni: Nonidealities | None = None, *, enabled: bool | None = None,
                      **changes) -> None:
    """Set (or change fields of) every analog layer's non-idealities, and/or switch them on or off."""
    for _, layer in analog_layers(model):
        if ni is not None:
            layer.nonidealities = ni
        if changes:
            layer.nonidealities = replace(layer.nonidealities, **changes)
        if enabled is not None:
            layer.enabled = enabled


@torch.no_grad()
def clip_weights(model: nn.Module, sigmas: float = 3.0) -> None:
    """Clip every analog layer's weights to ``sigmas`` standard deviations of its output
    column (Rasch et al., Nat. Commun. 2023): outliers would otherwise set the per-column
    weight scale and coarsen every other weight's step."""
    for _, layer in analog_layers(model):
        w = layer.weight.reshape(layer.weight.shape[0], -1)
        bound = sigmas * w.std(dim=1, keepdim=True).clamp(min=1e-12)
        w.copy_(torch.maximum(torch.minimum(w, bound), -bound))
