"""The ``generic`` device model: constant relative sigmas from the config.

Programming noise ``prog_noise_sigma * g_max``, read noise ``read_noise_sigma * |g_t|``, drift
exponent ``drift_nu`` ± ``drift_nu_std``, the same at every conductance.
"""
from __future__ import annotations

import torch

from cimstack.physics.devices.base import DeviceModel
from cimstack.physics.devices.registry import register_device_model

__all__ = ["GenericDeviceModel"]


@register_device_model("generic")
class GenericDeviceModel(DeviceModel):
    """Constant sigmas: ``prog_noise_sigma`` of g_max, ``read_noise_sigma`` of g, ``drift_nu``."""

    def programming_sigma(self, g_target: torch.Tensor) -> torch.Tensor:
        """``prog_noise_sigma * g_max`` at every target."""
        d = self.dev
        return torch.full_like(g_target, d.prog_noise_sigma * d.g_max_us)

    def drift_nu_stats(self, g_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``drift_nu`` and ``drift_nu_std`` at every target."""
        return (torch.full_like(g_target, self.dev.drift_nu), torch.full_like(g_target, self.dev.drift_nu_std))

    def read_sigma(self, g_prog: torch.Tensor, g_t: torch.Tensor, t: float) -> torch.Tensor:
        """``read_noise_sigma * |g_t|``, at any time."""
        return torch.abs(g_t) * self.dev.read_noise_sigma
