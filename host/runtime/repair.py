"""Spare-line repair: cells that fail write-verify are taken out of use by moving their word
line or column onto a spare one.

A tile's ``array.spare_rows`` last word lines and ``array.spare_cols`` last logical columns
are held back from placement (:attr:`cimstack.chip.config.ArrayConfig.usable_rows`). After
write-verify, every cell that ended out of tolerance (stuck, or out of pulses) and lies under
a placed block is a fault. Repair takes the line (row or column) with the most faults in use,
moves it onto a free spare and programs the spare's cells; a spare whose own cells fail is
repaired the same way, by the next spare. It stops when no fault is in use or the spares of
the kinds that would help run out; what is left in use is reported, never dropped.

A move is a permutation of the tile's lines, kept per tile by the deployment
(:meth:`cimstack.Deployment.line_maps`): ``rows[i]`` is the physical word line that carries
placement row ``i`` (its input is routed there, the line it left gets input 0, which
contributes nothing), ``cols[j]`` the physical column read for placement column ``j``. The
arrays and the gateware are unchanged: the host routes inputs and outputs.

Choosing lines is the redundancy-allocation problem of memory repair (NP-complete in
general); the greedy rule, the line with the most faults first (among equals the one whose
faults cost most: error times the slice's significance), is the usual heuristic and takes
one spare per move.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["CellFault", "LineRepair", "pick_line", "identity_maps", "check_maps"]


@dataclass
class CellFault:
    """One cell that ended write-verify out of tolerance (physical coordinates)."""

    tile: int
    row: int
    unit: int
    cell: int
    layer: str
    status: str               # "failed" (out of pulses while moving) or "stuck" (did not move)
    error: int                # final verify error, state LSBs
    on_spare: bool = False    # found while programming a spare line
    repaired: bool = False    # its line went to a spare: the cell no longer takes part

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"tile {self.tile} row {self.row} unit {self.unit} cell {self.cell} "
                f"({self.layer}, {self.status}, error {self.error:+d})")


@dataclass
class LineRepair:
    """One placement row or column moved onto a spare line."""

    tile: int
    kind: str                 # "row" or "col"
    line: int                 # placement row / logical column
    old: int                  # the physical line it left
    spare: int                # the physical spare line it now uses
    faults: int               # faulty cells in use that the move took out of use
    cells: int = 0            # cells programmed on the spare
    new_faults: int = 0       # of those, cells that failed in turn

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        what = "row" if self.kind == "row" else "column"
        return (f"tile {self.tile}: {what} {self.line} moved from line {self.old} to spare {self.spare} "
                f"({self.faults} faulty cells out of use, {self.cells} cells programmed, {self.new_faults} failed)")


def identity_maps(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(rows, dtype=np.int64), np.arange(cols, dtype=np.int64)


def pick_line(hits: np.ndarray, free_rows: int, free_cols: int) -> tuple[str, int] | None:
    """The physical line to move next: ``hits`` (rows, cols) weighs each faulty position in
    use (0 where there is none; the deployment uses error times slice significance).

    A row with more faulty positions than there are free spare columns can only be mended as
    a row (and the other way round), so such a line goes first. Otherwise the line with the
    most faulty positions; among those the costliest (largest total weight); on a tie the
    line with fewer positions (cheaper to program)."""
    hits = np.asarray(hits, dtype=np.float64)
    count = {"row": (hits > 0).sum(axis=1), "col": (hits > 0).sum(axis=0)}
    weight = {"row": hits.sum(axis=1), "col": hits.sum(axis=0)}
    free = {"row": free_rows, "col": free_cols}
    other = {"row": "col", "col": "row"}
    length = {"row": hits.shape[1], "col": hits.shape[0]}
    must, options = [], []
    for kind in ("row", "col"):
        if not free[kind]:
            continue
        for i in np.nonzero(count[kind] > free[other[kind]])[0]:
            must.append((int(count[kind][i]), float(weight[kind][i]), kind, int(i)))
        if count[kind].max(initial=0):
            best = max(range(len(count[kind])), key=lambda i: (count[kind][i], weight[kind][i]))
            options.append((int(count[kind][best]), float(weight[kind][best]), -length[kind], kind, best))
    if must:
        return max(must)[2:]
    if not options:
        return None
    return max(options)[3:]


def check_maps(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int, usable_rows: int,
               usable_cols: int) -> str | None:
    """Why a pair of line maps is not valid for a tile (None when it is): each must be a
    permutation, and only spare lines may take the place of a placement line."""
    for name, m, n, usable in (("row", rows, n_rows, usable_rows), ("column", cols, n_cols, usable_cols)):
        m = np.asarray(m)
        if m.shape != (n,) or not np.array_equal(np.sort(m), np.arange(n)):
            return f"the {name} map is not a permutation of {n} lines"
        moved = np.nonzero(m != np.arange(n))[0]
        if len(moved) and not all(i >= usable or m[i] >= usable for i in moved):
            return f"the {name} map swaps two placement lines (only spares may replace one)"
    return None
