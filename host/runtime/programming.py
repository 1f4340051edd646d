"""Programming a deployment onto a chip: write-verify of every placed cell, spare-line repair
of the cells that fail (the primitives are in :mod:`cimstack.runtime.repair`), and refresh of
cells that drifted. :meth:`cimstack.Deployment.program`, ``check_cells`` and ``refresh``
delegate here.

Every function takes the deployment (:class:`cimstack.runtime.deployment.Deployment`) as its
first argument and changes only what programming owns of it: the line maps the repairs move
(``row_map``/``col_map``), the cached cell targets that depend on them, the backend it last
programmed, and the ADC registers of its run session (:mod:`cimstack.runtime.session`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from tqdm import tqdm

from cimstack.backends import Backend, CellJobs, WriteVerifyParams
from cimstack.chip.datapath import slice_weights
from cimstack.chip.enums import WriteVerifyStatus
from cimstack.errors import ProgrammingError
from cimstack.runtime.repair import CellFault, LineRepair, pick_line
from cimstack.runtime.session import check_backend

__all__ = ["LayerProgramStats", "ProgramReport", "program", "check_cells", "refresh", "owner", "spares_used"]


@dataclass
class LayerProgramStats:
    """Write-verify outcome of one layer's cells."""

    layer: str
    cells: int
    pulses: int
    max_pulses: int
    converged: int
    failed: int
    stuck: int
    rms_error: float          # final verify error, state LSBs (RMS over the cells)
    seconds: float
    repaired: int = 0         # of the failed and stuck cells, those a spare line took out of use

    @property
    def pulses_per_cell(self) -> float:
        return self.pulses / max(self.cells, 1)


@dataclass
class ProgramReport:
    backend: str
    layers: list[LayerProgramStats] = field(default_factory=list)
    seconds: float = 0.0
    # per layer, over its cells: write-verify target and final error (last read - target),
    # state LSBs; what the programming-error and conductance histograms are drawn from
    targets: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    errors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # every cell that ended out of tolerance (spare cells included) and the lines moved to spares
    faults: list[CellFault] = field(default_factory=list, repr=False)
    repairs: list[LineRepair] = field(default_factory=list)

    @property
    def cells(self) -> int:
        return sum(s.cells for s in self.layers)

    @property
    def failed_cells(self) -> int:
        """Cells of the first write-verify pass that ended out of tolerance."""
        return sum(s.failed + s.stuck for s in self.layers)

    @property
    def unrepaired(self) -> list[CellFault]:
        """Faulty cells still in use: the weights they hold are off by their error."""
        return [f for f in self.faults if not f.repaired]

    def table(self) -> str:
        lines = [f"write-verify on {self.backend}: {self.cells} cells in {self.seconds:.2f} s",
                 f"  {'layer':<16s} {'cells':>7s} {'pulses':>8s} {'/cell':>6s} {'max':>4s} {'conv.':>7s} "
                 f"{'failed':>6s} {'stuck':>6s} {'rms err':>8s}"]
        for s in self.layers:
            lines.append(f"  {s.layer:<16s} {s.cells:>7d} {s.pulses:>8d} {s.pulses_per_cell:>6.2f} {s.max_pulses:>4d} "
                         f"{s.converged:>7d} {s.failed:>6d} {s.stuck:>6d} {s.rms_error:>8.2f}")
        if self.repairs or self.faults:
            rows = sum(r.kind == "row" for r in self.repairs)
            lines.append(f"  spares: {rows} rows and {len(self.repairs) - rows} columns used; "
                         f"{len(self.faults) - len(self.unrepaired)} of {len(self.faults)} faulty cells taken out "
                         f"of use, {len(self.unrepaired)} left in use")
            lines += [f"    {r}" for r in self.repairs]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"backend": self.backend, "seconds": self.seconds, "cells": self.cells,
                "layers": [dict(s.__dict__, pulses_per_cell=s.pulses_per_cell) for s in self.layers],
                "repairs": [r.as_dict() for r in self.repairs], "faults": [f.as_dict() for f in self.faults],
                "unrepaired": len(self.unrepaired)}


def program(dep, backend: Backend, params: WriteVerifyParams, *, tol: int | None = None, strict: bool = False,
            progress: bool = False) -> ProgramReport:
    """Erase the tiles ``dep`` uses, set their registers and write-verify every placed cell
    with ``params``, then repair; see :meth:`cimstack.Deployment.program`."""
    check_backend(dep, backend)
    params = params.resolved(dep.cfg)
    tol = cast(int, dep._tol(tol))             # Deployment._tol: never None
    t0 = time.perf_counter()
    dep.clear_line_maps()                           # a fresh chip: lines in place
    backend.erase(dep.placement.tiles_used, dep.seed)
    dep.session(backend).configure()
    report = ProgramReport(backend.name)
    work = [(i, t) for i, layer in enumerate(dep.layers) for t in sorted({b.tile for b in layer.blocks})]
    # one write-verify call per (layer, tile), in that order, on a bit-exact backend: the chip
    # draws its verify noise in the order of the cells; a statistical one takes all the cells
    # of a tile in one call (fewer, larger calls: its parallel ISPP loop runs once per tile)
    calls = [[w] for w in work] if backend.bit_exact else \
        [[w for w in work if w[1] == t] for t in sorted({t for _, t in work})]
    bar = tqdm(total=len(work), desc="write-verify", disable=not progress, leave=False)
    outcome = {}
    for call in calls:
        t = call[0][1]
        t1 = time.perf_counter()
        parts = [dep.cell_jobs(t, dep.layers[i], tol) for i, _ in call]
        status, pulses, error = backend.write_verify(t, _concat_jobs(parts), params)
        seconds = time.perf_counter() - t1
        total, start = sum(len(j) for j in parts), 0
        for w, jobs in zip(call, parts):        # each layer's share of the call, its time pro rata
            part = slice(start, start + len(jobs))
            outcome[w] = (status[part], pulses[part], error[part], seconds * len(jobs) / max(total, 1), jobs)
            start += len(jobs)
        bar.update(len(call))
    bar.close()
    stats: dict[str, list] = {}
    for i, t in work:
        name, (status, pulses, error, seconds, jobs) = dep.layers[i].name, outcome[(i, t)]
        stats.setdefault(name, []).append((status, pulses, error, seconds, jobs.target))
        report.faults += _faults(t, jobs, status, error, name)
    _repair_all(dep, backend, report, tol, params)
    for layer in dep.layers:
        parts = stats[layer.name]
        status = np.concatenate([p[0] for p in parts])
        pulses = np.concatenate([p[1] for p in parts])
        error = np.concatenate([p[2] for p in parts]).astype(np.float64)
        report.targets[layer.name] = np.concatenate([np.asarray(p[4], dtype=np.int64) for p in parts])
        report.errors[layer.name] = error
        n_faults = len(status) - int((status == WriteVerifyStatus.CONVERGED).sum())
        repaired = n_faults - sum(not f.on_spare for f in report.unrepaired if f.layer == layer.name)
        report.layers.append(LayerProgramStats(
            layer.name, len(status), int(pulses.sum()), int(pulses.max(initial=0)),
            int((status == WriteVerifyStatus.CONVERGED).sum()), int((status == WriteVerifyStatus.FAILED).sum()), int((status == WriteVerifyStatus.STUCK).sum()),
            float(np.sqrt(np.mean(error ** 2))) if len(error) else 0.0, sum(p[3] for p in parts), repaired))
    report.seconds = time.perf_counter() - t0
    dep.backend = backend
    if strict:
        _refuse_unrepaired(dep, report, "write-verify")
    return report


def check_cells(dep, backend: Backend, tol: int | None = None) -> list[CellFault]:
    """Verify-read every cell ``dep`` uses on ``backend``; those off target by more than
    ``tol``, status ``"drifted"``; see :meth:`cimstack.Deployment.check_cells`."""
    if tol is None:
        full = (1 << dep.cfg.datapath.state_bits) - 1
        tol = dep._tol(None) + math.ceil(3 * dep.cfg.device.read_noise_sigma * full)
    tol = dep._tol(tol)
    out = []
    for t in dep.placement.tiles_used:
        used = dep._used_cells(t)
        r, u, c = np.nonzero(used)
        error = np.asarray(backend.read_cells(t, r, u, c), dtype=np.float64) - dep.cell_targets(t)[used]
        for i in np.nonzero(np.abs(error) > tol)[0]:
            out.append(CellFault(t, int(r[i]), int(u[i]), int(c[i]), owner(dep, t, int(r[i]), int(u[i])),
                                 "drifted", int(np.round(error[i]))))
    return out


def refresh(dep, backend: Backend, params: WriteVerifyParams, *, tol: int | None = None,
            strict: bool = False) -> ProgramReport:
    """Write-verify again the cells :func:`check_cells` finds out of tolerance, then repair;
    see :meth:`cimstack.Deployment.refresh`."""
    tol = cast(int, dep._tol(tol))             # Deployment._tol: never None
    params = params.resolved(dep.cfg)
    t0 = time.perf_counter()
    drifted = check_cells(dep, backend, tol)
    report = ProgramReport(backend.name)
    per_layer: dict[str, list] = {}
    for t in sorted({f.tile for f in drifted}):
        cells = [f for f in drifted if f.tile == t]
        r, u, c = (np.array([getattr(f, k) for f in cells]) for k in ("row", "unit", "cell"))
        jobs = CellJobs(r, u, c, dep.cell_targets(t)[r, u, c], np.full(len(r), tol))
        status, pulses, error = backend.write_verify(t, jobs, params)
        for f, st, n, e in zip(cells, status, pulses, error):
            per_layer.setdefault(f.layer, []).append((st, n, e))
        for f in _faults(t, jobs, status, error, None):
            f.layer = owner(dep, t, f.row, f.unit)
            report.faults.append(f)
    _repair_all(dep, backend, report, tol, params)
    for name, rows in per_layer.items():
        st, n, e = (np.array(v) for v in zip(*rows))
        report.layers.append(LayerProgramStats(
            name, len(st), int(n.sum()), int(n.max(initial=0)), int((st == WriteVerifyStatus.CONVERGED).sum()),
            int((st == WriteVerifyStatus.FAILED).sum()), int((st == WriteVerifyStatus.STUCK).sum()), float(np.sqrt(np.mean(e.astype(float) ** 2))),
            0.0, sum(f.repaired for f in report.faults if f.layer == name and not f.on_spare)))
    report.seconds = time.perf_counter() - t0
    if strict:
        _refuse_unrepaired(dep, report, "refresh")
    return report


def owner(dep, tile: int, row: int, unit: int) -> str:
    """The layer whose block holds the physical position (row, unit) of a tile ("-": none)."""
    rows, cols = dep.line_maps(tile)
    r = int(np.nonzero(rows == row)[0][0])
    c = int(np.nonzero(cols == unit // dep.cfg.datapath.slices)[0][0])
    for layer in dep.layers:
        for b in layer.blocks:
            if b.tile == tile and b.row <= r < b.row + b.rows and b.col <= c < b.col + b.cols:
                return layer.name
    return "-"


def spares_used(dep, tile: int) -> int:
    """Spare lines of a tile that hold a placement line (or a faulty line moved off one)."""
    a = dep.cfg.array
    rows, cols = dep.line_maps(tile)
    return int((rows[a.usable_rows:] != np.arange(a.usable_rows, a.rows)).sum()
               + (cols[a.usable_cols:] != np.arange(a.usable_cols, a.cols)).sum())


def _concat_jobs(parts: list[CellJobs]) -> CellJobs:
    """The cells of several job lists of one tile, as one list in their order."""
    if len(parts) == 1:
        return parts[0]
    return CellJobs(*(np.concatenate([getattr(j, k) for j in parts]) for k in ("row", "unit", "cell", "target", "tol")))


def _faults(tile: int, jobs: CellJobs, status: np.ndarray, error: np.ndarray, layer: str | None) -> list[CellFault]:
    """The cells of one write-verify call that ended out of tolerance."""
    return [CellFault(tile, int(jobs.row[i]), int(jobs.unit[i]), int(jobs.cell[i]), layer or "-",
                      "stuck" if status[i] == WriteVerifyStatus.STUCK else "failed", int(error[i]))
            for i in np.nonzero(np.asarray(status) != WriteVerifyStatus.CONVERGED)[0]]


def _repair_all(dep, backend: Backend, report: ProgramReport, tol: int, params: WriteVerifyParams) -> None:
    """Repair every tile with faults in ``report`` and mark the faults a spare took out of use."""
    a = dep.cfg.array
    tiles = sorted({f.tile for f in report.faults})
    if a.spare_rows or a.spare_cols:
        for t in tiles:
            _repair(dep, backend, t, report, tol, params)
    in_use = {t: dep._used_cells(t) for t in tiles}
    for f in report.faults:                     # out of use: on a line that a spare replaced
        f.repaired = not in_use[f.tile][f.row, f.unit, f.cell]


def _refuse_unrepaired(dep, report: ProgramReport, what: str) -> None:
    a = dep.cfg.array
    if report.unrepaired:
        left = report.unrepaired
        per_layer = {}
        for f in left:
            per_layer[f.layer] = per_layer.get(f.layer, 0) + 1
        spares = f" after using {sum(spares_used(dep, t) for t in dep.placement.tiles_used)} spare lines" \
            if a.spare_rows or a.spare_cols else \
            " (the config has no spare lines: set array.spare_rows / spare_cols)"
        exc = ProgrammingError(
            f"{what} left {len(left)} cells out of tolerance in use{spares}: "
            + ", ".join(f"{k}: {v}" for k, v in per_layer.items()) + "; first: " + "; ".join(map(str, left[:3])))
        exc.report = report                     # the per-cell account, for whoever catches it
        raise exc


def _repair(dep, backend: Backend, tile: int, report: ProgramReport, tol: int, params: WriteVerifyParams) -> None:
    """Move the lines of ``tile`` that hold faulty cells in use onto spares, programming
    each spare as it is taken (:mod:`cimstack.runtime.repair`)."""
    a, dp = dep.cfg.array, dep.cfg.datapath
    # what a faulty cell costs: its error times its slice's significance, so that with
    # too few spares the faults that bend the weights most go first
    significance = np.tile(slice_weights(dep.cfg), a.cols).astype(np.float64)      # per column unit
    damage = np.zeros((a.rows, dp.units, dp.cells_per_unit))
    for f in report.faults:
        if f.tile == tile:
            damage[f.row, f.unit, f.cell] = max(abs(f.error), 1) * significance[f.unit]
    written = dep._used_cells(tile)                      # what the first pass programmed
    written_target = dep.cell_targets(tile).copy()
    rows, cols = dep.line_maps(tile)              # spare slots still in place are free
    free = {"row": [q for q in range(a.usable_rows, a.rows) if rows[q] == q],
            "col": [q for q in range(a.usable_cols, a.cols) if cols[q] == q]}
    while True:
        hits = np.where(dep.used_lines(tile), damage.reshape(a.rows, a.cols, -1).sum(axis=2), 0.0)
        if not hits.any():
            return
        choice = pick_line(hits, len(free["row"]), len(free["col"]))
        if choice is None:
            return                                        # out of useful spares: reported as left in use
        kind, phys = choice
        rows, cols = (m.copy() for m in dep.line_maps(tile))
        m = rows if kind == "row" else cols
        line, spare_slot = int(np.nonzero(m == phys)[0][0]), free[kind].pop(0)
        m[line], m[spare_slot] = m[spare_slot], m[line]   # the faulty line goes to the unused spare slot
        dep.set_line_maps(tile, rows, cols)
        target, used = dep.cell_targets(tile), dep._used_cells(tile)
        # the spare's cells, and (with IR-drop correction, which retunes the whole tile)
        # cells whose target moved by more than the tolerance
        todo = used & (~written | (np.abs(target - written_target) > tol))
        if dep.ir_compensation:
            # the correction takes unused cells as erased: erase the line just left
            todo |= written & ~used & (written_target > tol)
        r, u, c = np.nonzero(todo)
        jobs = CellJobs(r, u, c, target[todo], np.full(len(r), tol))
        status, _, error = backend.write_verify(tile, jobs, params)
        written |= todo & used
        written &= used | (target > tol)                  # erased: counts as never written
        written_target[todo] = target[todo]
        damage[todo] = np.where(status != WriteVerifyStatus.CONVERGED, np.maximum(np.abs(error), 1), 0) * significance[u]
        new = [f for f in _faults(tile, jobs, status, error, None) if used[f.row, f.unit, f.cell]]
        for f in new:
            f.layer = owner(dep, tile, f.row, f.unit)
            f.on_spare = f.row >= a.usable_rows or f.unit // dp.slices >= a.usable_cols
        in_use = used[r, u, c]                            # a cell written again for use: its latest outcome
        again = set(zip(r[in_use].tolist(), u[in_use].tolist(), c[in_use].tolist()))
        report.faults = [f for f in report.faults if f.tile != tile or (f.row, f.unit, f.cell) not in again] + new
        faults = int((hits[phys] if kind == "row" else hits[:, phys]).astype(bool).sum())
        on_spare = (r >= a.usable_rows) | (u // dp.slices >= a.usable_cols)
        report.repairs.append(LineRepair(tile, kind, line, phys, int(m[line]), faults, int((on_spare & in_use).sum()),
                                         sum(f.on_spare for f in new)))
