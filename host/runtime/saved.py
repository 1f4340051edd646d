"""Saved deployments: a compiled, tuned model with everything needed to run it again on a chip
that holds it, in one file written atomically.

A file holds:

- the CIM IR graph (the digital ops run on the host);
- per layer, the integer weight codes of every block and where the block sits;
- the weight and input scales;
- the tuned hardware parameters (ADC gain and offset, input mode and range, copies);
- the lines that programming moved onto spares (:mod:`cimstack.runtime.repair`), per tile;
- the chip config, with its hash.

:func:`save_deployment` writes it through a temporary file renamed over the old one: a writer
that dies at any point leaves the previous file whole. :func:`load_deployment` reads it with
``torch.load(weights_only=True)``, so no code in the file runs (the format and the writer are
in :mod:`cimstack.runtime.fileformat`, which :meth:`cimstack.Deployment.save` uses). It refuses a file that is
truncated, of another format, or whose config no longer hashes to the hash it was saved with;
the message says which.

    dep.save("build/mlp.deployment")                 # after compile/tune/program
    dep = cimstack.runtime.saved.load_deployment("build/mlp.deployment")
    dep.attach(DeviceBackend(url, dep.cfg))          # the chip still holds the cells
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cimstack.chip.config import ChipConfig
from cimstack.compiler.ir import Graph, Node
from cimstack.compiler.mapper import Block, MappedLayer
from cimstack.compiler.placer import placed
from cimstack.errors import CompileError, ConfigError
from cimstack.runtime.deployment import Deployment
from cimstack.runtime.fileformat import FORMAT, decode, read_state, save_deployment
from cimstack.runtime.repair import check_maps

__all__ = ["FORMAT", "save_deployment", "load_deployment"]


def load_deployment(path: str | Path) -> Deployment:
    """Read a deployment :func:`save_deployment` wrote; checks format, config hash, codes and
    placement before anything runs."""
    path = Path(path)
    state = read_state(path)
    try:
        cfg = ChipConfig.from_toml(state["config"], source=f"{path} (config)")
        if cfg.datapath.config_hash != state["config_hash"]:
            raise ConfigError(f"{path}: its chip config {cfg.name!r} now hashes to {cfg.datapath.config_hash:08x}, "
                              f"it was saved as {state['config_hash']:08x}: the file or the datapath changed since")
        g = state["graph"]
        graph = Graph([Node(n["name"], n["op"], tuple(n["inputs"]), decode(n["attrs"]), n["origin"]) for n in g["nodes"]],
                      g["input"], g["output"], g["name"])
        nodes = {n.name: n for n in graph.analog_nodes()}
        dp = cfg.datapath
        layers = []
        for ls in state["layers"]:
            if ls["name"] not in nodes:
                raise CompileError(f"{path}: layer {ls['name']!r} is not an analog node of the saved graph")
            blocks = []
            for bs in ls["blocks"]:
                w = decode(bs["weights"])
                if w.shape != (bs["rows"], bs["cols"]) or w.size and (w.min() < dp.weight_min or w.max() > dp.weight_max):
                    raise CompileError(f"{path}: layer {ls['name']} block {bs['index']}: weight codes of shape {w.shape} "
                                       f"outside {dp.weight_min}..{dp.weight_max} or not {bs['rows']}x{bs['cols']}")
                blocks.append(Block(ls["name"], bs["index"], bs["copy"], bs["in0"], bs["rows"], bs["out0"], bs["cols"],
                                    w, bs["tile"], bs["row"], bs["col"]))
            layer = MappedLayer(nodes[ls["name"]], ls["in_features"], ls["out_features"], decode(ls["w_scale"]),
                                ls["x_range"], ls["x_scale"], ls["copies"], blocks, ls["mode"], ls["adc_gain"],
                                ls["adc_offset"], ls["calls_per_sample"])
            layer.set_inputs(cfg, layer.x_range, layer.mode)        # checks the mode and the range
            layers.append(layer)
        placement = placed(layers, cfg, state["strategy"])
        dep = Deployment(cfg, graph, layers, placement, state["seed"], tuple(state["input_shape"]),
                         ir_compensation=state["ir_compensation"])
        dep.settings().check(cfg)                    # ADC registers, modes, ranges within the chip's
        a = cfg.array
        for t, maps in state.get("line_maps", {}).items():
            rows, cols = decode(maps["rows"]), decode(maps["cols"])
            problem = None if isinstance(t, int) and 0 <= t < a.tiles else f"tile {t!r} is not on the chip"
            if not problem and not all(isinstance(m, np.ndarray) and m.dtype.kind in "iu" for m in (rows, cols)):
                problem = "the line maps are not integer arrays"
            problem = problem or check_maps(rows, cols, a.rows, a.cols, a.usable_rows, a.usable_cols)
            if problem:
                raise CompileError(f"{path}: damaged spare-line repairs of tile {t}: {problem}")
            dep.set_line_maps(t, rows, cols)
        dep.info = decode(state["info"])
        return dep
    except KeyError as exc:
        raise CompileError(f"{path}: damaged deployment file (missing {exc})") from None
