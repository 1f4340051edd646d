"""Where things sit on the SoC's mesh: node 0 is the sequencer (with the activation buffer),
tile ``t`` is node ``t + 1``; nodes fill a ``width x height`` grid row by row. The RTL mesh
(:mod:`cimstack.rtl.noc`) and the placer's cost model both use this."""
from __future__ import annotations

import math

__all__ = ["mesh_shape", "node_xy", "tile_hops"]


def mesh_shape(nodes: int) -> tuple[int, int]:
    """(width, height) of the squarest mesh with at least ``nodes`` routers."""
    width = math.ceil(math.sqrt(nodes))
    return width, math.ceil(nodes / width)


def node_xy(node: int, nodes: int) -> tuple[int, int]:
    width, _ = mesh_shape(nodes)
    return node % width, node // width


def tile_hops(tile: int, tiles: int) -> int:
    """Router hops (XY routing) between the sequencer and tile ``tile`` of a ``tiles``-tile chip."""
    x, y = node_xy(tile + 1, tiles + 1)
    return x + y
