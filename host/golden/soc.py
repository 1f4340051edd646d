"""Golden model of the SoC around the tiles: activation buffer, sequencer, write-verify
controller and single-cell access, bit for bit what :mod:`cimstack.rtl.soc` does."""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cimstack.chip import prng
from cimstack.chip.config import NOISE_FRAC_BITS, ChipConfig
from cimstack.chip.enums import WriteVerifyStatus
from cimstack.chip.isa import decode, mode_name
from cimstack.chip.prng import VERIFY_STREAM
from cimstack.errors import InputRangeError
from cimstack.golden.tile import GoldenTile
from cimstack.golden.writeverify import (
    WriteVerifyJob,
    WriteVerifyResult,
    check_write_verify,
    check_write_verify_cells,
    ispp_cells,
)

__all__ = ["GoldenSoC"]


def _wrap32(v: npt.ArrayLike) -> np.ndarray:
    return ((np.asarray(v, dtype=np.int64) + (1 << 31)) & 0xFFFF_FFFF) - (1 << 31)


class GoldenSoC:
    """Bit-exact model of the SoC around the tiles: activation buffer, sequencer (VMMs and programs),
    write-verify controller and single-cell access (the register semantics of
    :mod:`cimstack.chip.regmap`)."""

    def __init__(self, cfg: ChipConfig):
        self.cfg = cfg
        self.tiles = [GoldenTile(cfg, t) for t in range(cfg.array.tiles)]
        self.act = np.zeros(cfg.soc.act_words, dtype=np.int64)
        self.reseed(cfg.seed)

    def reseed(self, seed: int) -> None:
        for t in self.tiles:
            t.reseed(seed)
        self.verify_rng = np.array([prng.seed_state(seed, VERIFY_STREAM)], dtype=np.uint32)

    def vmm(self, tile: int, src: int, dst: int, accumulate: bool = False, mode: str | None = None) -> np.ndarray:
        """A single VMM (RUN unit 0): inputs act[src:src+rows] clamped to the input range of
        ``mode`` (default: the config's), outputs to act[dst:dst+cols] (stored, or added with
        32-bit wrap-around)."""
        cfg = self.cfg
        rows, cols, n = cfg.array.rows, cfg.array.cols, len(self.act)
        if not (0 <= tile < len(self.tiles) and 0 <= src <= n - rows and 0 <= dst <= n - cols):
            raise InputRangeError(f"VMM tile {tile}, src {src}, dst {dst} outside the chip")
        self.vmm_tiles(tile, 1, src, dst, accumulate, mode=mode)
        return self.act[dst:dst + cols].copy()

    def vmm_tiles(self, tile: int, count: int, src: int, dst: int, acc: bool = False,
                  split_rows: bool = False, split_cols: bool = False, mode: str | None = None) -> None:
        """The sequencer's VMM: tiles tile..tile+count-1, inputs read (all of them) before
        outputs are stored or accumulated (see :mod:`cimstack.chip.isa`)."""
        cfg = self.cfg
        rows, cols = cfg.array.rows, cfg.array.cols
        md = cfg.datapath.mode(mode)
        xs = [np.clip(self.act[src + k * rows * split_rows:][:rows], md.in_min, md.in_max) for k in range(count)]
        for k, x in enumerate(xs):
            y = self.tiles[tile + k].vmm(x, md.name)
            d = dst + k * cols * split_cols
            new = self.act[d:d + cols] + y if acc else y
            self.act[d:d + cols] = _wrap32(new)

    def run_program(self, words: list[int], iters: int = 1, in_stride: int = 0, out_stride: int = 0,
                    pc: int = 0, max_steps: int = 1_000_000) -> int:
        """Interpret a sequencer program (instruction words); returns the instructions executed."""
        it, steps = 0, 0
        while steps < max_steps:
            ins = decode(words[pc])
            g, steps = ins.args, steps + 1
            if ins.op == "HALT":
                return steps
            if ins.op == "VMM":
                self.vmm_tiles(g["tile"], g["count"], g["src"], g["dst"], bool(g["acc"]),
                               bool(g["split_rows"]), bool(g["split_cols"]), mode_name(g["mode"]))
            elif ins.op == "POST":
                for i in range(g["n"]):
                    v = prng.round_shift(int(self.act[g["src"] + i]) * g["mul"], g["shift"])
                    if g["relu"]:
                        v = max(v, 0)
                    self.act[g["dst"] + i] = min(max(v, -(1 << 31)), (1 << 31) - 1)
            elif ins.op == "COPY":
                s = g["src"] + it * in_stride * g["src_iter"]
                d = g["dst"] + it * out_stride * g["dst_iter"]
                if max(s, d) + g["n"] > len(self.act):
                    raise InputRangeError(f"COPY at instruction {pc}, iteration {it}: words {s}/{d} + {g['n']} "
                                          f"outside the {len(self.act)}-word buffer")
                for i in range(g["n"]):
                    self.act[d + i] = self.act[s + i]
            elif ins.op == "FILL":
                self.act[g["dst"]:g["dst"] + g["n"]] = g["value"]
            elif ins.op == "LOOP":
                it += 1
                if it < iters:
                    pc = g["target"]
                    continue
            pc += 1
        raise InputRangeError(f"program ran {max_steps} instructions without HALT")

    def read_cell(self, tile: int, row: int, unit: int, cell: int) -> int:
        """A verify read: the effective state plus read noise from the verify generator."""
        state = self.tiles[tile].read_cell(row, unit, cell)
        self.verify_rng = prng.xorshift32(self.verify_rng)
        z = int(prng.gauss_from_state(self.verify_rng)[0])
        return state + prng.round_shift(z * self.cfg.datapath.verify_noise_q, NOISE_FRAC_BITS)

    def write_verify(self, tile: int, jobs: list[WriteVerifyJob], max_pulses: int,
                     amp_start: int, amp_step: int, amp_max: int) -> list[WriteVerifyResult]:
        """Program each job's cell by incremental-step pulses (ISPP) with verify reads.

        Per cell: read; while |read - target| > tol and the budget lasts, pulse towards the
        target (SET below it, RESET above), the amplitude restarting at ``amp_start`` when the
        polarity changes and growing by ``amp_step`` (up to ``amp_max``) while it repeats, and
        read again. A cell out of budget is *stuck* if its last read is within ``tol`` of its
        first, else *failed*. The reads are :meth:`read_cell`'s and the pulses
        :meth:`GoldenTile.pulse`'s, in job order (:func:`~cimstack.golden.writeverify.ispp`
        over them gives the same outcome, bit for bit, more slowly).
        """
        check_write_verify(self.cfg, tile, jobs, max_pulses, amp_start, amp_step, amp_max)
        lanes = self.cfg.array.mac_lanes
        cols = np.array([(j.row, j.group * lanes + j.lane, j.cell, j.target, j.tol) for j in jobs],
                        dtype=np.int64).reshape(-1, 5).T
        status, pulses, error = self._write_verify(tile, cols[0], cols[1], cols[2], cols[3], cols[4], max_pulses,
                                                   amp_start, amp_step, amp_max)
        return [WriteVerifyResult(WriteVerifyStatus(s), p, e)
                for s, p, e in zip(status.tolist(), pulses.tolist(), error.tolist())]

    def write_verify_cells(self, tile: int, row: npt.ArrayLike, unit: npt.ArrayLike, cell: npt.ArrayLike,
                           target: npt.ArrayLike, tol: npt.ArrayLike, max_pulses: int, amp_start: int,
                           amp_step: int, amp_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`write_verify` for jobs given as parallel integer arrays (``unit`` is
        ``group * mac_lanes + lane``): the status, pulse count and error of each, as int64 arrays."""
        r, u, c, t, tl = (np.asarray(v, dtype=np.int64).reshape(-1) for v in (row, unit, cell, target, tol))
        check_write_verify_cells(self.cfg, tile, r, u, c, t, tl, max_pulses, amp_start, amp_step, amp_max)
        return self._write_verify(tile, r, u, c, t, tl, max_pulses, amp_start, amp_step, amp_max)

    def _write_verify(self, tile: int, row: npt.NDArray[np.int64], unit: npt.NDArray[np.int64],
                      cell: npt.NDArray[np.int64], target: npt.NDArray[np.int64], tol: npt.NDArray[np.int64],
                      max_pulses: int, amp_start: int, amp_step: int, amp_max: int,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g, dp = self.tiles[tile], self.cfg.datapath
        cells = (row * dp.units + unit) * dp.cells_per_unit + cell
        status, pulses, error, upd, ver = ispp_cells(self.cfg, g.state, g.stuck, cells, target, tol, max_pulses,
                                                     amp_start, amp_step, amp_max, int(g.update_rng[0]),
                                                     int(self.verify_rng[0]))
        g.update_rng = np.array([upd], dtype=np.uint32)
        self.verify_rng = np.array([ver], dtype=np.uint32)
        return status, pulses, error
