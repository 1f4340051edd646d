"""The golden model: the chip's integer datapath in NumPy, bit for bit what the RTL computes.

It mirrors :mod:`cimstack.rtl` unit by unit: :mod:`.tile` (crossbar, ADC, shift-accumulator,
post-processing, cell update), :mod:`.writeverify` (the ISPP controller), :mod:`.soc` (the
activation buffer, sequencer and single-cell access around the tiles) and :mod:`.bridge` (the
host bridge's answers, shadowed memories and registers, link counters). The cocotb benches
compare the RTL with it.
"""
from cimstack.golden.bridge import BridgeModel
from cimstack.golden.soc import GoldenSoC
from cimstack.golden.tile import GoldenTile, Pulse
from cimstack.golden.writeverify import (
    WriteVerifyJob,
    WriteVerifyResult,
    check_write_verify,
    check_write_verify_cells,
    ispp,
    ispp_cells,
)

__all__ = ["BridgeModel", "GoldenSoC", "GoldenTile", "Pulse", "WriteVerifyJob", "WriteVerifyResult", "check_write_verify",
           "check_write_verify_cells", "ispp", "ispp_cells"]
