"""The golden model: the chip's integer datapath in NumPy, bit for bit what the RTL computes.

It mirrors :mod:`cimstack.rtl` unit by unit: :mod:`.tile` (crossbar, ADC, shift-accumulator,
post-processing, cell update), :mod:`.writeverify` (the ISPP controller) and :mod:`.soc` (the
activation buffer, sequencer and single-cell access around the tiles). The cocotb benches
compare the RTL with it.
"""
from cimstack.golden.soc import GoldenSoC
from cimstack.golden.tile import GoldenTile, Pulse
from cimstack.golden.writeverify import WriteVerifyJob, WriteVerifyResult, check_write_verify, ispp

__all__ = ["GoldenSoC", "GoldenTile", "Pulse", "WriteVerifyJob", "WriteVerifyResult", "check_write_verify", "ispp"]
