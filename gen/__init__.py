"""Artefact generation from a chip config (Verilog now; register maps with the SoC)."""
from .verilog import tile_verilog, write_tile_verilog

__all__ = ["tile_verilog", "write_tile_verilog"]
