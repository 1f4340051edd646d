"""cocotb test benches (run through cimstack.sim.verilator, not imported directly)."""
