"""Device physics of one memristor cell, in torch: conductance levels and non-idealities.

Conductances are in µS, voltages in V, currents in µA. Codes ``0..datapath.code_max`` map
linearly onto ``[device.g_min_us, device.g_max_us]``; the integer weight-to-code mapping is
:func:`cimstack.chip.datapath.weights_to_codes` (differential pairs or offset reference column, bit
slicing), reused here, never duplicated.

Two statistical models, chosen by ``device.model``:

* ``"pcm"``: the phase-change-memory model of Joshi et al., "Accurate deep neural network
  inference using computational phase-change memory", Nat. Commun. 11, 2473 (2020), as
  parametrised in aihwkit's ``PCMLikeNoiseModel`` (programming-noise polynomial fitted at
  g_max = 25 µS and rescaled to ``g_max_us``, state-dependent drift exponent, accumulated
  1/f read noise).
* ``"generic"``: constant relative sigmas from the config (``prog_noise_sigma`` of g_max,
  ``read_noise_sigma`` of g, ``drift_nu`` ± ``drift_nu_std``).

Both share stuck-at faults (applied independently to every physical cell, as in CoMN,
Han et al., Sci. China Inf. Sci. 2025), device-to-device variation, the soft-bounds pulse
response (the float twin of :meth:`cimstack.golden.GoldenTile.pulse`) and the I-V
nonlinearity ``x -> a1 + a2 x + a3 sign(x) x^2`` (Han et al. 2025).

Time ``t`` is seconds since programming. Drift starts at ``t0 = device.drift_t0_s``:
``g(t) = g_prog (max(t, t0) / t0)^-nu``. aihwkit's ``t_inference`` is ``t - t0``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from cimstack.chip.config import ChipConfig
from cimstack.errors import InputRangeError
from cimstack.chip.enums import RESET, SET, STUCK_AT_0, STUCK_AT_MAX, STUCK_NONE
from cimstack.chip.datapath import weights_to_codes

__all__ = ["PCM_PROG_COEFF", "PCM_G_MAX_REF_US", "PCM_T_READ_S", "level_step_us",
           "codes_to_conductance", "conductance_to_codes", "weights_to_conductances",
           "float_weights_to_conductances", "DeviceModel", "seed_for"]

#: Joshi et al. 2020 programming-noise polynomial sigma[µS] = c0 + c1 gT + c2 gT^2 (aihwkit).
PCM_PROG_COEFF = (0.2635, 1.9650, -1.1731)
#: g_max at which the polynomial was fitted; sigma scales with g_max / 25 µS.
PCM_G_MAX_REF_US = 25.0
#: t_r of the accumulated 1/f read noise (Joshi et al. 2020).
PCM_T_READ_S = 250e-9

_GT_FLOOR = 1e-7     # keeps ln(gT) and gT**-0.65 finite at g = 0 (aihwkit's _ZERO_CLIP)


def level_step_us(cfg: ChipConfig) -> float:
    """Conductance between adjacent codes: ``(g_max - g_min) / code_max``."""
    d = cfg.device
    return (d.g_max_us - d.g_min_us) / cfg.datapath.code_max


def codes_to_conductance(codes, cfg: ChipConfig, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Conductance (µS) of integer or fractional codes: ``g_min + code * g_step``."""
    c = torch.as_tensor(codes, dtype=dtype)
    return cfg.device.g_min_us + c * level_step_us(cfg)


def conductance_to_codes(g: torch.Tensor, cfg: ChipConfig) -> torch.Tensor:
    """Inverse of :func:`codes_to_conductance`, unrounded (for analysis and training)."""
    return (g - cfg.device.g_min_us) / level_step_us(cfg)


def weights_to_conductances(w, cfg: ChipConfig, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Target conductances (G+, G-) in µS, shape ``(rows, units)``, of integer weights.

    A thin wrapper over :func:`cimstack.chip.datapath.weights_to_codes` (so differential pairs,
    the offset reference column and bit slicing are defined in one place); for the offset
    scheme G- is the reference column's target.
    """
    pos, neg = weights_to_codes(w, cfg)
    return codes_to_conductance(pos, cfg, dtype), codes_to_conductance(neg, cfg, dtype)


def float_weights_to_conductances(w: torch.Tensor, w_scale: float | torch.Tensor,
                                  cfg: ChipConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable map of real weights onto one slice's (G+, G-), for training.

    ``|w| = w_scale`` reaches the largest code difference the scheme can hold: ``code_max``
    for a differential pair (the sign picks G+ or G-, the other cell sits at g_min), and
    ``ref_code - 1`` either side of the reference for the offset scheme (G- is then the
    reference column's conductance, shape ``(rows, 1)``). Weights beyond ``w_scale`` are
    clipped, with zero gradient there (weight clipping as in Rasch et al., Nat. Commun. 2023).
    """
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise InputRangeError("float weights must be a floating-point torch tensor")
    ws = torch.as_tensor(w_scale, dtype=w.dtype, device=w.device)
    if not torch.isfinite(ws).all() or (ws <= 0).any():
        raise InputRangeError(f"weight scale must be positive and finite, got {w_scale!r}")
    dp, d = cfg.datapath, cfg.device
    step = level_step_us(cfg)
    wn = torch.clamp(w / ws, -1.0, 1.0)
    if cfg.mapping.scheme == "differential":
        span = dp.code_max * step
        mag = torch.abs(wn)        # (|w| +/- w) / 2 rather than relu: no dead gradient at w = 0
        return d.g_min_us + 0.5 * (mag + wn) * span, d.g_min_us + 0.5 * (mag - wn) * span
    g_ref = d.g_min_us + dp.ref_code * step
    gp = g_ref + wn * (dp.ref_code - 1) * step
    return gp, torch.full((*gp.shape[:-1], 1), g_ref, dtype=gp.dtype, device=gp.device)


def _normal(shape, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=like.dtype, device=like.device)


class DeviceModel:
    """Statistics of the devices of one chip config.

    Every sampling method takes a seeded :class:`torch.Generator`, so results are
    reproducible; the deterministic parts (sigmas, drift-exponent mean and spread) are
    separate methods so tests and training can use them without sampling.
    """

    def __init__(self, cfg: ChipConfig):
        self.cfg = cfg
        self.dev = cfg.device
        self.is_pcm = cfg.device.model == "pcm"

    # -- programming -----------------------------------------------------------------------
    def programming_sigma(self, g_target: torch.Tensor) -> torch.Tensor:
        """Programming-noise sigma (µS) at each target conductance.

        PCM (Joshi et al. 2020): ``max(-1.1731 gT^2 + 1.9650 gT + 0.2635, 0) * g_max / 25``
        with ``gT = g_target / g_max``. Generic: ``prog_noise_sigma * g_max``.
        """
        d = self.dev
        if self.is_pcm:
            gt = g_target / d.g_max_us
            c0, c1, c2 = PCM_PROG_COEFF
            sig = torch.clamp(c0 + c1 * gt + c2 * gt * gt, min=0.0)
            return sig * (d.g_max_us / PCM_G_MAX_REF_US)
        return torch.full_like(g_target, d.prog_noise_sigma * d.g_max_us)

    def program(self, g_target: torch.Tensor, gen: torch.Generator, *, noise: bool = True,
                d2d: bool = True, d2d_kind: str = "lognormal") -> torch.Tensor:
        """Conductances reached by open-loop programming of ``g_target``.

        ``g = g_target * f_d2d + sigma_prog(g_target) * N(0, 1)``, clamped at 0 (conductance
        is never negative; aihwkit clamps the same way). ``f_d2d`` is the device's fixed
        multiplicative variation (see :meth:`d2d_factors`).
        """
        g = g_target
        if d2d and self.dev.d2d_sigma > 0:
            g = g * self.d2d_factors(g_target.shape, gen, kind=d2d_kind, like=g_target)
        if noise:
            g = g + self.programming_sigma(g_target) * _normal(g_target.shape, gen, g_target)
        return torch.clamp(g, min=0.0)

    def d2d_factors(self, shape, gen: torch.Generator, kind: str = "lognormal",
                    like: torch.Tensor | None = None) -> torch.Tensor:
        """Device-to-device multiplicative factors of mean 1 and relative spread ``d2d_sigma``.

        ``lognormal``: ``exp(s N - s^2 / 2)`` (always positive, mean 1, median exp(-s^2/2));
        ``gaussian``: ``1 + s N`` clamped at 0.
        """
        like = like if like is not None else torch.zeros((), dtype=torch.float64)
        s = self.dev.d2d_sigma
        n = _normal(shape, gen, like)
        if kind == "lognormal":
            return torch.exp(s * n - 0.5 * s * s)
        if kind == "gaussian":
            return torch.clamp(1.0 + s * n, min=0.0)
        raise InputRangeError(f"d2d kind {kind!r} is not one of lognormal, gaussian")

    def sample_stuck(self, shape, gen: torch.Generator, device: torch.device | str | None = None) -> torch.Tensor:
        """Stuck flags per cell (golden encoding: 0 none, 1 stuck at code 0, 2 at code_max).

        Each cell fails independently: at code 0 with ``stuck_at_0_rate``, else at the top
        code with ``stuck_at_gmax_rate`` (CoMN applies them independently to G+ and G-).
        """
        u = torch.rand(shape, generator=gen, dtype=torch.float64, device=device)
        r0, r1 = self.dev.stuck_at_0_rate, self.dev.stuck_at_gmax_rate
        flags = torch.full(shape, STUCK_NONE, dtype=torch.int64, device=device)
        flags = torch.where(u < r0, torch.full_like(flags, STUCK_AT_0), flags)
        return torch.where((u >= r0) & (u < r0 + r1), torch.full_like(flags, STUCK_AT_MAX), flags)

    # -- drift -----------------------------------------------------------------------------
    def drift_nu_stats(self, g_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and spread of the drift exponent before folding.

        PCM (Joshi et al. 2020): ``mu = clip(-0.0155 ln gT + 0.0244, 0.049, 0.1)``,
        ``sigma = clip(-0.0125 ln gT - 0.0059, 0.008, 0.045)``; generic: ``drift_nu``,
        ``drift_nu_std``.
        """
        if self.is_pcm:
            lg = torch.log(torch.clamp(torch.abs(g_target) / self.dev.g_max_us, min=_GT_FLOOR))
            mu = torch.clamp(-0.0155 * lg + 0.0244, 0.049, 0.1)
            sig = torch.clamp(-0.0125 * lg - 0.0059, 0.008, 0.045)
            return mu, sig
        return (torch.full_like(g_target, self.dev.drift_nu), torch.full_like(g_target, self.dev.drift_nu_std))

    def sample_nu(self, g_target: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Per-device drift exponents ``nu = |N(mu, sigma)|`` (a folded normal)."""
        mu, sig = self.drift_nu_stats(g_target)
        return torch.abs(mu + sig * _normal(g_target.shape, gen, g_target))

    def drift_factor(self, nu: torch.Tensor, t: float) -> torch.Tensor:
        """``(max(t, t0) / t0)^-nu``: no drift before the first read at ``t0``."""
        _check_time(t)
        ratio = max(t, self.dev.drift_t0_s) / self.dev.drift_t0_s
        return torch.exp(-nu * math.log(ratio))

    def drift(self, g_prog: torch.Tensor, nu: torch.Tensor, t: float) -> torch.Tensor:
        """Drifted conductance ``g(t) = g_prog (t / t0)^-nu`` (Joshi et al. 2020)."""
        return g_prog * self.drift_factor(nu, t)

    # -- read noise ------------------------------------------------------------------------
    def read_noise_sigma(self, g_prog: torch.Tensor, g_t: torch.Tensor, t: float) -> torch.Tensor:
        """Read-noise sigma (µS) of a read at time ``t`` of a cell at ``g_t``.

        PCM (Joshi et al. 2020): ``|g_t| Q_s sqrt(ln((t + t_r) / (2 t_r)))`` with
        ``Q_s = min(0.0088 / gT^0.65, 0.2)``, ``gT = g_prog / g_max`` and ``t_r = 250 ns``
        (zero for ``t <= t_r``). Generic: ``read_noise_sigma * |g_t|``.
        """
        _check_time(t)
        if self.is_pcm:
            gt = torch.clamp(torch.abs(g_prog) / self.dev.g_max_us, min=_GT_FLOOR)
            q_s = torch.clamp(0.0088 / gt ** 0.65, max=0.2)
            tf = math.sqrt(max(math.log((t + PCM_T_READ_S) / (2 * PCM_T_READ_S)), 0.0))
            return torch.abs(g_t) * q_s * tf
        return torch.abs(g_t) * self.dev.read_noise_sigma

    def read(self, g_prog: torch.Tensor, g_t: torch.Tensor, t: float, gen: torch.Generator) -> torch.Tensor:
        """One noisy read of every cell, clamped at 0 µS."""
        sig = self.read_noise_sigma(g_prog, g_t, t)
        return torch.clamp(g_t + sig * _normal(g_t.shape, gen, g_t), min=0.0)

    # -- I-V nonlinearity ------------------------------------------------------------------
    def iv(self, x: torch.Tensor) -> torch.Tensor:
        """Effective drive of a word line at ``x`` input units (x = V / v_read).

        ``a1 + a2 x + a3 sign(x) x^2`` (Han et al., Sci. China Inf. Sci. 2025, CoMN). The
        polynomial acts on the voltage in units of the DAC's unit ``v_read``, so its
        coefficients are dimensionless; ``a1`` is an offset every row carries, active or not.
        """
        d = self.dev
        if d.iv_a1 == 0.0 and d.iv_a2 == 1.0 and d.iv_a3 == 0.0:
            return x
        return d.iv_a1 + d.iv_a2 * x + d.iv_a3 * torch.sign(x) * x * x

    # -- pulse response --------------------------------------------------------------------
    def pulse_step_mean(self, state: torch.Tensor, polarity, amplitude) -> torch.Tensor:
        """Expected state change (state LSBs, positive) of one pulse: the soft-bounds law.

        ``amplitude * pulse_step_lsb * (Gs + 1 - g) / (Gs + 1)`` for SET and
        ``amplitude * pulse_step_lsb * (g + 1) / (Gs + 1)`` for RESET, ``Gs = 2**state_bits - 1``
        (Nandakumar et al., Front. Neurosci. 2020: the step shrinks towards the bound).
        """
        gs1 = float(1 << self.cfg.datapath.state_bits)
        pol = torch.as_tensor(polarity, device=state.device)
        amp = torch.as_tensor(amplitude, dtype=state.dtype, device=state.device)
        dist = torch.where(pol == SET, gs1 - state, state + 1.0)
        return amp * self.dev.pulse_step_lsb * dist / gs1

    def pulse(self, state: torch.Tensor, polarity, amplitude, gen: torch.Generator,
              stuck: torch.Tensor | None = None, noise: bool = True) -> torch.Tensor:
        """State after one pulse on every cell of ``state`` (real-valued, in state LSBs).

        The float twin of :meth:`cimstack.golden.GoldenTile.pulse`: the mean step of
        :meth:`pulse_step_mean`, times ``1 + pulse_c2c_sigma * N(0, 1)`` (cycle-to-cycle
        noise), added for SET or subtracted for RESET, clamped to ``[0, Gs]``; stuck cells do
        not change. The golden model rounds the step and the noise to integers; this twin
        does not, so their means agree to within the golden rounding of the step.
        """
        pol = torch.as_tensor(polarity, device=state.device)
        amp = torch.as_tensor(amplitude, device=state.device)
        if not bool(((pol == SET) | (pol == RESET)).all()):
            raise InputRangeError(f"pulse polarity must be {SET} (SET) or {RESET} (RESET)")
        amax = self.dev.pulse_max_amplitude
        if amp.is_floating_point() and bool((amp != torch.floor(amp)).any()):
            raise InputRangeError("pulse amplitudes must be integers")
        if bool(((amp < 1) | (amp > amax)).any()):
            raise InputRangeError(f"pulse amplitude must lie in 1..{amax}")
        d = self.pulse_step_mean(state, pol, amp)
        if noise and self.dev.pulse_c2c_sigma > 0:
            d = d * (1.0 + self.dev.pulse_c2c_sigma * _normal(d.shape, gen, d))
        gs = float((1 << self.cfg.datapath.state_bits) - 1)
        new = torch.clamp(torch.where(pol == SET, state + d, state - d), 0.0, gs)
        if stuck is not None:
            new = torch.where(stuck != STUCK_NONE, state, new)
        return new


def _check_time(t: float) -> None:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise InputRangeError(f"time t must be a positive number of seconds, got {t!r}")


def seed_for(seed: int, *keys: int) -> int:
    """A 63-bit torch seed derived from a chip seed and stream keys (independent streams)."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1, dtype=np.uint64)[0] >> 1)
