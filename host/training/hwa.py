"""Hardware-aware training: train a network through the chip model so it survives the chip.

:func:`train_hwa` converts a model's Linear/Conv layers to their analog twins
(:mod:`cimstack.training.analog`), whose forward quantises, draws the device non-idealities of
the chip config and runs the ADC, and trains with

* a **staged schedule** (Han et al., Sci. China Inf. Sci. 2025, CoMN): the non-idealities
  are switched on layer by layer, input side first, so each layer adapts to the noise of
  those before it before its own is added; from the middle of training on, all are on;
* **weight clipping** after every step (Rasch et al., Nat. Commun. 2023) so outliers do not
  set the per-column weight scale;
* **learned input ranges** (LSQ step sizes), which :func:`cimstack.compile` then uses.

:func:`noise_finetune` is OpenCIMTC's post-deployment step (Yu et al., Nat. Commun. 2025):
quantised inputs and weights, additive weight noise of 0.06 times each layer's weight range,
a few epochs at a small learning rate.

The trained model stays a ``torch.nn.Module`` that compiles as is.
"""
from __future__ import annotations

import math

from torch import nn

from cimstack.chip.config import ChipConfig
from cimstack.errors import ConfigError
from cimstack.training.analog import Nonidealities, analog_layers, clip_weights, convert, set_nonidealities
from cimstack.zoo.datasets import Split
from cimstack.zoo.models import train

__all__ = ["SCHEDULES", "stage_plan", "train_hwa", "noise_finetune"]

SCHEDULES = ("staged", "all")


def stage_plan(layers: int, epochs: int, schedule: str = "staged") -> list[int]:
    """How many analog layers (input side first) are on in each epoch.

    ``staged``: layer ``i`` joins at epoch ``i * k`` with ``k = max(1, epochs // (2 * layers))``,
    so every layer is on for at least the second half; ``all``: every layer from the start.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule = {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if schedule == "all" or layers == 0:
        return [layers] * epochs
    k = max(1, epochs // (2 * layers))
    return [min(layers, 1 + e // k) for e in range(epochs)]


def train_hwa(model: nn.Module, split: Split, cfg: ChipConfig, *,
              nonidealities: Nonidealities = Nonidealities(), epochs: int = 20, lr: float = 5e-3,
              schedule: str = "staged", clip_sigmas: float | None = 3.0, batch_size: int = 64,
              seed: int = 0, progress: bool = False) -> dict:
    """Hardware-aware training of ``model`` (converted in place) for the chip ``cfg``.

    Usually started from floating-point trained weights (a fine-tune); works from scratch
    too. Returns the trainer's statistics (accuracies measured through the noisy chip model)
    plus the stage plan. Compile the model afterwards with :func:`cimstack.compile`.
    """
    if epochs < 1:
        raise ConfigError(f"epochs = {epochs} must be at least 1")
    if clip_sigmas is not None and not clip_sigmas > 0:
        raise ConfigError(f"clip_sigmas = {clip_sigmas!r} must be positive (or None for no clipping)")
    convert(model, cfg, nonidealities, enabled=False)
    layers = [m for _, m in analog_layers(model)]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Linear or Conv layer to train for the chip")
    plan = stage_plan(len(layers), epochs, schedule)

    def on_epoch(epoch: int) -> None:
        for i, layer in enumerate(layers):
            layer.enabled = i < plan[epoch]

    def after_step() -> None:
        if clip_sigmas is not None:
            clip_weights(model, clip_sigmas)

    if clip_sigmas is not None:
        clip_weights(model, clip_sigmas)
    stats = train(model, split, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress,
                  on_epoch=on_epoch, after_step=after_step)
    for layer in layers:
        layer.enabled = True
    return dict(stats, schedule=schedule, stage_plan=plan, layers=len(layers))


def noise_finetune(model: nn.Module, split: Split, cfg: ChipConfig, *, frac: float = 0.06, epochs: int = 5,
                   lr: float = 1e-3, batch_size: int = 64, seed: int = 0, progress: bool = False) -> dict:
    """OpenCIMTC's noise fine-tuning: quantised inputs and weights plus weight noise of
    ``clamp(N(0,1), ±3) * frac * (max w - min w)`` on every forward (module docstring)."""
    if not 0 < frac < 1:
        raise ConfigError(f"frac = {frac!r} must lie in (0, 1)")
    if not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"lr = {lr!r} must be positive")
    if analog_layers(model):              # after train_hwa: the chip model plus the weight noise
        set_nonidealities(model, weight_noise_range=frac)
    else:
        convert(model, cfg, Nonidealities.opencimtc(frac))
    stats = train(model, split, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress)
    set_nonidealities(model, weight_noise_range=0.0)     # the noise was a training device only
    return dict(stats, frac=frac)
