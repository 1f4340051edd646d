"""The ``pcm`` device model: phase-change memory after Joshi et al., "Accurate deep neural
network inference using computational phase-change memory", Nat. Commun. 11, 2473 (2020), as
parametrised in aihwkit's ``PCMLikeNoiseModel``.

* programming noise: a polynomial in ``gT = g_target / g_max``, fitted at g_max = 25 µS and
  rescaled to ``g_max_us``;
* drift: a state-dependent exponent ν (mean and spread linear in ``ln gT``, clipped);
* read noise: accumulated 1/f noise, growing as ``sqrt(ln((t + t_r) / (2 t_r)))``;
* relaxation after write-verify: the random change after a cell's last pulse that makes
  iteratively programmed devices spread by the programming-noise polynomial (see
  :meth:`PcmDeviceModel.relaxation_sigma`).
"""
from __future__ import annotations

import math

import torch

from cimstack.physics.devices.base import DeviceModel
from cimstack.physics.devices.registry import register_device_model

__all__ = ["PCM_PROG_COEFF", "PCM_G_MAX_REF_US", "PCM_T_READ_S", "PCM_VERIFY_RESIDUAL_SHARE", "PcmDeviceModel"]

#: Joshi et al. 2020 programming-noise polynomial sigma[µS] = c0 + c1 gT + c2 gT^2 (aihwkit).
PCM_PROG_COEFF = (0.2635, 1.9650, -1.1731)
#: g_max at which the polynomial was fitted; sigma scales with g_max / 25 µS.
PCM_G_MAX_REF_US = 25.0
#: t_r of the accumulated 1/f read noise (Joshi et al. 2020).
PCM_T_READ_S = 250e-9

#: Share of the published post-programming variance ``sigma_prog^2`` that the chip's own
#: write-verify residual takes (the loop stops anywhere in its tolerance window): the mean
#: over the 16 levels of ``var(verify error) / sigma_prog^2`` measured on ``pcm-joshi2020``
#: with the default ISPP settings (0.016 at the lowest level and 0.002 at the highest, where
#: the loop lands after a few predictable steps or in fine ones near the bound, up to 0.27
#: mid-range; mean 0.105). The relaxation takes the rest (:meth:`PcmDeviceModel.relaxation_sigma`).
PCM_VERIFY_RESIDUAL_SHARE = 0.1

_GT_FLOOR = 1e-7     # keeps ln(gT) and gT**-0.65 finite at g = 0 (aihwkit's _ZERO_CLIP)


@register_device_model("pcm")
class PcmDeviceModel(DeviceModel):
    """Phase-change memory statistics of Joshi et al. 2020 (aihwkit's ``PCMLikeNoiseModel``)."""

    def programming_sigma(self, g_target: torch.Tensor) -> torch.Tensor:
        """``max(-1.1731 gT^2 + 1.9650 gT + 0.2635, 0) * g_max / 25`` with ``gT = g_target / g_max``."""
        d = self.dev
        gt = g_target / d.g_max_us
        c0, c1, c2 = PCM_PROG_COEFF
        sig = torch.clamp(c0 + c1 * gt + c2 * gt * gt, min=0.0)
        return sig * (d.g_max_us / PCM_G_MAX_REF_US)

    def relaxation_sigma(self, g_target: torch.Tensor) -> torch.Tensor:
        """``sqrt(1 - rho^2) * sigma_prog(g_target)``, ``rho^2 = PCM_VERIFY_RESIDUAL_SHARE = 0.1``.

        Joshi et al. 2020 measured ``sigma_prog`` (:meth:`programming_sigma`) *after*
        iterative program-and-verify: the spread that remains is what a verify read right
        after the pulse cannot see, the conductance relaxation that follows the last pulse.
        After this chip's write-verify a cell carries two independent deviations from its
        target, the loop's residual inside its tolerance window (variance ``v_wv``, set by the
        ISPP settings and the pulse response) and the relaxation (variance ``sigma_r^2``), so
        the spread per level is ``sqrt(v_wv + sigma_r^2)``. Matching the published spread
        asks for ``sigma_r^2 = sigma_prog^2 - v_wv``. ``v_wv / sigma_prog^2`` goes from 0.002
        to 0.27 across the levels of ``pcm-joshi2020`` (default ISPP, tolerance 7 state LSBs),
        a property of the loop rather than of the device; taking its mean ``rho^2`` for every
        level gives a spread of ``sigma_prog * sqrt(1 - rho^2 + v_wv / sigma_prog^2)``, 0.95
        to 1.09 times the polynomial (the emulator measures 0.94 to 1.08, ``tests/physics/
        test_relaxation.py``). A tighter tolerance leaves ``sqrt(1 - rho^2) = 0.95`` of it.
        """
        return self.programming_sigma(g_target) * math.sqrt(1.0 - PCM_VERIFY_RESIDUAL_SHARE)

    def post_verify(self, g_target: torch.Tensor, tol_us: float | torch.Tensor,
                    gen: torch.Generator | None = None) -> torch.Tensor:
        """Conductances after write-verify and relaxation, drawn without the loop (the
        contract of :meth:`DeviceModel.post_verify`): ``relax(clamp(g_target + e, min=0),
        g_target)`` with a Gaussian residual ``e`` of variance
        ``min(rho^2 sigma_prog^2, tol_us^2 / 3)``, so that the spread is the published
        ``sigma_prog`` (the residual share the relaxation leaves out, see
        :meth:`relaxation_sigma`), and never more residual than a window of ``±tol_us``
        holds (a tight tolerance leaves about ``sqrt(1 - rho^2) sigma_prog``, as the
        emulator's write-verify does)."""
        with torch.no_grad():
            g0 = g_target.detach()
            tol = torch.as_tensor(tol_us, dtype=g0.dtype, device=g0.device)
            var_e = torch.minimum(PCM_VERIFY_RESIDUAL_SHARE * self.programming_sigma(g0) ** 2, tol * tol / 3.0)
            g = torch.clamp(g0 + torch.sqrt(var_e) * torch.randn(g0.shape, generator=gen, dtype=g0.dtype,
                                                                  device=g0.device), min=0.0)
            return self.relax(g, gen, g0)

    def drift_nu_stats(self, g_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mu = clip(-0.0155 ln gT + 0.0244, 0.049, 0.1)``,
        ``sigma = clip(-0.0125 ln gT - 0.0059, 0.008, 0.045)``."""
        lg = torch.log(torch.clamp(torch.abs(g_target) / self.dev.g_max_us, min=_GT_FLOOR))
        mu = torch.clamp(-0.0155 * lg + 0.0244, 0.049, 0.1)
        sig = torch.clamp(-0.0125 * lg - 0.0059, 0.008, 0.045)
        return mu, sig

    def read_sigma(self, g_prog: torch.Tensor, g_t: torch.Tensor, t: float) -> torch.Tensor:
        """``|g_t| Q_s sqrt(ln((t + t_r) / (2 t_r)))`` with ``Q_s = min(0.0088 / gT^0.65, 0.2)``,
        ``gT = g_prog / g_max`` and ``t_r = 250 ns`` (zero for ``t <= t_r``)."""
        gt = torch.clamp(torch.abs(g_prog) / self.dev.g_max_us, min=_GT_FLOOR)
        q_s = torch.clamp(0.0088 / gt ** 0.65, max=0.2)
        tf = math.sqrt(max(math.log((t + PCM_T_READ_S) / (2 * PCM_T_READ_S)), 0.0))
        return torch.abs(g_t) * q_s * tf
