"""The physics emulator: a float, differentiable PyTorch model of the chip.

The third of the three models of one chip (see docs/architecture.md): the RTL and the golden model
compute with integer codes; this package computes with conductances (µS), voltages (V) and
currents (µA), with the device statistics of the published models it cites, and with a
``datapath`` mode whose statistics match the golden model's.

* :mod:`.devices` — conductance levels, weight-to-conductance maps and the device models:
  :class:`DeviceModel`, the base class (programming noise, drift, read noise, stuck-at faults,
  device-to-device variation, soft-bounds pulse response, I-V nonlinearity; Joshi et al. 2020,
  Han et al. 2025), one subclass per ``device.model``, registered by name
  (:func:`register_device_model`, :func:`device_model`).
* :mod:`.converters` — DAC, ADC, shift-add and post-processing with straight-through
  gradients.
* :mod:`.tile` — :class:`TileEmulator`, one tile, with the ``column_currents`` IR-drop hook.
"""
from cimstack.physics.converters import (
    Adc,
    Dac,
    as_input_tensor,
    floor_ste,
    input_range,
    post_process,
    round_half_up,
    shift_add,
)
from cimstack.physics.devices import (
    PCM_G_MAX_REF_US,
    PCM_PROG_COEFF,
    PCM_T_READ_S,
    DeviceModel,
    codes_to_conductance,
    conductance_to_codes,
    device_model,
    float_weights_to_conductances,
    level_step_us,
    register_device_model,
    registered_models,
    seed_for,
    weights_to_conductances,
)
from cimstack.physics.tile import ColumnCurrents, TileEmulator, ideal_column_currents

__all__ = [
    "TileEmulator", "ColumnCurrents", "ideal_column_currents",
    "DeviceModel", "device_model", "register_device_model", "registered_models",
    "level_step_us", "codes_to_conductance", "conductance_to_codes",
    "weights_to_conductances", "float_weights_to_conductances", "seed_for",
    "PCM_PROG_COEFF", "PCM_G_MAX_REF_US", "PCM_T_READ_S",
    "Dac", "Adc", "as_input_tensor", "input_range", "round_half_up", "floor_ste", "shift_add",
    "post_process",
]
