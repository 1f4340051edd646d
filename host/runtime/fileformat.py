"""The file format of saved deployments (``cimstack-deployment/1``) and its writer.

The state of a deployment as plain containers, NumPy arrays stored as tensors (so that
``torch.load(weights_only=True)`` reads it and no code in the file runs), written through
:func:`cimstack.files.atomic_write`. :meth:`cimstack.Deployment.save` writes through
:func:`save_deployment`; reading a file back into a deployment is
:func:`cimstack.runtime.saved.load_deployment`, which documents what a file holds.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cimstack.errors import CompileError, ConfigError
from cimstack.files import atomic_write

__all__ = ["FORMAT", "encode", "decode", "save_deployment", "read_state"]

FORMAT = "cimstack-deployment/1"
_ND = "__ndarray__"          # marks a NumPy array stored as a tensor (weights_only has no NumPy)


def encode(v):
    """``v`` with every NumPy array and scalar made storable under ``weights_only``."""
    if isinstance(v, np.ndarray):
        return {_ND: torch.from_numpy(np.ascontiguousarray(v))}
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {k: encode(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(encode(x) for x in v)
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().clone()
    return v


def decode(v: Any) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(v, dict):
        if set(v) == {_ND}:
            return v[_ND].numpy()
        return {k: decode(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(decode(x) for x in v)
    return v


def save_deployment(dep, path: str | Path) -> Path:
    """Write ``dep`` to ``path`` atomically (see :mod:`cimstack.runtime.saved`); ``dep.info``
    (where it came from: the data set, the model file) goes with it."""
    g = dep.graph
    state = {
        "format": FORMAT,
        "config": dep.cfg.to_toml(), "config_hash": dep.cfg.datapath.config_hash,
        "seed": dep.seed, "input_shape": list(dep.input_shape), "ir_compensation": dep.ir_compensation,
        "graph": {"name": g.name, "input": g.input, "output": g.output,
                  "nodes": [{"name": n.name, "op": n.op, "inputs": list(n.inputs), "attrs": encode(n.attrs),
                             "origin": n.origin} for n in g.nodes]},
        "strategy": dep.placement.strategy, "info": encode(dict(dep.info)),
        "layers": [{"name": layer.name, "in_features": layer.in_features, "out_features": layer.out_features,
                    "w_scale": encode(np.asarray(layer.w_scale, dtype=np.float64)), "x_range": layer.x_range,
                    "x_scale": layer.x_scale, "copies": layer.copies, "mode": layer.mode,
                    "adc_gain": int(layer.adc_gain), "adc_offset": int(layer.adc_offset),
                    "calls_per_sample": float(layer.calls_per_sample),
                    "blocks": [{"index": b.index, "copy": b.copy, "in0": b.in0, "rows": b.rows, "out0": b.out0,
                                "cols": b.cols, "tile": b.tile, "row": b.row, "col": b.col,
                                "weights": encode(np.asarray(b.weights, dtype=np.int64))} for b in layer.blocks]}
                   for layer in dep.layers],
        "line_maps": {int(t): {"rows": encode(np.asarray(rows, dtype=np.int64)),
                               "cols": encode(np.asarray(cols, dtype=np.int64))}
                      for t in sorted(set(dep.row_map) | set(dep.col_map)) for rows, cols in [dep.line_maps(t)]},
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write(path, buf.getvalue())


def read_state(path: Path) -> dict:
    """The state dict of a deployment file; refuses a missing, unreadable (truncated,
    damaged) file or one of another format."""
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
    return state
