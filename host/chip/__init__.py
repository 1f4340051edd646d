"""The chip's specification: everything the RTL, the models and the host agree on.

The configuration and its presets (:mod:`.config`), the integer encodings of the datapath
(:mod:`.datapath`), the register map (:mod:`.regmap`), the sequencer's instruction set
(:mod:`.isa`), the link's frame format (:mod:`.protocol`), the noise generators (:mod:`.prng`),
bit fields, the tile mesh (:mod:`.topology`) and the shared enumerations (:mod:`.enums`).
It imports nothing else of cimstack but :mod:`cimstack.errors`.
"""
from cimstack.chip.config import PRESETS, ChipConfig, load, preset

__all__ = ["ChipConfig", "load", "preset", "PRESETS"]
