"""Simulation of the gateware: Verilator builds, cocotb benches, job replay."""
