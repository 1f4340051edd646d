"""Artefact generation from a chip config: Verilog (tile, SoC) and the register map
(JSON, Markdown, C header). Output goes under build/."""
from pathlib import Path

from cimstack.chip.config import ChipConfig, preset
from cimstack.gen.config_doc import config_markdown, update_config_doc
from cimstack.gen.registers import regmap_c_header, regmap_markdown, update_isa_doc, update_protocol_doc, write_regmap
from cimstack.gen.verilog import soc_verilog, tile_verilog, write_soc_verilog, write_tile_verilog

__all__ = ["tile_verilog", "write_tile_verilog", "soc_verilog", "write_soc_verilog",
           "regmap_markdown", "regmap_c_header", "write_regmap", "update_protocol_doc", "update_isa_doc",
           "config_markdown", "update_config_doc", "update_docs", "write_all"]


def write_all(cfg: ChipConfig, out_dir: str | Path = "build/gen") -> list[Path]:
    """The SoC Verilog (UART top, as boards build it) and the register map files."""
    return [write_soc_verilog(cfg, out_dir, "uart"), *write_regmap(cfg, out_dir)]


def update_docs(docs: str | Path = "docs") -> list[str]:
    """Refresh the generated parts of the docs: the default preset's register map in
    protocol.md, the instruction set in soc.md, and config.md. Returns the files changed."""
    docs = Path(docs)
    steps = ((docs / "protocol.md", lambda d: update_protocol_doc(d, preset("default"))),
             (docs / "soc.md", update_isa_doc), (docs / "config.md", update_config_doc))
    return [str(d) for d, update in steps if update(d)]
