"""The ``pcm`` device model: phase-change memory after Joshi et al., "Accurate deep neural
network inference using computational phase-change memory", Nat. Commun. 11, 2473 (2020), as
parametrised in aihwkit's ``PCMLikeNoiseModel``.

* programming noise: a polynomial in ``gT = g_target / g_max``, fitted at g_max = 25 µS and
  rescaled to ``g_max_us``;
* drift: a state-dependent exponent ν (mean and spread linear in ``ln gT``, clipped);
* read noise: accumulated 1/f noise, growing as ``sqrt(ln((t + t_r) / (2 t_r)))``.
"""
from __future__ import annotations

import math

import torch

from cimstack.physics.devices.base import DeviceModel
from cimstack.physics.devices.registry import register_device_model

__all__ = ["PCM_PROG_COEFF", "PCM_G_MAX_REF_US", "PCM_T_READ_S", "PcmDeviceModel"]

#: Joshi et al. 2020 programming-noise polynomial sigma[µS] = c0 + c1 gT + c2 gT^2 (aihwkit).
PCM_PROG_COEFF = (0.2635, 1.9650, -1.1731)
#: g_max at which the polynomial was fitted; sigma scales with g_max / 25 µS.
PCM_G_MAX_REF_US = 25.0
#: t_r of the accumulated 1/f read noise (Joshi et al. 2020).
PCM_T_READ_S = 250e-9

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
