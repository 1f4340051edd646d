"""Mapper: each analog op of the CIM IR becomes integer weight blocks that fit one array.

For a layer with crossbar matrix ``M`` (in_features x out_features, see
:meth:`cimstack.compiler.Node.matrix`):

1. **Weight quantisation** to the chip's signed ``mapping.weight_bits`` integers,
   ``W = clip(round(M / s_w), weight_min, weight_max)``, with one scale per layer
   (``s_w = max|M| / weight_max``) or one per output column (``per_column``, the default:
   each column uses the full code range).
2. **Input quantisation**: ``x_int = clip(round(x / s_x), in_min, in_max)`` with
   ``s_x = range / in_max`` and ``range`` the calibrated input magnitude of the layer
   (a percentile of |x| over a calibration batch).
3. **Cells**: differential pairs or an offset reference column, and bit slicing of each
   weight across ``datapath.slices`` cells, are fixed by the chip config and applied by
   :func:`cimstack.chip.datapath.weights_to_codes` when a tile is programmed.
4. **Tiling**: the matrix is cut into row blocks of at most ``array.usable_rows`` inputs and
   column blocks of at most ``array.usable_cols`` outputs (the array less its spare lines), cut as evenly as possible (so that small
   remainders do not waste an array when packing); ``copies`` places each block several
   times and averages the copies' outputs digitally (read and ADC noise fall by sqrt(copies)).

The outputs of one VMM are dequantised as ``y = y_int * s_x * s_w / adc_scale`` where
``adc_scale = adc.gain / 2**adc.gain_shift`` is the tile's ADC gain; the partial sums of
row blocks are added digitally.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from cimstack.chip.config import ChipConfig
from cimstack.compiler.ir import Graph, Node, float_vmm
from cimstack.errors import CompileError, ConfigError

__all__ = ["Block", "MappedLayer", "map_layer", "with_copies", "calibrate", "even_splits", "WEIGHT_SCALES"]

WEIGHT_SCALES = ("per_layer", "per_column")


@dataclass
class Block:
    """One array-sized piece of a layer: inputs ``in0 .. in0+rows``, outputs ``out0 .. out0+cols``."""

    layer: str
    index: int                 # block number within the layer (copies included)
    copy: int
    in0: int
    rows: int
    out0: int
    cols: int
    weights: np.ndarray = field(repr=False)      # int64 (rows, cols)
    # filled in by the placer
    tile: int = -1
    row: int = -1              # top row of the block in the array
    col: int = -1              # first logical column of the block in the array

    @property
    def key(self) -> tuple[str, int]:
        return (self.layer, self.index)

    @property
    def placed(self) -> bool:
        return self.tile >= 0


@dataclass
class MappedLayer:
    """An analog op after quantisation and tiling."""

    node: Node
    in_features: int
    out_features: int
    w_scale: np.ndarray          # (out_features,) float: weight units per integer weight
    x_range: float               # calibrated input magnitude (maps to in_max)
    x_scale: float               # input units per integer input step
    copies: int
    blocks: list[Block]
    mode: str                    # input mode of this layer's VMMs
    adc_gain: int = 0            # ADC registers while this layer's VMMs run (tuned per layer)
    adc_offset: int = 0
    calls_per_sample: float = 1.0    # VMM rows per inference sample (conv positions, RNN steps)

    @property
    def name(self) -> str:
        return self.node.name

    def set_inputs(self, cfg: ChipConfig, x_range: float | None = None, mode: str | None = None) -> None:
        """Change the input range (input scaling) and/or input mode; the step follows both."""
        if mode is not None:
            self.mode = cfg.datapath.mode(mode).name
        if x_range is not None:
            if not (isinstance(x_range, (int, float, np.floating)) and np.isfinite(x_range) and x_range > 0):
                raise ConfigError(f"layer {self.name}: input range {x_range!r} must be a positive number")
            self.x_range = float(x_range)
        self.x_scale = self.x_range / cfg.datapath.mode(self.mode).in_max

    def quantised_matrix(self) -> np.ndarray:
        """The integer matrix the blocks of copy 0 hold, assembled (in_features, out_features)."""
        w = np.zeros((self.in_features, self.out_features), dtype=np.int64)
        for b in self.blocks:
            if b.copy == 0:
                w[b.in0:b.in0 + b.rows, b.out0:b.out0 + b.cols] = b.weights
        return w

    def weight_error(self) -> float:
        """Relative RMS error of the quantised weights against the float matrix."""
        m = self.node.matrix()
        q = self.quantised_matrix() * self.w_scale[None, :]
        return float(np.sqrt(np.mean((q - m) ** 2)) / max(np.sqrt(np.mean(m ** 2)), 1e-30))


def even_splits(total: int, limit: int) -> list[tuple[int, int]]:
    """(start, size) pieces of ``total`` in as few pieces of at most ``limit`` as possible,
    sizes differing by at most one."""
    n = math.ceil(total / limit)
    base, extra = divmod(total, n)
    out, start = [], 0
    for k in range(n):
        size = base + (1 if k < extra else 0)
        out.append((start, size))
        start += size
    return out


def map_layer(node: Node, cfg: ChipConfig, x_range: float, *, weight_scale: str = "per_column",
              copies: int = 1, mode: str | None = None) -> MappedLayer:
    """Quantise and tile one analog op (see the module docstring)."""
    if weight_scale not in WEIGHT_SCALES:
        raise ConfigError(f"weight_scale = {weight_scale!r} is not one of {', '.join(WEIGHT_SCALES)}")
    if not isinstance(copies, int) or copies < 1:
        raise ConfigError(f"layer {node.name}: copies = {copies!r} must be a positive integer")
    dp = cfg.datapath
    md = dp.mode(mode)
    m = node.matrix()
    if not np.all(np.isfinite(m)):
        raise CompileError(f"layer {node.describe()} has NaN or infinite weights")
    in_f, out_f = m.shape
    wmax = float(dp.weight_max)
    if weight_scale == "per_layer":
        w_scale = np.full(out_f, max(np.abs(m).max(), 1e-30) / wmax)
    else:
        w_scale = np.maximum(np.abs(m).max(axis=0), 1e-30) / wmax
    w_int = np.clip(np.round(m / w_scale[None, :]), dp.weight_min, dp.weight_max).astype(np.int64)
    if not (np.isfinite(x_range) and x_range > 0):
        x_range = 1.0                                   # an input that is always zero
    x_scale = x_range / md.in_max
    return MappedLayer(node, in_f, out_f, w_scale, float(x_range), float(x_scale), copies,
                       _blocks(node.name, w_int, cfg, copies), md.name, cfg.adc.gain, cfg.adc.offset)


def _blocks(name: str, w_int: np.ndarray, cfg: ChipConfig, copies: int) -> list[Block]:
    in_f, out_f = w_int.shape
    blocks = []
    for c in range(copies):
        for in0, rows in even_splits(in_f, cfg.array.usable_rows):
            for out0, cols in even_splits(out_f, cfg.array.usable_cols):
                blocks.append(Block(name, len(blocks), c, in0, rows, out0, cols,
                                    w_int[in0:in0 + rows, out0:out0 + cols].copy()))
    return blocks


def with_copies(layer: MappedLayer, cfg: ChipConfig, copies: int) -> MappedLayer:
    """The same quantised layer and settings with ``copies`` weight copies (blocks unplaced)."""
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ConfigError(f"layer {layer.name}: copies = {copies!r} must be a positive integer")
    return replace(layer, copies=copies, blocks=_blocks(layer.name, layer.quantised_matrix(), cfg, copies))


def calibrate(graph: Graph, x, percentile: float = 100.0) -> tuple[dict[str, float], dict[str, float]]:
    """Input magnitude of every analog op over the batch ``x`` (the ``percentile`` of |x|),
    and how many VMM rows each op needs per sample."""
    ranges: dict[str, float] = {}
    calls: dict[str, float] = {}
    batch = x.shape[0]
    # the magnitudes of the node being evaluated (a recurrent node calls its VMM once per
    # step, one step after the other); a node's range is taken as soon as the next one starts,
    # so one layer's activations are held at a time
    pending: list = [None, []]

    def finish() -> None:
        name, parts = pending
        if name is not None:
            v = parts[0] if len(parts) == 1 else torch.cat(parts)
            ranges[name] = float(v.max()) if percentile >= 100 else float(np.percentile(v.numpy(), percentile))
        pending[:] = [None, []]

    def record(node: Node, x2d):
        if node.name != pending[0]:
            finish()
            if node.name in ranges:
                raise CompileError(f"calibration saw {node.name} again after other layers: its range would "
                                   f"leave out the earlier inputs")
            pending[0] = node.name
        # float32 magnitudes are plenty for a percentile, at half the memory of the activations
        pending[1].append(x2d.detach().abs().reshape(-1).to(torch.float32))
        calls[node.name] = calls.get(node.name, 0) + x2d.shape[0] / batch
        return float_vmm(node, x2d)

    with torch.no_grad():
        graph.evaluate(torch.as_tensor(x, dtype=torch.float64), record)
    finish()
    return ranges, calls
