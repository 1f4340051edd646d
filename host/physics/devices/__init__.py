"""Device physics of one memristor cell, in torch: conductance levels and non-idealities.

Conductances are in µS, voltages in V, currents in µA.

* :mod:`.levels` — conductance levels and weight-to-conductance maps, the same for every device
  (:func:`level_step_us`, :func:`codes_to_conductance`, :func:`weights_to_conductances`, ...).
* :mod:`.base` — :class:`DeviceModel`, the abstract base class: the shared behaviour
  (programming, device-to-device variation, stuck cells, the drift law, reads, the pulse
  response, the I-V nonlinearity) and the hooks a model implements.
* :mod:`.registry` — the models by ``device.model`` name: :func:`register_device_model`,
  :func:`model_class`; :func:`device_model` (in :mod:`.base`) builds the one a config names.
* one module per model: :mod:`.generic` (constant relative sigmas from the config) and
  :mod:`.pcm` (Joshi et al., Nat. Commun. 2020, as parametrised in aihwkit).

``DeviceModel(cfg)`` and ``device_model(cfg)`` both return the model ``cfg.device.model`` names.
"""
from cimstack.physics.devices.base import DeviceModel, device_model, seed_for
from cimstack.physics.devices.generic import GenericDeviceModel
from cimstack.physics.devices.levels import (
    codes_to_conductance,
    conductance_to_codes,
    float_weights_to_conductances,
    level_step_us,
    weights_to_conductances,
)
from cimstack.physics.devices.pcm import PCM_G_MAX_REF_US, PCM_PROG_COEFF, PCM_T_READ_S, PcmDeviceModel
from cimstack.physics.devices.registry import DEVICE_MODELS, model_class, register_device_model, registered_models

__all__ = ["PCM_PROG_COEFF", "PCM_G_MAX_REF_US", "PCM_T_READ_S", "level_step_us",
           "codes_to_conductance", "conductance_to_codes", "weights_to_conductances",
           "float_weights_to_conductances", "DeviceModel", "seed_for",
           "GenericDeviceModel", "PcmDeviceModel",
           "DEVICE_MODELS", "register_device_model", "registered_models", "model_class", "device_model"]
