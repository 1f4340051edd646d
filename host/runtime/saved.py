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
``torch.load(weights_only=True)``, so no code in the file runs. It refuses a file that is
truncated, of another format, or whose config no longer hashes to the hash it was saved with;
the message says which.

    dep.save("build/mlp.deployment")                 # after compile/tune/program
    dep = cimstack.runtime.saved.load_deployment("build/mlp.deployment")
    dep.attach(DeviceBackend(url, dep.cfg))          # the chip still holds the cells
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from cimstack.chip.config import ChipConfig
from cimstack.errors import CompileError, ConfigError
from cimstack.files import atomic_write
from cimstack.runtime.repair import check_maps

__all__ = ["FORMAT", "save_deployment", "load_deployment"]

FORMAT = "cimstack-deployment/1"
_ND = "__ndarray__"          # marks a NumPy array stored as a tensor (weights_only has no NumPy)


def _encode(v):
    if isinstance(v, np.ndarray):
        return {_ND: torch.from_numpy(np.ascontiguousarray(v))}
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {k: _encode(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_encode(x) for x in v)
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().clone()
    return v


def _decode(v):
    if isinstance(v, dict):
        if set(v) == {_ND}:
            return v[_ND].numpy()
        return {k: _decode(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_decode(x) for x in v)
    return v


def save_deployment(dep, path: str | Path) -> Path:
    """Write ``dep`` to ``path`` atomically (see the module docstring); ``dep.info`` (where it
    came from: the data set, the model file) goes with it."""
    g = dep.graph
    state = {
        "format": FORMAT,
        "config": dep.cfg.to_toml(), "config_hash": dep.cfg.datapath.config_hash,
        "seed": dep.seed, "input_shape": list(dep.input_shape), "ir_compensation": dep.ir_compensation,
        "graph": {"name": g.name, "input": g.input, "output": g.output,
                  "nodes": [{"name": n.name, "op": n.op, "inputs": list(n.inputs), "attrs": _encode(n.attrs),
                             "origin": n.origin} for n in g.nodes]},
        "strategy": dep.placement.strategy, "info": _encode(dict(dep.info)),
        "layers": [{"name": layer.name, "in_features": layer.in_features, "out_features": layer.out_features,
                    "w_scale": _encode(np.asarray(layer.w_scale, dtype=np.float64)), "x_range": layer.x_range,
                    "x_scale": layer.x_scale, "copies": layer.copies, "mode": layer.mode,
                    "adc_gain": int(layer.adc_gain), "adc_offset": int(layer.adc_offset),
                    "calls_per_sample": float(layer.calls_per_sample),
                    "blocks": [{"index": b.index, "copy": b.copy, "in0": b.in0, "rows": b.rows, "out0": b.out0,
                                "cols": b.cols, "tile": b.tile, "row": b.row, "col": b.col,
                                "weights": _encode(np.asarray(b.weights, dtype=np.int64))} for b in layer.blocks]}
                   for layer in dep.layers],
        "line_maps": {int(t): {"rows": _encode(np.asarray(rows, dtype=np.int64)),
                               "cols": _encode(np.asarray(cols, dtype=np.int64))}
                      for t in sorted(set(dep.row_map) | set(dep.col_map)) for rows, cols in [dep.line_maps(t)]},
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write(path, buf.getvalue())


def load_deployment(path: str | Path):
    """Read a deployment :func:`save_deployment` wrote; checks format, config hash, codes and
    placement before anything runs."""
    from cimstack.compiler import Graph
    from cimstack.compiler.ir import Node
    from cimstack.runtime.deployment import Deployment
    from cimstack.compiler.mapper import Block, MappedLayer
    from cimstack.compiler.placer import placed

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"deployment file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:                    # zip, pickle and EOF errors of every kind
        raise CompileError(f"{path}: not a readable deployment file, truncated or damaged "
                           f"({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CompileError(f"{path}: not a cimstack deployment (format {found!r}, expected {FORMAT!r})")
    try:
        cfg = ChipConfig.from_toml(state["config"], source=f"{path} (config)")
        if cfg.datapath.config_hash != state["config_hash"]:
            raise ConfigError(f"{path}: its chip config {cfg.name!r} now hashes to {cfg.datapath.config_hash:08x}, "
                              f"it was saved as {state['config_hash']:08x}: the file or the datapath changed since")
        g = state["graph"]
        graph = Graph([Node(n["name"], n["op"], tuple(n["inputs"]), _decode(n["attrs"]), n["origin"]) for n in g["nodes"]],
                      g["input"], g["output"], g["name"])
        nodes = {n.name: n for n in graph.analog_nodes()}
        dp = cfg.datapath
        layers = []
        for ls in state["layers"]:
            if ls["name"] not in nodes:
                raise CompileError(f"{path}: layer {ls['name']!r} is not an analog node of the saved graph")
            blocks = []
            for bs in ls["blocks"]:
                w = _decode(bs["weights"])
                if w.shape != (bs["rows"], bs["cols"]) or w.size and (w.min() < dp.weight_min or w.max() > dp.weight_max):
                    raise CompileError(f"{path}: layer {ls['name']} block {bs['index']}: weight codes of shape {w.shape} "
                                       f"outside {dp.weight_min}..{dp.weight_max} or not {bs['rows']}x{bs['cols']}")
                blocks.append(Block(ls["name"], bs["index"], bs["copy"], bs["in0"], bs["rows"], bs["out0"], bs["cols"],
                                    w, bs["tile"], bs["row"], bs["col"]))
            layer = MappedLayer(nodes[ls["name"]], ls["in_features"], ls["out_features"], _decode(ls["w_scale"]),
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
            rows, cols = _decode(maps["rows"]), _decode(maps["cols"])
            problem = None if isinstance(t, int) and 0 <= t < a.tiles else f"tile {t!r} is not on the chip"
            if not problem and not all(isinstance(m, np.ndarray) and m.dtype.kind in "iu" for m in (rows, cols)):
                problem = "the line maps are not integer arrays"
            problem = problem or check_maps(rows, cols, a.rows, a.cols, a.usable_rows, a.usable_cols)
            if problem:
                raise CompileError(f"{path}: damaged spare-line repairs of tile {t}: {problem}")
            dep.row_map[t], dep.col_map[t] = rows, cols
        dep.info = _decode(state["info"])
        return dep
    except KeyError as exc:
        raise CompileError(f"{path}: damaged deployment file (missing {exc})") from None
