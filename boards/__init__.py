"""FPGA board targets (ULX3S, iCEBreaker): bitstream builds and flashing.

Not yet implemented: the SoC top these wrap arrives first; see the project issues.
"""
