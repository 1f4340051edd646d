"""Jobs: one list of tile operations, replayed on the golden model and on the RTL alike."""
from __future__ import annotations

import numpy as np

from cimstack.chip.enums import Polarity
from cimstack.golden.tile import GoldenTile, Pulse

__all__ = ["make_job", "run_golden", "vmm_op", "pulse_op", "read_op"]


def vmm_op(x, mode: str | None = None) -> dict:
    """A VMM in input ``mode`` (default: the config's)."""
    op = {"op": "vmm", "x": [int(v) for v in np.asarray(x).ravel()]}
    if mode is not None:
        op["mode"] = mode
    return op


def pulse_op(tile: GoldenTile, row: int, unit: int, cell: int, polarity: Polarity, amplitude: int) -> dict:
    lanes = tile.cfg.array.mac_lanes
    return {"op": "pulse", "row": int(row), "group": int(unit) // lanes, "lane": int(unit) % lanes,
            "cell": int(cell), "polarity": int(polarity), "amplitude": int(amplitude)}


def read_op(tile: GoldenTile, row: int, unit: int, cell: int) -> dict:
    """A cell read through the pulse port (no pulse, no generator step)."""
    return {**pulse_op(tile, row, unit, cell, Polarity.SET, 1), "read": 1}


def make_job(tile: GoldenTile, ops: list[dict], y_stall: float = 0.0, stall_seed: int = 0) -> dict:
    """A job that loads ``tile``'s current state and registers into the RTL, then runs ``ops``."""
    return {
        "memory": tile.memory_image(),
        "post": [[int(b), int(s)] for b, s in zip(tile.bias, tile.scale)],
        "adc_gain": int(tile.adc_gain), "adc_offset": int(tile.adc_offset), "relu": int(tile.relu),
        "y_stall": y_stall, "stall_seed": stall_seed, "ops": ops,
    }


def run_golden(tile: GoldenTile, ops: list[dict]) -> list:
    """Apply ``ops`` to the golden model; results in the bench's format."""
    out = []
    lanes = tile.cfg.array.mac_lanes
    for op in ops:
        kind = op["op"]
        if kind == "vmm":
            out.append(tile.vmm(np.array(op["x"]), op.get("mode")).tolist())
        elif kind == "pulse" and op.get("read"):
            out.append(tile.read_cell(op["row"], op["group"] * lanes + op["lane"], op["cell"]))
        elif kind == "pulse":
            out.append(tile.pulse(Pulse(op["row"], op["group"] * lanes + op["lane"], op["cell"],
                                        Polarity(op["polarity"]), op["amplitude"])))
        elif kind == "reseed":
            tile.reseed(op["seed"])
            out.append(None)
        elif kind == "regs":
            tile.adc_gain = op.get("adc_gain", tile.adc_gain)
            tile.adc_offset = op.get("adc_offset", tile.adc_offset)
            tile.relu = bool(op.get("relu", tile.relu))
            out.append(None)
        else:
            raise ValueError(f"unknown op {kind!r}")
    return out
