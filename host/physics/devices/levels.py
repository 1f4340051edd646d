"""Conductance levels and weight-to-conductance maps, the same for every device model.

Codes ``0..datapath.code_max`` map linearly onto ``[device.g_min_us, device.g_max_us]``; the
integer weight-to-code mapping is :func:`cimstack.chip.datapath.weights_to_codes` (differential
pairs or offset reference column, bit slicing), reused here, never duplicated.
"""
from __future__ import annotations

import torch

from cimstack.chip.config import ChipConfig
from cimstack.chip.datapath import weights_to_codes
from cimstack.errors import InputRangeError

__all__ = ["level_step_us", "codes_to_conductance", "conductance_to_codes", "weights_to_conductances",
           "float_weights_to_conductances"]


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
