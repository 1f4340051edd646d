"""Enumerations of the chip, defined once and shared by the host models and the RTL."""
from __future__ import annotations

__all__ = ["STUCK_NONE", "STUCK_AT_0", "STUCK_AT_MAX", "SET", "RESET"]

# stuck-at flag of a cell (2 bits beside its state in the crossbar memory)
STUCK_NONE, STUCK_AT_0, STUCK_AT_MAX = 0, 1, 2
# polarity of a programming pulse
SET, RESET = 0, 1
