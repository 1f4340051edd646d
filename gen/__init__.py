"""Artefact generation from a chip config: Verilog (tile, SoC) and the register map
(JSON, Markdown, C header). Output goes under build/."""
from pathlib import Path

from cimstack.config import ChipConfig

from .registers import regmap_c_header, regmap_markdown, update_isa_doc, update_protocol_doc, write_regmap
from .verilog import soc_verilog, tile_verilog, write_soc_verilog, write_tile_verilog

__all__ = ["tile_verilog", "write_tile_verilog", "soc_verilog", "write_soc_verilog",
           "regmap_markdown", "regmap_c_header", "write_regmap", "update_protocol_doc", "update_isa_doc",
           "write_all"]


def write_all(cfg: ChipConfig, out_dir: str | Path = "build/gen") -> list[Path]:
    """The SoC Verilog (UART top, as boards build it) and the register map files."""
    return [write_soc_verilog(cfg, out_dir, "uart"), *write_regmap(cfg, out_dir)]
