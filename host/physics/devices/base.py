"""The base class of every device model: the behaviour all models share, and the hooks.

A model is a subclass of :class:`DeviceModel` registered under its ``device.model`` name (see
:mod:`.registry`). It implements three hooks, the statistics that differ between devices:

* :meth:`DeviceModel.programming_sigma` — σ of open-loop programming at each target;
* :meth:`DeviceModel.drift_nu_stats` — mean and spread of the drift exponent ν;
* :meth:`DeviceModel.read_sigma` — σ of one read at time ``t`` (``t`` already checked).

One more hook has a default, for devices whose conductance moves after programming:

* :meth:`DeviceModel.relaxation_sigma` — σ of the random change after a cell's last
  programming pulse (zero: no relaxation). :meth:`DeviceModel.relax` applies it after
  write-verify, and :meth:`DeviceModel.post_verify` draws what write-verify and the relaxation
  leave, without running the loop (for hardware-aware training).

Everything else is shared and may be overridden where a device differs: stuck-at faults
(applied independently to every physical cell, as in CoMN, Han et al., Sci. China Inf. Sci.
2025), device-to-device variation, the drift law, the soft-bounds pulse response (the float
twin of :meth:`cimstack.golden.GoldenTile.pulse`) and the I-V nonlinearity
``x -> a1 + a2 x + a3 sign(x) x^2`` (Han et al. 2025).

Time ``t`` is seconds since programming. Drift starts at ``t0 = device.drift_t0_s``:
``g(t) = g_prog (max(t, t0) / t0)^-nu``. aihwkit's ``t_inference`` is ``t - t0``.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Self, cast

import numpy as np
import torch

from cimstack.chip.config import ChipConfig
from cimstack.chip.enums import Polarity, Stuck
from cimstack.errors import InputRangeError
from cimstack.physics.devices.registry import model_class

__all__ = ["DeviceModel", "device_model", "seed_for"]


def normal(shape, gen: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal draws of ``shape`` with the dtype and device of ``like``."""
    return torch.randn(shape, generator=gen, dtype=like.dtype, device=like.device)


class DeviceModel(ABC):
    """Statistics of the devices of one chip config.

    ``DeviceModel(cfg)`` returns an instance of the subclass registered as
    ``cfg.device.model`` (as :func:`~cimstack.physics.devices.device_model` does); a subclass
    called by its own name is that subclass.

    Every sampling method takes a seeded :class:`torch.Generator`, so results are
    reproducible; the deterministic parts (sigmas, drift-exponent mean and spread) are
    separate methods so tests and training can use them without sampling.
    """

    #: The ``device.model`` name; set by :func:`~.registry.register_device_model`.
    name: str = ""

    def __new__(cls, cfg: ChipConfig | None = None, *args, **kwargs):
        if cls is DeviceModel:
            if cfg is None:
                raise TypeError("DeviceModel(cfg) needs a chip config to pick the device model")
            cls = cast("type[Self]", model_class(cfg.device.model))   # a registered DeviceModel subclass
        return super().__new__(cls)          # a copy or an unpickled subclass comes in here without cfg

    def __init__(self, cfg: ChipConfig):
        self.cfg = cfg
        self.dev = cfg.device

    # -- hooks: the statistics a model defines ---------------------------------------------
    @abstractmethod
    def programming_sigma(self, g_target: torch.Tensor) -> torch.Tensor:
        """Programming-noise sigma (µS) at each target conductance (differentiable)."""

    @abstractmethod
    def drift_nu_stats(self, g_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and spread of the drift exponent before folding, at each target."""

    @abstractmethod
    def read_sigma(self, g_prog: torch.Tensor, g_t: torch.Tensor, t: float) -> torch.Tensor:
        """Read-noise sigma (µS) of a read at time ``t`` of a cell programmed to ``g_prog``
        and now at ``g_t``. Called by :meth:`read_noise_sigma`, which has checked ``t``."""

    # -- programming -----------------------------------------------------------------------
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
            g = g + self.programming_sigma(g_target) * normal(g_target.shape, gen, g_target)
        return torch.clamp(g, min=0.0)

    def d2d_factors(self, shape, gen: torch.Generator, kind: str = "lognormal",
                    like: torch.Tensor | None = None) -> torch.Tensor:
        """Device-to-device multiplicative factors of mean 1 and relative spread ``d2d_sigma``.

        ``lognormal``: ``exp(s N - s^2 / 2)`` (always positive, mean 1, median exp(-s^2/2));
        ``gaussian``: ``1 + s N`` clamped at 0.
        """
        like = like if like is not None else torch.zeros((), dtype=torch.float64)
        s = self.dev.d2d_sigma
        n = normal(shape, gen, like)
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
        flags = torch.full(shape, Stuck.NONE, dtype=torch.int64, device=device)
        flags = torch.where(u < r0, torch.full_like(flags, Stuck.AT_0), flags)
        return torch.where((u >= r0) & (u < r0 + r1), torch.full_like(flags, Stuck.AT_MAX), flags)

    # -- after programming: relaxation and the write-verify outcome -------------------------
    def relaxation_sigma(self, g_target: torch.Tensor) -> torch.Tensor:
        """σ (µS) of the random conductance change that follows a cell's last programming
        pulse (structural relaxation), at each target conductance: what a verify read right
        after the pulse cannot see. Zero here (no relaxation); a model with relaxation
        overrides it (the ``pcm`` model: see :meth:`PcmDeviceModel.relaxation_sigma`).
        Differentiable, no random numbers, dtype and device of ``g_target``."""
        return torch.zeros_like(g_target)

    def relax(self, g: torch.Tensor, gen: torch.Generator | None,
              g_target: torch.Tensor | None = None) -> torch.Tensor:
        """Conductances (µS) after the relaxation that follows the last programming pulse.

        ``g * exp(s N(0, 1) - s^2 / 2)`` with ``s^2 = ln(1 + (sigma / g)^2)`` and ``sigma =
        relaxation_sigma(g_target)`` (``g_target`` defaults to ``g``): a mean-preserving
        lognormal change whose standard deviation is exactly ``sigma``. Where ``sigma << g`` it
        is the Gaussian ``g + sigma N(0, 1)``; near 0 µS it stays positive (conductance is never
        negative) without the clamp that would cut the spread, and a cell at 0 µS stays there.
        One normal draw per cell, from ``gen`` (None: torch's default generator); none at all,
        and ``g`` returned as is, where the model has no relaxation.
        """
        sig = self.relaxation_sigma(g if g_target is None else g_target)
        if not bool((sig > 0).any()):
            return g
        pos = g > 0
        s2 = torch.log1p((sig / torch.where(pos, g, torch.ones_like(g))) ** 2)
        moved = g * torch.exp(torch.sqrt(s2) * normal(g.shape, gen, g) - 0.5 * s2)
        return torch.where(pos & (sig > 0), moved, g)

    def post_verify(self, g_target: torch.Tensor, tol_us: float | torch.Tensor,
                    gen: torch.Generator | None = None) -> torch.Tensor:
        """Conductances (µS) that write-verify to ``g_target`` (µS) within ``±tol_us`` (µS)
        leaves, relaxation included, drawn without running the loop: for hardware-aware
        training, in place of the emulator's ISPP loop (:meth:`EmulatorBackend.write_verify`).

        Here ``relax(clamp(g_target + e, min=0), g_target)`` with ``e ~ U(-tol_us, tol_us)``:
        the loop stops anywhere inside its verify window, then the cell relaxes (not at all
        for a model without relaxation, such as ``generic``). A model whose relaxation is
        calibrated against a published post-programming spread overrides this (``pcm``).

        Contract: ``g_target`` a floating-point tensor of any shape (targets in µS, the
        conductances of the cells' write-verify target states); ``tol_us`` the verify
        tolerance in µS (a number or a tensor broadcasting to ``g_target``; ``tol`` state
        LSBs are ``tol * level_step_us(cfg) / 2**frac_bits`` µS); ``gen`` a
        :class:`torch.Generator` or None (torch's default). Returns a tensor of the shape,
        dtype and device of ``g_target``, never negative, with no gradient (add
        ``(post_verify(g) - g).detach()`` to a differentiable ``g`` for a straight-through
        noise). Stuck cells are not modelled (:meth:`sample_stuck` draws them).
        """
        with torch.no_grad():
            g0 = g_target.detach()
            tol = torch.as_tensor(tol_us, dtype=g0.dtype, device=g0.device)
            u = torch.rand(g0.shape, generator=gen, dtype=g0.dtype, device=g0.device)
            g = torch.clamp(g0 + tol * (2 * u - 1), min=0.0)
            return self.relax(g, gen, g0)

    # -- drift -----------------------------------------------------------------------------
    def sample_nu(self, g_target: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Per-device drift exponents ``nu = |N(mu, sigma)|`` (a folded normal)."""
        mu, sig = self.drift_nu_stats(g_target)
        return torch.abs(mu + sig * normal(g_target.shape, gen, g_target))

    def drift_factor(self, nu: torch.Tensor, t: float) -> torch.Tensor:
        """``(max(t, t0) / t0)^-nu``: no drift before the first read at ``t0``."""
        check_time(t)
        ratio = max(t, self.dev.drift_t0_s) / self.dev.drift_t0_s
        return torch.exp(-nu * math.log(ratio))

    def drift(self, g_prog: torch.Tensor, nu: torch.Tensor, t: float) -> torch.Tensor:
        """Drifted conductance ``g(t) = g_prog (t / t0)^-nu`` (Joshi et al. 2020)."""
        return g_prog * self.drift_factor(nu, t)

    # -- read noise ------------------------------------------------------------------------
    def read_noise_sigma(self, g_prog: torch.Tensor, g_t: torch.Tensor, t: float) -> torch.Tensor:
        """Read-noise sigma (µS) of a read at time ``t`` of a cell at ``g_t``: the model's
        :meth:`read_sigma`, after checking that ``t`` is a positive number of seconds."""
        check_time(t)
        return self.read_sigma(g_prog, g_t, t)

    def read(self, g_prog: torch.Tensor, g_t: torch.Tensor, t: float, gen: torch.Generator) -> torch.Tensor:
        """One noisy read of every cell, clamped at 0 µS."""
        sig = self.read_noise_sigma(g_prog, g_t, t)
        return torch.clamp(g_t + sig * normal(g_t.shape, gen, g_t), min=0.0)

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
        dist = torch.where(pol == Polarity.SET, gs1 - state, state + 1.0)
        return dist * (amp * (self.dev.pulse_step_lsb / gs1))

    def pulse(self, state: torch.Tensor, polarity, amplitude, gen: torch.Generator,
              stuck: torch.Tensor | None = None, noise: bool = True, *, check: bool = True) -> torch.Tensor:
        """State after one pulse on every cell of ``state`` (real-valued, in state LSBs).

        The float twin of :meth:`cimstack.golden.GoldenTile.pulse`: the mean step of
        :meth:`pulse_step_mean`, times ``1 + pulse_c2c_sigma * N(0, 1)`` (cycle-to-cycle
        noise), added for SET or subtracted for RESET, clamped to ``[0, Gs]``; stuck cells do
        not change. The golden model rounds the step and the noise to integers; this twin
        does not, so their means agree to within the golden rounding of the step.

        ``check=False`` skips the checks of polarity and amplitude, for a caller that has
        checked them once for many pulses (write-verify's amplitude schedule).
        """
        pol = torch.as_tensor(polarity, device=state.device)
        amp = torch.as_tensor(amplitude, device=state.device)
        if check:
            self._check_pulse(pol, amp)
        d = self.pulse_step_mean(state, pol, amp)
        if noise and self.dev.pulse_c2c_sigma > 0:
            d = torch.addcmul(d, d, normal(d.shape, gen, d), value=self.dev.pulse_c2c_sigma)   # d (1 + c2c N)
        gs = float((1 << self.cfg.datapath.state_bits) - 1)
        new = torch.clamp(state + torch.where(pol == Polarity.SET, d, -d), 0.0, gs)
        if stuck is not None:
            new = torch.where(stuck != Stuck.NONE, state, new)
        return new

    def _check_pulse(self, pol: torch.Tensor, amp: torch.Tensor) -> None:
        if not bool(((pol == Polarity.SET) | (pol == Polarity.RESET)).all()):
            raise InputRangeError(f"pulse polarity must be {Polarity.SET} (SET) or {Polarity.RESET} (RESET)")
        amax = self.dev.pulse_max_amplitude
        if amp.is_floating_point() and bool((amp != torch.floor(amp)).any()):
            raise InputRangeError("pulse amplitudes must be integers")
        if bool(((amp < 1) | (amp > amax)).any()):
            raise InputRangeError(f"pulse amplitude must lie in 1..{amax}")


def check_time(t: float) -> None:
    """Refuse a read or drift time that is not a positive, finite number of seconds."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise InputRangeError(f"time t must be a positive number of seconds, got {t!r}")


def device_model(cfg: ChipConfig, model: str | None = None) -> DeviceModel:
    """The device model of ``cfg``: an instance of the class registered as ``cfg.device.model``
    (or as ``model``, where given). ``DeviceModel(cfg)`` does the same."""
    return cast(DeviceModel, model_class(cfg.device.model if model is None else model)(cfg))


def seed_for(seed: int, *keys: int) -> int:
    """A 63-bit torch seed derived from a chip seed and stream keys (independent streams)."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1, dtype=np.uint64)[0] >> 1)
