"""Verilog generation: elaborate the Amaranth gateware for a config and write it under build/."""
from __future__ import annotations

from pathlib import Path

from amaranth.back import verilog

from cimstack.chip.config import ChipConfig
from cimstack.rtl import CimTile
from cimstack.rtl.soc import CimSoC

__all__ = ["tile_verilog", "write_tile_verilog", "soc_verilog", "write_soc_verilog", "TILE_TOP", "SOC_TOP"]

TILE_TOP = "cim_tile"
SOC_TOP = "cim_soc"


def tile_verilog(cfg: ChipConfig, tile: int = 0) -> str:
    return verilog.convert(CimTile(cfg, tile), name=TILE_TOP)


def write_tile_verilog(cfg: ChipConfig, out_dir: str | Path = "build/gen", tile: int = 0) -> Path:
    """Write ``<out_dir>/<config name>/cim_tile.v`` and return its path."""
    path = Path(out_dir) / cfg.name / f"{TILE_TOP}.v"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tile_verilog(cfg, tile))
    return path


def soc_verilog(cfg: ChipConfig, phy: str = "uart") -> str:
    return verilog.convert(CimSoC(cfg, phy), name=SOC_TOP)


def write_soc_verilog(cfg: ChipConfig, out_dir: str | Path = "build/gen", phy: str = "uart") -> Path:
    """Write ``<out_dir>/<config name>/cim_soc_<phy>.v`` (top module ``cim_soc``)."""
    path = Path(out_dir) / cfg.name / f"{SOC_TOP}_{phy}.v"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(soc_verilog(cfg, phy))
    return path
