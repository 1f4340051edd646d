"""Placer: put every weight block on a physical array (one per tile), scored by a cost model.

Strategies
----------
``layer_per_array``
    Every layer gets arrays of its own; its blocks are packed into them, no two layers share
    an array. The simple mapping most CIM compilers start from.
``skyline``
    All blocks of all layers packed together, tallest first, by skyline (lowest-level,
    bottom-left) bin packing into ``rows x cols`` arrays, as OpenCIMTC does: each array keeps
    its skyline (the filled height over each column range) and a block goes where it rests
    lowest, leftmost on ties; a new array is opened only when no array has room.
``auto``
    Both, keeping the one with the lower cost among those that fit.

Packed blocks share an array without interfering: a VMM drives only the rows of the blocks
it runs (the other rows get input 0, which contributes nothing) and reads only their columns.
Blocks of one layer that share no column of an array, and either share no row or read the
same inputs on the same rows, run in one VMM ("pass").

Cost model (per inference sample; lower is better)
    ``arrays`` used, ``cycles`` = VMM passes x rows each pass processes x cycles of one
    VMM (:func:`vmm_cycles`, the tile's bit-serial schedule), ``hops`` = router hops of
    the passes' traffic between the sequencer and the tiles (XY routing on the mesh,
    :mod:`cimstack.chip.topology`). ``score = arrays / tiles + cycles / cycles_ref + 0.1 hops / hops_ref``
    with the references taken from the ``layer_per_array`` placement of the same model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import numpy as np

from cimstack.chip.config import ChipConfig
from cimstack.chip.topology import tile_hops
from cimstack.compiler.mapper import Block, MappedLayer
from cimstack.errors import ConfigError, PlacementError

__all__ = ["STRATEGIES", "Placement", "Pass", "place", "placed", "vmm_cycles"]

STRATEGIES = ("auto", "skyline", "layer_per_array")
VMM_OVERHEAD_CYCLES = 80        # per VMM: configuration and output flits through the router


def vmm_cycles(cfg: ChipConfig, mode: str | None = None) -> int:
    """Estimated cycles of one VMM: every MAC group steps through every input pulse over all
    rows, plus the router overhead (the measured figure on the default chip is within 2 %)."""
    dp = cfg.datapath
    return dp.groups * dp.mode(mode).pulses * cfg.array.rows + VMM_OVERHEAD_CYCLES


@dataclass
class Pass:
    """Blocks of one layer on one tile that run in the same VMM."""

    layer: str
    tile: int
    blocks: list[Block]


class _Skyline:
    """One array's skyline: ``segments`` of (x, width, height) covering the columns."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.segments = [(0, width, 0)]

    def find(self, w: int, h: int) -> tuple[int, int] | None:
        """Lowest (then leftmost) position (x, y) where a w x h block fits."""
        best = None
        for i, (x, _, _) in enumerate(self.segments):
            if x + w > self.width:
                break
            y, covered, j = 0, 0, i
            while covered < w:
                sx, sw, sy = self.segments[j]
                y = max(y, sy)
                covered += sw - (x - sx if j == i else 0)
                j += 1
            if y + h <= self.height and (best is None or (y, x) < (best[1], best[0])):
                best = (x, y)
        return best

    def add(self, x: int, y: int, w: int, h: int) -> None:
        new = []
        for sx, sw, sy in self.segments:
            end = sx + sw
            if end <= x or sx >= x + w:
                new.append((sx, sw, sy))
                continue
            if sx < x:
                new.append((sx, x - sx, sy))
            if end > x + w:
                new.append((x + w, end - x - w, sy))
        new.append((x, w, y + h))
        new.sort()
        merged = []
        for seg in new:                       # merge neighbours of equal height
            if merged and merged[-1][2] == seg[2] and merged[-1][0] + merged[-1][1] == seg[0]:
                px, pw, py = merged.pop()
                seg = (px, pw + seg[1], py)
            merged.append(seg)
        self.segments = merged


@dataclass
class Placement:
    """Where every block went, the VMM passes, utilisation and cost."""

    cfg: ChipConfig
    strategy: str
    layers: list[MappedLayer]
    passes: dict[str, list[Pass]] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)

    @property
    def tiles_used(self) -> list[int]:
        return sorted({b.tile for layer in self.layers for b in layer.blocks})

    def cells_used(self, tile: int | None = None) -> int:
        """Logical weight positions (rows x columns) occupied, on one tile or all."""
        return sum(b.rows * b.cols for layer in self.layers for b in layer.blocks if tile in (None, b.tile))

    def utilisation(self, tile: int | None = None) -> float:
        """Occupied fraction of the arrays used (or of one tile)."""
        a = self.cfg.array
        n = 1 if tile is not None else len(self.tiles_used)
        return self.cells_used(tile) / (n * a.rows * a.cols) if n else 0.0

    def report(self) -> str:
        """A text table of the placement and its cost."""
        a = self.cfg.array
        lines = [f"placement ({self.strategy}): {len(self.tiles_used)} of {a.tiles} arrays of {a.rows}x{a.cols}, "
                 f"utilisation {100 * self.utilisation():.1f} %, "
                 f"{self.cost['cycles']:.0f} cycles and {self.cost['hops']:.0f} router hops per sample",
                 f"  {'layer':<16s} {'block':>5s} {'copy':>4s} {'inputs':>11s} {'outputs':>11s} {'tile':>4s} {'at (row, col)':>14s}"]
        for layer in self.layers:
            for b in layer.blocks:
                lines.append(f"  {layer.name:<16s} {b.index:>5d} {b.copy:>4d} {b.in0:>4d}..{b.in0 + b.rows - 1:<5d} "
                             f"{b.out0:>4d}..{b.out0 + b.cols - 1:<5d} {b.tile:>4d} {f'({b.row}, {b.col})':>14s}")
        for t in self.tiles_used:
            lines.append(f"  tile {t}: {100 * self.utilisation(t):5.1f} % used")
        return "\n".join(lines)

    def tile_map(self, tile: int, width: int = 32, height: int = 16) -> str:
        """ASCII picture of one array: each character a patch of cells, the letter the layer."""
        a = self.cfg.array
        letters = {layer.name: chr(ord("A") + i % 26) for i, layer in enumerate(self.layers)}
        grid = [["." for _ in range(width)] for _ in range(height)]
        for layer in self.layers:
            for b in layer.blocks:
                if b.tile != tile:
                    continue
                for gy in range(height):
                    r = (gy + 0.5) * a.rows / height
                    if not b.row <= r < b.row + b.rows:
                        continue
                    for gx in range(width):
                        c = (gx + 0.5) * a.cols / width
                        if b.col <= c < b.col + b.cols:
                            grid[gy][gx] = letters[layer.name]
        legend = ", ".join(f"{v} = {k}" for k, v in letters.items())
        return "\n".join("".join(row) for row in grid) + f"\n({legend})"


def _compatible(b: Block, o: Block) -> bool:
    """Two blocks of a layer on one array can run in one VMM when they share no column and
    either share no row or read the same inputs on the same rows (a column split)."""
    cols_apart = b.col + b.cols <= o.col or o.col + o.cols <= b.col
    rows_apart = b.row + b.rows <= o.row or o.row + o.rows <= b.row
    same_inputs = (b.row, b.in0, b.rows) == (o.row, o.in0, o.rows)
    return cols_apart and (rows_apart or same_inputs)


def _passes(layer: MappedLayer) -> list[Pass]:
    """Group a layer's blocks per tile into VMMs (:func:`_compatible` blocks)."""
    out: list[Pass] = []
    for b in layer.blocks:
        for p in out:
            if p.tile == b.tile and all(_compatible(b, o) for o in p.blocks):
                p.blocks.append(b)
                break
        else:
            out.append(Pass(layer.name, b.tile, [b]))
    return out


def _cost(cfg: ChipConfig, layers: list[MappedLayer], passes: dict[str, list[Pass]]) -> dict[str, float]:
    cycles = hops = 0.0
    for layer in layers:
        per_vmm = vmm_cycles(cfg, layer.mode)
        for p in passes[layer.name]:
            cycles += layer.calls_per_sample * per_vmm
            # inputs out and outputs back: one flit per row and per column over the XY route
            flits = sum(b.rows + b.cols for b in p.blocks)
            hops += layer.calls_per_sample * flits * tile_hops(p.tile, cfg.array.tiles)
    arrays = len({b.tile for layer in layers for b in layer.blocks})
    return {"arrays": arrays, "cycles": cycles, "hops": hops}


def _usable(a) -> str:
    """The area placement may fill, for messages: ``rows x cols`` less the spare lines."""
    spares = f" (less {a.spare_rows} spare rows, {a.spare_cols} spare columns)" if a.spare_rows or a.spare_cols else ""
    return f"{a.usable_rows}x{a.usable_cols}{spares}"


def _pack(cfg: ChipConfig, layers: list[MappedLayer], per_layer: bool) -> list[tuple[Block, int, int, int]] | str:
    """Skyline packing; returns (block, tile, row, col) or the reason it does not fit.

    Packing goes on past the chip's last array, so that the message can say how many
    arrays the model needs with this strategy and which layer is the first left out."""
    a = cfg.array
    arrays: list[_Skyline] = []
    out = []
    groups = [[layer] for layer in layers] if per_layer else [layers]
    for group in groups:
        first_array = len(arrays)
        blocks = sorted((b for layer in group for b in layer.blocks), key=lambda b: (-b.rows, -b.cols, b.layer, b.index))
        for b in blocks:
            spot = None
            for t in range(first_array if per_layer else 0, len(arrays)):
                pos = arrays[t].find(b.cols, b.rows)
                if pos is not None:
                    spot = (t, pos)
                    break
            if spot is None:
                arrays.append(_Skyline(a.usable_cols, a.usable_rows))
                # an empty array holds any block: the mapper cuts blocks to the usable area
                spot = (len(arrays) - 1, cast(tuple[int, int], arrays[-1].find(b.cols, b.rows)))
            t, (x, y) = spot
            arrays[t].add(x, y, b.cols, b.rows)
            out.append((b, t, y, x))
    if len(arrays) <= a.tiles:
        return out
    order = [layer.name for layer in layers]
    first = min((b for b, t, _, _ in out if t >= a.tiles), key=lambda b: order.index(b.layer))
    how = "one layer per array" if per_layer else "skyline packing"
    return (f"the model does not fit: with {how} it needs {len(arrays)} arrays of {_usable(a)}, the chip "
            f"has {a.tiles} ({len(arrays) - a.tiles} short); layer {first.layer!r} is the first left without "
            f"room (block {first.index}, {first.rows}x{first.cols})")


def place(layers: list[MappedLayer], cfg: ChipConfig, strategy: str = "auto") -> Placement:
    """Place the blocks of ``layers`` (in place: sets ``tile``, ``row``, ``col`` of each)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"placement strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    for layer in layers:
        for b in layer.blocks:
            if b.rows > cfg.array.usable_rows or b.cols > cfg.array.usable_cols:
                raise PlacementError(f"layer {layer.name!r}: block {b.index} is {b.rows}x{b.cols}, larger than "
                                     f"the {_usable(cfg.array)} array")
    candidates = ["layer_per_array", "skyline"] if strategy == "auto" else [strategy]
    results, errors = {}, []
    for name in candidates:
        packed = _pack(cfg, layers, per_layer=(name == "layer_per_array"))
        if isinstance(packed, str):
            errors.append(packed)
            continue
        for b, t, r, c in packed:
            b.tile, b.row, b.col = t, r, c
        passes = {layer.name: _passes(layer) for layer in layers}
        results[name] = (packed, passes, _cost(cfg, layers, passes))
    if not results:
        raise PlacementError(errors[-1])
    ref = results.get("layer_per_array", next(iter(results.values())))[2]

    def score(cost):
        return (cost["arrays"] / cfg.array.tiles + cost["cycles"] / max(ref["cycles"], 1)
                + 0.1 * cost["hops"] / max(ref["hops"], 1))

    best = min(results, key=lambda k: (score(results[k][2]), k != "skyline"))
    packed, passes, cost = results[best]
    for b, t, r, c in packed:                   # the last candidate tried may not be the best
        b.tile, b.row, b.col = t, r, c
    cost = dict(cost, score=score(cost))
    return Placement(cfg, best, layers, passes, cost)


def placed(layers: list[MappedLayer], cfg: ChipConfig, strategy: str) -> Placement:
    """The :class:`Placement` of blocks that already carry their positions (a saved
    deployment): checks that every block lies inside an array of ``cfg`` (off its spare
    lines) and that no two
    blocks overlap, then derives the passes and the cost as :func:`place` does."""
    a = cfg.array
    used: dict[int, np.ndarray] = {}
    for layer in layers:
        for b in layer.blocks:
            if not (0 <= b.tile < a.tiles and 0 <= b.row and b.row + b.rows <= a.usable_rows
                    and 0 <= b.col and b.col + b.cols <= a.usable_cols):
                raise PlacementError(f"layer {layer.name!r}: block {b.index} at tile {b.tile}, ({b.row}, {b.col}) "
                                     f"size {b.rows}x{b.cols} lies outside the chip's {a.tiles} arrays of {_usable(a)}")
            grid = used.setdefault(b.tile, np.zeros((a.rows, a.cols), dtype=bool))
            if grid[b.row:b.row + b.rows, b.col:b.col + b.cols].any():
                raise PlacementError(f"layer {layer.name!r}: block {b.index} overlaps another block on tile {b.tile}")
            grid[b.row:b.row + b.rows, b.col:b.col + b.cols] = True
    passes = {layer.name: _passes(layer) for layer in layers}
    return Placement(cfg, strategy, layers, passes, _cost(cfg, layers, passes))
