"""Amaranth 0.5 gateware of the CIM accelerator, elaborated from a ChipConfig."""
from cimstack.rtl.tile import CimTile

__all__ = ["CimTile"]
