"""``cimstack.compile(model, config) -> Deployment``: a model mapped and placed on a chip, ready
to be programmed and run on any backend.

    dep = cimstack.compile(model, cfg, example=x_train[:256])
    print(dep.placement.report())
    report = dep.program(GoldenBackend(cfg))        # write-verify every placed cell
    logits = dep.run(x_test)                        # on the backend last programmed

The runtime evaluates the CIM IR on the host; every analog op goes to the arrays it was
placed on (inputs quantised to the layer's input scale, one VMM per pass, partial sums and
copies combined and dequantised digitally, then the bias); digital ops run in float64 on the
host. Identical VMM results give identical outputs, so golden and device agree bit for bit.
"""
from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

from cimstack.backends import Backend, CellJobs
from cimstack.compiler import Graph, import_model
from cimstack.chip.config import ChipConfig
from cimstack.errors import CompileError, ConfigError, InputRangeError, ProgrammingError
from cimstack.compiler.mapper import MappedLayer, calibrate, map_layer
from cimstack.chip.datapath import pulse_weights, slice_weights, weights_to_codes
from cimstack.physics.devices import level_step_us
from cimstack.physics.irdrop import compensate
from cimstack.compiler.placer import Placement, place
from cimstack.chip.regmap import WV_CONVERGED, WV_FAILED, WV_STUCK
from cimstack.runtime.repair import CellFault, LineRepair, identity_maps, pick_line
from cimstack.runtime.settings import LayerSetting, Settings

__all__ = ["compile", "Deployment", "LayerProgramStats", "ProgramReport"]


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


class Deployment:
    """A compiled model: the IR, its mapped layers and their placement on one chip config."""

    def __init__(self, cfg: ChipConfig, graph: Graph, layers: list[MappedLayer], placement: Placement,
                 seed: int, input_shape: tuple[int, ...], *, ir_compensation: bool | None = None):
        self.cfg, self.graph, self.layers, self.placement, self.seed = cfg, graph, layers, placement, seed
        self.input_shape = tuple(input_shape)         # one sample, as in the calibration batch
        self.by_name = {layer.name: layer for layer in layers}
        # post-processing passes the column sums through: scale 2**shift undoes the fixed
        # shift where the scale register is wide enough (else the shift's loss is dequantised)
        self.post_scale = min(1 << cfg.post.shift, (1 << cfg.post.scale_bits) - 1)
        # weight-mapping correction of IR drop: on by default where the wires have resistance
        self.ir_compensation = cfg.device.wire_resistance_ohm > 0 if ir_compensation is None else bool(ir_compensation)
        if self.ir_compensation and cfg.device.wire_resistance_ohm <= 0:
            raise ConfigError("ir_compensation needs device.wire_resistance_ohm > 0 (ideal wires have no IR drop)")
        self.tile_gain = {t: 1.0 for t in placement.tiles_used}     # analog gain left by the IR correction
        self._targets: dict[int, np.ndarray] = {}
        # per tile with repairs, the physical line of each placement row / column (cimstack.runtime.repair)
        self.row_map: dict[int, np.ndarray] = {}
        self.col_map: dict[int, np.ndarray] = {}
        # ADC registers this deployment last wrote, per backend and tile (weak: a backend that
        # goes away takes its entry with it, so a new one at the same address starts clean)
        self._adc_loaded: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.backend: Backend | None = None
        self.info: dict = {}          # where it came from (data set, model file), saved with it

    # -- per-layer settings --------------------------------------------------------------------
    def settings(self, **info) -> Settings:
        """The per-layer hardware settings this deployment runs with (what tuning changes)."""
        return Settings(self.cfg.name, self.cfg.datapath.config_hash,
                        {layer.name: LayerSetting(int(layer.adc_gain), int(layer.adc_offset), layer.mode,
                                                  float(layer.x_range), layer.copies) for layer in self.layers},
                        dict(info))

    def apply(self, settings: Settings) -> None:
        """Run with ``settings`` (ADC registers, input modes and ranges of every layer they name).

        Weight copies change the placement, so they must already match: compile with
        ``compile(..., settings=settings)`` to take them too.
        """
        settings.check(self.cfg)
        unknown = set(settings.layers) - set(self.by_name)
        if unknown:
            raise ConfigError(f"settings name layer(s) {', '.join(sorted(unknown))} this deployment does not have")
        for name, s in settings.layers.items():
            layer = self.by_name[name]
            if s.copies != layer.copies:
                raise ConfigError(f"layer {name}: settings ask for {s.copies} weight copies, the deployment was "
                                  f"compiled with {layer.copies}; compile with settings= to change the placement")
        for name, s in settings.layers.items():
            layer = self.by_name[name]
            layer.adc_gain, layer.adc_offset = s.adc_gain, s.adc_offset
            layer.set_inputs(self.cfg, s.x_range, s.mode)

    # -- what goes on each tile ----------------------------------------------------------------
    def line_maps(self, tile: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols): the physical word line of each placement row and the physical column
        of each placement column of ``tile`` (the identity until a repair moves a line)."""
        a = self.cfg.array
        rows, cols = identity_maps(a.rows, a.cols)
        return self.row_map.get(tile, rows), self.col_map.get(tile, cols)

    def tile_weights(self, tile: int) -> np.ndarray:
        """The integer weight matrix (rows, cols) of a tile as the cells hold it: every block
        placed on it (on the lines the repairs moved it to), 0 elsewhere."""
        return self._physical(tile, np.int64, lambda b: b.weights)

    def used_lines(self, tile: int) -> np.ndarray:
        """(rows, cols) bool: the physical positions of a tile that some block uses."""
        return self._physical(tile, bool, lambda b: True)

    def _physical(self, tile: int, dtype, value) -> np.ndarray:
        a = self.cfg.array
        logical = np.zeros((a.rows, a.cols), dtype=dtype)
        for layer in self.layers:
            for b in layer.blocks:
                if b.tile == tile:
                    logical[b.row:b.row + b.rows, b.col:b.col + b.cols] = value(b)
        rows, cols = self.line_maps(tile)
        out = np.zeros_like(logical)
        out[np.ix_(rows, cols)] = logical
        return out

    def _used_cells(self, tile: int) -> np.ndarray:
        """(rows, units, cells) bool: the cells under the blocks of a tile."""
        dp = self.cfg.datapath
        used = np.repeat(self.used_lines(tile), dp.slices, axis=1)
        return np.repeat(used[:, :, None], dp.cells_per_unit, axis=2)

    def _tol(self, tol: int | None) -> int:
        """The write-verify tolerance (state LSBs); see :meth:`cell_jobs`."""
        half = (1 << (self.cfg.cell.frac_bits - 1)) if self.cfg.cell.frac_bits else 0
        if tol is None:
            # an IR-corrected target is a conductance, not a code bin: program it closely
            tol = min(1, half - 1) if self.ir_compensation else max(half - 1, 0)
        if not 0 <= tol <= 255:
            raise ConfigError(f"write-verify tolerance {tol} outside 0..255 state LSBs")
        return tol

    def cell_jobs(self, tile: int, layer: MappedLayer, tol: int | None = None) -> CellJobs:
        """Write-verify targets of every cell under ``layer``'s blocks on ``tile``.

        A cell of code ``k`` aims at the centre of its code bin, ``k * 2**frac + 2**(frac-1)``,
        within ``tol`` (default ``2**(frac-1) - 1``): every state in the window reads code
        ``k``, and the physics emulator, whose conductance is the continuous state, sees the
        same half-level offset on both cells of a pair (it cancels). With IR-drop correction
        the targets are the corrected states (:meth:`cell_targets`) and the default ``tol``
        is 1 state LSB, since the correction is a few per cent of a cell's conductance.
        """
        dp = self.cfg.datapath
        tol = self._tol(tol)
        row_map, col_map = self.line_maps(tile)
        rows, units, cells = [], [], []
        for b in layer.blocks:
            if b.tile != tile:
                continue
            phys_cols = col_map[b.col:b.col + b.cols]
            r, u, c = np.meshgrid(row_map[b.row:b.row + b.rows],
                                  (phys_cols[:, None] * dp.slices + np.arange(dp.slices)).ravel(),
                                  np.arange(dp.cells_per_unit), indexing="ij")
            rows.append(r.ravel()), units.append(u.ravel()), cells.append(c.ravel())
        if not rows:
            return CellJobs([], [], [], [], [])
        r, u, c = (np.concatenate(v) for v in (rows, units, cells))
        target = self.cell_targets(tile)[r, u, c]
        return CellJobs(r, u, c, target, np.full_like(target, tol))

    def cell_targets(self, tile: int) -> np.ndarray:
        """Write-verify target of every cell of a tile (rows, units, cells), state LSBs.

        The centre of each cell's code bin; with IR-drop compensation, the state whose
        conductance makes the array with resistive wires behave like the uncompensated one
        times :attr:`tile_gain` (:func:`cimstack.physics.irdrop.compensate`). Cells no
        block uses stay erased (state 0) and are not moved by the correction.
        """
        if tile not in self._targets:
            cfg, dp, frac = self.cfg, self.cfg.datapath, self.cfg.cell.frac_bits
            half = (1 << (frac - 1)) if frac else 0
            pos, neg = weights_to_codes(self.tile_weights(tile), cfg)
            codes = np.stack([pos, neg], axis=-1)[..., :dp.cells_per_unit]          # (rows, units, cells)
            target = (codes << frac) + half
            used = self._used_cells(tile)
            target = np.where(used, target, 0)
            if self.ir_compensation:
                target, self.tile_gain[tile] = self._compensate(target, used)
            self._targets[tile] = target
        return self._targets[tile]

    def _compensate(self, target: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, float]:
        """IR-drop weight-mapping correction of one tile's targets (physical column order:
        the (units, cells) axes flattened is the order along the word lines)."""
        cfg, frac = self.cfg, float(1 << self.cfg.cell.frac_bits)
        d, step = cfg.device, level_step_us(cfg)
        state_max = (1 << cfg.datapath.state_bits) - 1
        rows = target.shape[0]
        g0 = d.g_min_us + target.reshape(rows, -1) / frac * step
        corr = compensate(g0, d.wire_resistance_ohm, d.wire_resistance_ohm, d.g_min_us + state_max / frac * step,
                          g_min=d.g_min_us, fixed=~used.reshape(rows, -1))
        state = np.clip(np.round((corr.g - d.g_min_us) / step * frac), 0, state_max).astype(np.int64)
        return np.where(used, state.reshape(target.shape), target), corr.gain

    # -- programming ---------------------------------------------------------------------------
    def program(self, backend: Backend, *, max_pulses: int = 100, amp_start: int = 1, amp_step: int = 1,
                amp_max: int | None = None, tol: int | None = None, strict: bool = False,
                progress: bool = False) -> ProgramReport:
        """Erase the tiles in use, set their registers and write-verify every placed cell.

        Every cell that ends out of tolerance (failed: out of pulses while moving; stuck: did
        not move) is reported in ``report.faults``. Where the config has spare lines
        (``array.spare_rows``/``spare_cols``), the rows and columns holding such cells are
        moved onto spares (:mod:`cimstack.runtime.repair`, ``report.repairs``); the faults left in use
        are ``report.unrepaired``, and with ``strict`` any of them raises
        :class:`~cimstack.errors.ProgrammingError` (its ``report`` attribute holds the report;
        the chip stays programmed as far as it got). The backend becomes the one :meth:`run` uses.
        """
        if backend.cfg != self.cfg:
            raise ConfigError(f"the backend runs config {backend.cfg.name!r}, the deployment was compiled "
                              f"for {self.cfg.name!r}")
        amp_max = self.cfg.device.pulse_max_amplitude if amp_max is None else amp_max
        wv = (max_pulses, amp_start, amp_step, amp_max)
        tol = self._tol(tol)
        t0 = time.perf_counter()
        self.row_map.clear(), self.col_map.clear(), self._targets.clear()     # a fresh chip: lines in place
        tiles = self.placement.tiles_used
        backend.erase(tiles, self.seed)
        for t in tiles:
            backend.configure_tile(t, self.cfg.adc.gain, self.cfg.adc.offset, self.post_scale)
            self._adc_loaded.setdefault(backend, {})[t] = (self.cfg.adc.gain, self.cfg.adc.offset)
        report = ProgramReport(backend.name)
        work = [(layer, t) for layer in self.layers for t in sorted({b.tile for b in layer.blocks})]
        bar = _progress(len(work), "write-verify", progress)
        stats: dict[str, list] = {}
        for layer, t in work:
            t1 = time.perf_counter()
            jobs = self.cell_jobs(t, layer, tol)
            status, pulses, error = backend.write_verify(t, jobs, *wv)
            stats.setdefault(layer.name, []).append((status, pulses, error, time.perf_counter() - t1, jobs.target))
            report.faults += _faults(t, jobs, status, error, layer.name)
            bar.update(1)
        bar.close()
        self._repair_all(backend, report, tol, wv)
        for layer in self.layers:
            parts = stats[layer.name]
            status = np.concatenate([p[0] for p in parts])
            pulses = np.concatenate([p[1] for p in parts])
            error = np.concatenate([p[2] for p in parts]).astype(np.float64)
            report.targets[layer.name] = np.concatenate([np.asarray(p[4], dtype=np.int64) for p in parts])
            report.errors[layer.name] = error
            n_faults = len(status) - int((status == WV_CONVERGED).sum())
            repaired = n_faults - sum(not f.on_spare for f in report.unrepaired if f.layer == layer.name)
            report.layers.append(LayerProgramStats(
                layer.name, len(status), int(pulses.sum()), int(pulses.max(initial=0)),
                int((status == WV_CONVERGED).sum()), int((status == WV_FAILED).sum()), int((status == WV_STUCK).sum()),
                float(np.sqrt(np.mean(error ** 2))) if len(error) else 0.0, sum(p[3] for p in parts), repaired))
        report.seconds = time.perf_counter() - t0
        self.backend = backend
        if strict:
            self._refuse_unrepaired(report, "write-verify")
        return report

    def check_cells(self, backend: Backend | None = None, tol: int | None = None) -> list[CellFault]:
        """Verify-read every cell in use (default: on the backend last programmed) and return
        those now off target (status ``"drifted"``): retention loss, read disturb, drift on a
        real array. :meth:`refresh` programs them again.

        One read per cell: the default ``tol`` is the programming tolerance plus three sigma
        of the verify read noise (``device.read_noise_sigma`` of full scale), so that a cell
        that is on target is not flagged for its noise."""
        be = self._programmed(backend)
        if tol is None:
            full = (1 << self.cfg.datapath.state_bits) - 1
            tol = self._tol(None) + math.ceil(3 * self.cfg.device.read_noise_sigma * full)
        tol = self._tol(tol)
        out = []
        for t in self.placement.tiles_used:
            used = self._used_cells(t)
            r, u, c = np.nonzero(used)
            error = np.asarray(be.read_cells(t, r, u, c), dtype=np.float64) - self.cell_targets(t)[used]
            for i in np.nonzero(np.abs(error) > tol)[0]:
                out.append(CellFault(t, int(r[i]), int(u[i]), int(c[i]), self._owner(t, int(r[i]), int(u[i])),
                                     "drifted", int(np.round(error[i]))))
        return out

    def refresh(self, backend: Backend | None = None, *, max_pulses: int = 100, amp_start: int = 1,
                amp_step: int = 1, amp_max: int | None = None, tol: int | None = None,
                strict: bool = False) -> ProgramReport:
        """Write-verify again the cells :meth:`check_cells` finds out of tolerance. Those
        that then fail are reported (``report.faults``) and repaired with the spare lines left,
        as in :meth:`program`; ``report.layers`` counts the refreshed cells per layer."""
        be = self._programmed(backend)
        tol = self._tol(tol)
        wv = (max_pulses, amp_start, amp_step, self.cfg.device.pulse_max_amplitude if amp_max is None else amp_max)
        t0 = time.perf_counter()
        drifted = self.check_cells(be, tol)
        report = ProgramReport(be.name)
        per_layer: dict[str, list] = {}
        for t in sorted({f.tile for f in drifted}):
            cells = [f for f in drifted if f.tile == t]
            r, u, c = (np.array([getattr(f, k) for f in cells]) for k in ("row", "unit", "cell"))
            jobs = CellJobs(r, u, c, self.cell_targets(t)[r, u, c], np.full(len(r), tol))
            status, pulses, error = be.write_verify(t, jobs, *wv)
            for f, st, n, e in zip(cells, status, pulses, error):
                per_layer.setdefault(f.layer, []).append((st, n, e))
            for f in _faults(t, jobs, status, error, None):
                f.layer = self._owner(t, f.row, f.unit)
                report.faults.append(f)
        self._repair_all(be, report, tol, wv)
        for name, rows in per_layer.items():
            st, n, e = (np.array(v) for v in zip(*rows))
            report.layers.append(LayerProgramStats(
                name, len(st), int(n.sum()), int(n.max(initial=0)), int((st == WV_CONVERGED).sum()),
                int((st == WV_FAILED).sum()), int((st == WV_STUCK).sum()), float(np.sqrt(np.mean(e.astype(float) ** 2))),
                0.0, sum(f.repaired for f in report.faults if f.layer == name and not f.on_spare)))
        report.seconds = time.perf_counter() - t0
        if strict:
            self._refuse_unrepaired(report, "refresh")
        return report

    def _programmed(self, backend: Backend | None) -> Backend:
        be = backend or self.backend
        if be is None:
            raise ConfigError("the deployment has not been programmed on any backend: call program(backend) first")
        return be

    def _repair_all(self, backend: Backend, report: ProgramReport, tol: int, wv: tuple) -> None:
        """Repair every tile with faults in ``report`` and mark the faults a spare took out of use."""
        a = self.cfg.array
        tiles = sorted({f.tile for f in report.faults})
        if a.spare_rows or a.spare_cols:
            for t in tiles:
                self._repair(backend, t, report, tol, wv)
        in_use = {t: self._used_cells(t) for t in tiles}
        for f in report.faults:                     # out of use: on a line that a spare replaced
            f.repaired = not in_use[f.tile][f.row, f.unit, f.cell]

    def _refuse_unrepaired(self, report: ProgramReport, what: str) -> None:
        a = self.cfg.array
        if report.unrepaired:
            left = report.unrepaired
            per_layer = {}
            for f in left:
                per_layer[f.layer] = per_layer.get(f.layer, 0) + 1
            spares = f" after using {sum(self._spares_used(t) for t in self.placement.tiles_used)} spare lines" \
                if a.spare_rows or a.spare_cols else \
                " (the config has no spare lines: set array.spare_rows / spare_cols)"
            exc = ProgrammingError(
                f"{what} left {len(left)} cells out of tolerance in use{spares}: "
                + ", ".join(f"{k}: {v}" for k, v in per_layer.items()) + "; first: " + "; ".join(map(str, left[:3])))
            exc.report = report                     # the per-cell account, for whoever catches it
            raise exc

    def _spares_used(self, tile: int) -> int:
        """Spare lines of a tile that hold a placement line (or a faulty line moved off one)."""
        a = self.cfg.array
        rows, cols = self.line_maps(tile)
        return int((rows[a.usable_rows:] != np.arange(a.usable_rows, a.rows)).sum()
                   + (cols[a.usable_cols:] != np.arange(a.usable_cols, a.cols)).sum())

    def _repair(self, backend: Backend, tile: int, report: ProgramReport, tol: int, wv: tuple) -> None:
        """Move the lines of ``tile`` that hold faulty cells in use onto spares, programming
        each spare as it is taken (:mod:`cimstack.runtime.repair`)."""
        a, dp = self.cfg.array, self.cfg.datapath
        # what a faulty cell costs: its error times its slice's significance, so that with
        # too few spares the faults that bend the weights most go first
        significance = np.tile(slice_weights(self.cfg), a.cols).astype(np.float64)      # per column unit
        damage = np.zeros((a.rows, dp.units, dp.cells_per_unit))
        for f in report.faults:
            if f.tile == tile:
                damage[f.row, f.unit, f.cell] = max(abs(f.error), 1) * significance[f.unit]
        written = self._used_cells(tile)                      # what the first pass programmed
        written_target = self.cell_targets(tile).copy()
        rows, cols = self.line_maps(tile)              # spare slots still in place are free
        free = {"row": [q for q in range(a.usable_rows, a.rows) if rows[q] == q],
                "col": [q for q in range(a.usable_cols, a.cols) if cols[q] == q]}
        while True:
            hits = np.where(self.used_lines(tile), damage.reshape(a.rows, a.cols, -1).sum(axis=2), 0.0)
            if not hits.any():
                return
            choice = pick_line(hits, len(free["row"]), len(free["col"]))
            if choice is None:
                return                                        # out of useful spares: reported as left in use
            kind, phys = choice
            rows, cols = (m.copy() for m in self.line_maps(tile))
            m = rows if kind == "row" else cols
            line, spare_slot = int(np.nonzero(m == phys)[0][0]), free[kind].pop(0)
            m[line], m[spare_slot] = m[spare_slot], m[line]   # the faulty line goes to the unused spare slot
            self.row_map[tile], self.col_map[tile] = rows, cols
            self._targets.pop(tile, None)
            target, used = self.cell_targets(tile), self._used_cells(tile)
            # the spare's cells, and (with IR-drop correction, which retunes the whole tile)
            # cells whose target moved by more than the tolerance
            todo = used & (~written | (np.abs(target - written_target) > tol))
            if self.ir_compensation:
                # the correction takes unused cells as erased: erase the line just left
                todo |= written & ~used & (written_target > tol)
            r, u, c = np.nonzero(todo)
            jobs = CellJobs(r, u, c, target[todo], np.full(len(r), tol))
            status, _, error = backend.write_verify(tile, jobs, *wv)
            written |= todo & used
            written &= used | (target > tol)                  # erased: counts as never written
            written_target[todo] = target[todo]
            damage[todo] = np.where(status != WV_CONVERGED, np.maximum(np.abs(error), 1), 0) * significance[u]
            new = [f for f in _faults(tile, jobs, status, error, None) if used[f.row, f.unit, f.cell]]
            for f in new:
                f.layer = self._owner(tile, f.row, f.unit)
                f.on_spare = f.row >= a.usable_rows or f.unit // dp.slices >= a.usable_cols
            in_use = used[r, u, c]                            # a cell written again for use: its latest outcome
            again = set(zip(r[in_use].tolist(), u[in_use].tolist(), c[in_use].tolist()))
            report.faults = [f for f in report.faults if f.tile != tile or (f.row, f.unit, f.cell) not in again] + new
            faults = int((hits[phys] if kind == "row" else hits[:, phys]).astype(bool).sum())
            on_spare = (r >= a.usable_rows) | (u // dp.slices >= a.usable_cols)
            report.repairs.append(LineRepair(tile, kind, line, phys, int(m[line]), faults, int((on_spare & in_use).sum()),
                                             sum(f.on_spare for f in new)))

    def _owner(self, tile: int, row: int, unit: int) -> str:
        """The layer whose block holds the physical position (row, unit) of a tile."""
        rows, cols = self.line_maps(tile)
        r = int(np.nonzero(rows == row)[0][0])
        c = int(np.nonzero(cols == unit // self.cfg.datapath.slices)[0][0])
        for layer in self.layers:
            for b in layer.blocks:
                if b.tile == tile and b.row <= r < b.row + b.rows and b.col <= c < b.col + b.cols:
                    return layer.name
        return "-"

    def save(self, path) -> None:
        """Write this deployment atomically (:mod:`cimstack.runtime.saved`; load it with
        :func:`cimstack.runtime.saved.load_deployment`)."""
        from cimstack.runtime.saved import save_deployment
        save_deployment(self, path)

    def attach(self, backend: Backend) -> None:
        """Run on a chip this deployment already programmed (in an earlier process, e.g.
        ``cimstack program`` then ``cimstack run --no-program``): set the tiles' registers and
        the noise seed as :meth:`program` does, without erasing or writing a cell. Only a
        device keeps its cells between processes; the models start erased."""
        if backend.cfg != self.cfg:
            raise ConfigError(f"the backend runs config {backend.cfg.name!r}, the deployment was compiled "
                              f"for {self.cfg.name!r}")
        if backend.name != "device":
            raise ConfigError(f"the {backend.name} backend starts erased in every process: program it "
                              f"(leave out --no-program)")
        backend.reseed_noise(self.seed)
        for t in self.placement.tiles_used:
            if self.ir_compensation:
                self.cell_targets(t)              # sets the tile's gain that the correction left
            backend.configure_tile(t, self.cfg.adc.gain, self.cfg.adc.offset, self.post_scale)
            self._adc_loaded.setdefault(backend, {})[t] = (self.cfg.adc.gain, self.cfg.adc.offset)
        self.backend = backend

    # -- inference -----------------------------------------------------------------------------
    def run(self, x, backend: Backend | None = None) -> torch.Tensor:
        """Outputs of the model for the batch ``x`` on ``backend`` (default: the one last
        programmed), float64."""
        be = self._programmed(backend)
        x = self._check_input(x)
        with torch.no_grad():
            return self.graph.evaluate(x, lambda node, x2d: self._vmm(be, node, x2d))

    def reference(self, x) -> torch.Tensor:
        """The floating-point model (the IR with exact VMMs), float64."""
        with torch.no_grad():
            return self.graph.evaluate(self._check_input(x))

    def quantised(self, x) -> torch.Tensor:
        """The model with quantised weights and inputs but ideal, noise-free, unsaturated
        VMMs: what the chip would compute with an infinitely fine ADC."""
        def vmm(node, x2d):
            layer = self.by_name[node.name]
            xq = self._quantise_inputs(layer, x2d)
            w = torch.as_tensor(layer.quantised_matrix(), dtype=torch.float64)
            return (xq @ w) * layer.x_scale * torch.as_tensor(layer.w_scale)
        with torch.no_grad():
            return self.graph.evaluate(self._check_input(x), vmm)

    def _check_input(self, x) -> torch.Tensor:
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputRangeError(f"model inputs must be numbers ({exc})") from None
        if x.is_complex():
            raise InputRangeError(f"model inputs are complex ({x.dtype}); the chip takes real numbers")
        if not x.is_floating_point():
            x = x.to(torch.float64)
        if tuple(x.shape[1:]) != self.input_shape:
            raise InputRangeError(f"inputs of shape {tuple(x.shape)}: the deployment was compiled for a batch of "
                                  f"samples of shape {self.input_shape}")
        if not bool(torch.isfinite(x).all()):
            raise InputRangeError("model inputs contain NaN or infinity")
        return x.to(torch.float64)

    def _quantise_inputs(self, layer: MappedLayer, x2d: torch.Tensor) -> torch.Tensor:
        md = self.cfg.datapath.mode(layer.mode)
        return torch.clamp(torch.round(x2d / layer.x_scale), md.in_min, md.in_max)

    def layer_vmm(self, name: str, x2d, backend: Backend | None = None) -> torch.Tensor:
        """One placed layer's product ``x2d @ M`` (no bias) on the chip, float64: inputs
        quantised to the layer's scale, every pass of its blocks run, results dequantised.
        Chip-in-the-loop training calls this from the model's own layers."""
        be = self._programmed(backend)
        if name not in self.by_name:
            raise ConfigError(f"no placed layer {name!r}; layers: {', '.join(self.by_name)}")
        layer = self.by_name[name]
        x2d = torch.as_tensor(x2d, dtype=torch.float64)
        if x2d.ndim != 2 or x2d.shape[1] != layer.in_features:
            raise InputRangeError(f"layer {name} takes (batch, {layer.in_features}) inputs, got {tuple(x2d.shape)}")
        return self._vmm(be, layer.node, x2d)

    def _vmm(self, be: Backend, node, x2d: torch.Tensor) -> torch.Tensor:
        layer = self.by_name[node.name]
        xq = self._quantise_inputs(layer, x2d).to(torch.int64).numpy()
        rows = self.cfg.array.rows
        conversions = float(pulse_weights(self.cfg, layer.mode).sum() * slice_weights(self.cfg).sum())
        y = torch.zeros((x2d.shape[0], layer.out_features), dtype=torch.float64)
        post = self.post_scale / (1 << self.cfg.post.shift)
        # every conversion's ADC offset and mean rounding error, through the shift-add and post scale
        offset = (be.rounding_bias(layer.adc_gain) + layer.adc_offset) * conversions * post
        for p in self.placement.passes[layer.name]:
            xin = np.zeros((len(xq), rows), dtype=np.int64)
            for b in p.blocks:
                xin[:, b.row:b.row + b.rows] = xq[:, b.in0:b.in0 + b.rows]
            if p.tile in self.row_map:              # repaired rows: their inputs go to the spare lines
                routed = np.zeros_like(xin)
                routed[:, self.row_map[p.tile]] = xin
                xin = routed
            self._load_adc(be, p.tile, layer)
            out = be.vmm(p.tile, xin, layer.mode) - offset
            if p.tile in self.col_map:              # repaired columns: read from the spare lines
                out = out[:, torch.as_tensor(self.col_map[p.tile])]
            # output units back to column-sum units: undo the ADC gain, the post scale/shift
            # and the analog gain the IR-drop correction left
            scale = ((1 << self.cfg.adc.gain_shift) / layer.adc_gain) / post / self.tile_gain.get(p.tile, 1.0)
            for b in p.blocks:
                y[:, b.out0:b.out0 + b.cols] += out[:, b.col:b.col + b.cols] * scale
        return y * (layer.x_scale / layer.copies) * torch.as_tensor(layer.w_scale)

    def _load_adc(self, be: Backend, tile: int, layer: MappedLayer) -> None:
        """Write the layer's ADC registers into the tile unless they are already there."""
        want = (int(layer.adc_gain), int(layer.adc_offset))
        loaded = self._adc_loaded.setdefault(be, {})
        if loaded.get(tile) != want:
            be.set_adc(tile, *want)
            loaded[tile] = want

    def accuracy(self, x, y, backend: Backend | None = None) -> float:
        """Top-1 accuracy of :meth:`run` against integer labels ``y``."""
        pred = self.run(x, backend).argmax(dim=-1)
        return float((pred == torch.as_tensor(y)).double().mean())

    def summary(self) -> str:
        lines = [f"deployment of {self.graph.name} on {self.cfg.name}: {len(self.layers)} analog layers, "
                 f"{len(self.graph.nodes) - len(self.layers)} digital ops"]
        for layer in self.layers:
            lines.append(f"  {layer.name:<16s} {layer.node.op:<6s} {layer.in_features:>4d} x {layer.out_features:<4d} "
                         f"{len(layer.blocks):>2d} block(s), input range {layer.x_range:.3g}, "
                         f"weight error {100 * layer.weight_error():.2f} %")
        return "\n".join(lines)


def _faults(tile: int, jobs: CellJobs, status: np.ndarray, error: np.ndarray, layer: str | None) -> list[CellFault]:
    """The cells of one write-verify call that ended out of tolerance."""
    return [CellFault(tile, int(jobs.row[i]), int(jobs.unit[i]), int(jobs.cell[i]), layer or "-",
                      "stuck" if status[i] == WV_STUCK else "failed", int(error[i]))
            for i in np.nonzero(np.asarray(status) != WV_CONVERGED)[0]]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def compile(model, config: ChipConfig, example=None, *, strategy: str = "auto", weight_scale: str = "per_column",
            copies: int | dict[str, int] = 1, percentile: float = 99.0, seed: int | None = None,
            settings: Settings | str | None = None, ir_compensation: bool | None = None) -> Deployment:
    """Import, quantise, tile and place ``model`` (a ``torch.nn.Module``, an ONNX model or
    file, or a CIM IR :class:`Graph`) for the chip ``config``.

    ``example``: a batch of typical inputs, used to calibrate each layer's input range (the
    ``percentile`` of |input|; 100 = the maximum; the default 99 clips the rare largest
    activations for finer steps everywhere else: +9 points for the digits ResNet on the golden
    model, none lost elsewhere) and to count VMMs per sample for the cost model. Layers trained
    with :mod:`cimstack.training` keep the input range they learned. ``copies``: weight copies per layer (an int for all, or {layer: n}).
    ``strategy``: placement (:data:`cimstack.compiler.placer.STRATEGIES`). ``seed``: the chip
    instance and noise seed used when programming (default ``config.seed``). ``settings``:
    per-layer hardware settings (:class:`~cimstack.tuning.Settings` or the path of a saved
    one, e.g. from :mod:`cimstack.tuning`), copies included. ``ir_compensation``: correct
    the weights for IR drop when programming (default: when the config's wires have resistance).
    """
    if not isinstance(config, ChipConfig):
        raise ConfigError(f"compile needs a ChipConfig, got {type(config).__name__}")
    if example is None:
        raise CompileError("compile needs example inputs (a calibration batch) to set each layer's input range")
    graph = import_model(model)
    if not graph.analog_nodes():
        raise CompileError(f"{graph.name} has no layer that maps onto the arrays (Linear, Conv, LSTM, GRU)")
    if not 0 < percentile <= 100:
        raise ConfigError(f"percentile {percentile} outside (0, 100]")
    example = torch.as_tensor(example).to(torch.float64)
    try:
        ranges, calls = calibrate(graph, example, percentile)
    except (RuntimeError, IndexError) as exc:
        raise CompileError(f"running {graph.name} on the example inputs of shape {tuple(example.shape)} failed: {exc}") from exc
    if settings is not None:
        if copies != 1:
            raise ConfigError("give weight copies either in copies= or in settings=, not both")
        if not isinstance(settings, Settings):
            settings = Settings.load(settings)
        settings.check(config)
        copies = {name: s.copies for name, s in settings.layers.items()}
    if isinstance(copies, dict):
        unknown = set(copies) - {n.name for n in graph.analog_nodes()}
        if unknown:
            raise ConfigError(f"copies names unknown layer(s) {', '.join(sorted(unknown))}")
    layers = []
    for node in graph.analog_nodes():
        n = copies.get(node.name, 1) if isinstance(copies, dict) else copies
        # a hardware-aware trained layer brings the input range it learned (cimstack.training)
        x_range = node.attrs.get("input_range") or ranges.get(node.name, 1.0)
        layer = map_layer(node, config, x_range, weight_scale=weight_scale, copies=n)
        layer.calls_per_sample = calls.get(node.name, 1.0)
        layers.append(layer)
    placement = place(layers, config, strategy)
    dep = Deployment(config, graph, layers, placement, config.seed if seed is None else seed, example.shape[1:],
                     ir_compensation=ir_compensation)
    if settings is not None:
        dep.apply(settings)
    return dep
