"""Training networks for the chip: hardware-aware (noise-injection) training, mixed-precision
training with a digital accumulator, and chip-in-the-loop fine-tuning.

* :mod:`.analog`: the chip's analog layer as a differentiable function and the
  ``nn.Linear``/``nn.Conv*d`` twins that use it;
* :mod:`.hwa`: the hardware-aware training loop (staged schedule, weight clipping,
  learned input ranges) and OpenCIMTC's post-deployment noise fine-tuning;
* :mod:`.mixed_precision`: Nandakumar et al. 2020 mixed-precision training on the arrays;
* :mod:`.chip_in_loop`: forward on any backend, backward in software.
"""
from cimstack.training.analog import (
    AnalogConv1d,
    AnalogConv2d,
    AnalogLayer,
    AnalogLinear,
    Nonidealities,
    analog_layers,
    analog_matmul,
    clip_weights,
    convert,
    set_nonidealities,
)
from cimstack.training.chip_in_loop import ChipInTheLoop
from cimstack.training.hwa import noise_finetune, stage_plan, train_hwa
from cimstack.training.mixed_precision import MixedPrecisionMLP, MixedPrecisionStats

__all__ = ["AnalogConv1d", "AnalogConv2d", "AnalogLayer", "AnalogLinear", "Nonidealities", "analog_layers",
           "analog_matmul", "clip_weights", "convert", "set_nonidealities", "ChipInTheLoop", "noise_finetune",
           "stage_plan", "train_hwa", "MixedPrecisionMLP", "MixedPrecisionStats"]
