"""Golden model of the write-verify controller: the incremental step pulse programming (ISPP)
loop the on-chip controller runs, cell by cell, and the checks the hardware applies to a run.

Two forms of the same loop: :func:`ispp` over read and pulse callbacks (the device backend runs
it host-driven over the link), and :func:`ispp_cells` over a tile's state arrays (the golden
model's: bit for bit the same outcome, 60 to 70 times faster).

Why the fast form still walks the cells in order: the controller's verify reads draw from
one generator (:data:`~cimstack.chip.prng.VERIFY_STREAM`) and the pulses from the tile's
update generator, each stepped once per read or pulse, in job order. A cell's draws thus start
where the previous cell's ended, which depends on how many pulses every earlier cell took, and
that in turn on the draws: the stream offsets form a chain no cell can skip ahead of. Stepping
all cells together at guessed offsets and repairing the wrong guesses does not pay: a cell's
pulse count changes with its offset for about a third of cells (random targets, default
chip), so a guess is right for a few cells at a time. :func:`ispp_cells` therefore does all
that is not the chain in NumPy (the draws of both generators, a block at a time over parallel
lanes jumped apart; gathering and scattering the cells; the results) and runs the chain itself
over plain integers with the pulse response inlined: about 0.3 us per pulse.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cimstack.chip import prng
from cimstack.chip.config import NOISE_FRAC_BITS, ChipConfig
from cimstack.chip.enums import Polarity, WriteVerifyStatus
from cimstack.errors import InputRangeError

__all__ = ["WriteVerifyJob", "WriteVerifyResult", "check_write_verify", "check_write_verify_cells", "ispp",
           "ispp_cells", "xorshift32_advance"]


@dataclass(frozen=True)
class WriteVerifyJob:
    """One cell to program: target state (state LSBs) within ``tol``."""

    row: int
    group: int
    lane: int
    cell: int
    target: int
    tol: int


@dataclass(frozen=True)
class WriteVerifyResult:
    status: WriteVerifyStatus        # CONVERGED, FAILED or STUCK
    pulses: int
    error: int           # last read minus target, saturated to 16 bits


def _check_run(cfg: ChipConfig, tile: int, max_pulses: int, amp_start: int, amp_step: int, amp_max: int) -> None:
    amax = cfg.device.pulse_max_amplitude
    if not 0 <= tile < cfg.array.tiles:
        raise InputRangeError(f"write-verify tile {tile} outside 0..{cfg.array.tiles - 1}")
    if not (1 <= amp_start <= amp_max <= amax and 0 <= amp_step <= 255):
        raise InputRangeError(f"write-verify amplitudes start {amp_start}, step {amp_step}, max {amp_max}: "
                              f"need 1 <= start <= max <= device.pulse_max_amplitude = {amax}, step 0..255")
    if not 0 <= max_pulses <= 1023:
        raise InputRangeError(f"write-verify pulse budget {max_pulses} outside 0..1023")


def _bad_job(cfg: ChipConfig, j: WriteVerifyJob) -> InputRangeError:
    a, dp = cfg.array, cfg.datapath
    return InputRangeError(f"write-verify job {j} outside the tile (rows {a.rows}, groups {dp.groups}, "
                           f"lanes {a.mac_lanes}, cells {dp.cells_per_unit}, target < {1 << dp.state_bits}, tol <= 255)")


def check_write_verify(cfg: ChipConfig, tile: int, jobs: Iterable[WriteVerifyJob], max_pulses: int,
                       amp_start: int, amp_step: int, amp_max: int) -> None:
    """Reject a write-verify run the hardware would not execute as asked."""
    _check_run(cfg, tile, max_pulses, amp_start, amp_step, amp_max)
    a, dp = cfg.array, cfg.datapath
    for j in jobs:
        if not (0 <= j.row < a.rows and 0 <= j.group < dp.groups and 0 <= j.lane < a.mac_lanes
                and 0 <= j.cell < dp.cells_per_unit and 0 <= j.target < 1 << dp.state_bits
                and 0 <= j.tol <= 255):
            raise _bad_job(cfg, j)


def check_write_verify_cells(cfg: ChipConfig, tile: int, row: npt.NDArray[np.int64], unit: npt.NDArray[np.int64],
                             cell: npt.NDArray[np.int64], target: npt.NDArray[np.int64], tol: npt.NDArray[np.int64],
                             max_pulses: int, amp_start: int, amp_step: int, amp_max: int) -> None:
    """:func:`check_write_verify` for jobs given as equal-length int64 arrays, ``unit`` being
    ``group * mac_lanes + lane``; the same checks and messages."""
    _check_run(cfg, tile, max_pulses, amp_start, amp_step, amp_max)
    if not len(row) == len(unit) == len(cell) == len(target) == len(tol):
        raise InputRangeError(f"write-verify job arrays of unequal lengths {len(row)}, {len(unit)}, {len(cell)}, "
                              f"{len(target)}, {len(tol)}")
    a, dp = cfg.array, cfg.datapath
    ok = ((row >= 0) & (row < a.rows) & (unit >= 0) & (unit < dp.groups * a.mac_lanes) & (cell >= 0)
          & (cell < dp.cells_per_unit) & (target >= 0) & (target < 1 << dp.state_bits) & (tol >= 0) & (tol <= 255))
    if not ok.all():
        i = int(np.argmin(ok))
        u, lanes = int(unit[i]), a.mac_lanes
        raise _bad_job(cfg, WriteVerifyJob(int(row[i]), u // lanes, u % lanes, int(cell[i]), int(target[i]), int(tol[i])))


def ispp(jobs: Iterable[WriteVerifyJob], read: Callable[[WriteVerifyJob], int],
         pulse: Callable[[WriteVerifyJob, Polarity, int], object], max_pulses: int, amp_start: int,
         amp_step: int, amp_max: int) -> list[WriteVerifyResult]:
    """The write-verify algorithm of the on-chip controller, cell by cell, over two callbacks:
    ``read(job) -> state`` (a noisy verify read) and ``pulse(job, polarity, amplitude)``.
    The device backend runs it host-driven over the link's single-cell registers; the golden
    model runs the same algorithm as :func:`ispp_cells`."""
    results: list[WriteVerifyResult] = []
    for j in jobs:
        first = r = read(j)
        pulses, amp, last = 0, amp_start, None
        while True:
            err = r - j.target
            if abs(err) <= j.tol:
                status = WriteVerifyStatus.CONVERGED
                break
            if pulses >= max_pulses:
                status = WriteVerifyStatus.STUCK if abs(r - first) <= j.tol else WriteVerifyStatus.FAILED
                break
            polarity = Polarity.SET if err < 0 else Polarity.RESET
            amp = min(amp + amp_step, amp_max) if polarity == last else amp_start
            pulse(j, polarity, amp)
            pulses, last = pulses + 1, polarity
            r = read(j)
        results.append(WriteVerifyResult(status, pulses, int(np.clip(err, -32768, 32767))))
    return results


# -- xorshift32 jumped ahead -----------------------------------------------------------------
# xorshift32 is linear over GF(2): n steps of a state are a 32x32 bit matrix applied to it. A
# matrix is kept as byte tables T (4, 256): T[j, v] is the image of the state v << 8j, so the
# image of x is the XOR of the tables of its four bytes. _POWERS[k] is 2**k steps.

_POWERS: list[npt.NDArray[np.uint32]] = []
_BYTE_BITS = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(bool)     # (256, 8)


def _tables(cols: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """Byte tables of the matrix whose column i (the image of 1 << i) is ``cols[i]``."""
    picked = np.where(_BYTE_BITS[None], cols.reshape(4, 1, 8), np.uint32(0))     # (4, 256, 8)
    return np.bitwise_xor.reduce(picked, axis=2).astype(np.uint32)


def _apply(t: npt.NDArray[np.uint32], x: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    return t[0, x & 0xFF] ^ t[1, (x >> 8) & 0xFF] ^ t[2, (x >> 16) & 0xFF] ^ t[3, x >> 24]


def _power(k: int) -> npt.NDArray[np.uint32]:
    """Byte tables of 2**k steps."""
    if not _POWERS:
        _POWERS.append(_tables(prng.xorshift32(np.array([1 << i for i in range(32)], dtype=np.uint32))))
    while len(_POWERS) <= k:
        t = _POWERS[-1]
        _POWERS.append(_tables(_apply(t, _apply(t, np.array([1 << i for i in range(32)], dtype=np.uint32)))))
    return _POWERS[k]


def xorshift32_advance(x: npt.ArrayLike, n: int) -> npt.NDArray[np.uint32]:
    """``n`` steps of every generator in ``x`` (uint32), in O(log n): equal to ``n`` calls of
    :func:`cimstack.chip.prng.xorshift32`."""
    y = np.asarray(x, dtype=np.uint32).copy()
    k = 0
    while n >> k:
        if (n >> k) & 1:
            y = _apply(_power(k), y)
        k += 1
    return y


_BATCH = 1 << 14          # jobs per batch of ispp_cells


class _Draws:
    """The values of one generator's draws from ``state`` on, made a block at a time:
    ``values[k]`` is ``round_shift(z * q, frac_bits)`` of its (k+1)-th step. A block is the
    states of 2**8 lanes started 2**m steps apart (jumped there) and stepped 2**m times each
    (the block-jumped stepping of :func:`cimstack.chip.prng.xorshift32_states`), laid end to end."""

    LANES_LOG2 = 8

    def __init__(self, state: int, q: int, frac_bits: int):
        self.state, self.q, self.frac_bits = state, q, frac_bits
        self.values: list[int] = []

    def extend(self, n: int) -> None:
        """At least ``n`` more values."""
        if self.q == 0:
            self.values.extend([0] * n)
            return
        m = max(0, (n - 1) >> self.LANES_LOG2).bit_length()          # 2**m steps a lane
        starts = np.array([self.state], dtype=np.uint32)
        for k in range(m, m + self.LANES_LOG2):
            starts = np.concatenate([starts, _apply(_power(k), starts)])
        states = prng.xorshift32_states(starts, 1 << m).T.reshape(-1)
        self.state = int(states[-1])
        self.values.extend(prng.round_shift(prng.gauss_from_state(states) * self.q, self.frac_bits).tolist())


def ispp_cells(cfg: ChipConfig, state: npt.NDArray[np.int64], stuck: npt.NDArray[np.int64],
               cells: npt.NDArray[np.int64], target: npt.NDArray[np.int64], tol: npt.NDArray[np.int64],
               max_pulses: int, amp_start: int, amp_step: int, amp_max: int, update_rng: int, verify_rng: int,
               ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], int, int]:
    """:func:`ispp` on a tile's arrays: the golden model's write-verify, bit for bit.

    ``state`` and ``stuck`` are the tile's cells (:class:`~cimstack.golden.tile.GoldenTile`),
    ``cells`` the flat index into them of each job's cell (a cell may come more than once: a
    later job starts where the earlier left it), ``target`` and ``tol`` the jobs' (checked
    beforehand, :func:`check_write_verify_cells`). The verify reads are
    :meth:`~cimstack.golden.soc.GoldenSoC.read_cell` (the read of ``GoldenTile.read_cell`` plus
    the noise of the verify generator, state ``verify_rng``), the pulses
    :meth:`~cimstack.golden.tile.GoldenTile.pulse` (the tile's update generator, state
    ``update_rng``, steps once per pulse, stuck or not). Updates ``state`` in place; returns
    the status, pulse count and saturated error of each job and the two generators' new states.
    """
    dp = cfg.datapath
    n = len(cells)
    uniq, slot_arr = np.unique(cells, return_inverse=True)
    cur: list[int] = np.take(state, uniq).tolist()
    flags: list[int] = np.take(stuck, uniq).tolist()
    slots: list[int] = slot_arr.reshape(-1).tolist()
    targets: list[int] = target.tolist()
    tols: list[int] = tol.tolist()

    gs = (1 << dp.state_bits) - 1
    sh = dp.state_bits + 4                             # the pulse step's fraction bits (GoldenTile.pulse)
    sh_half, nf, nf_half = 1 << (sh - 1), NOISE_FRAC_BITS, 1 << (NOISE_FRAC_BITS - 1)
    step_q, vq, cq = dp.pulse_step_q, dp.verify_noise_q, dp.c2c_noise_q
    conv, failed, stuck_st = (int(s) for s in (WriteVerifyStatus.CONVERGED, WriteVerifyStatus.FAILED,
                                               WriteVerifyStatus.STUCK))
    maxp, a0, astep, amax = max_pulses, amp_start, amp_step, amp_max
    status_out, pulses_out, error_out = [0] * n, [0] * n, [0] * n
    guess = min(maxp, 16)
    # a batch of jobs at a time, so that the draws made ahead (Python ints) stay a few MB
    for j0 in range(0, n, _BATCH):
        j1 = min(n, j0 + _BATCH)
        upd = _Draws(update_rng, cq, 0)                # z * c2c_noise_q, a pulse's
        ver = _Draws(verify_rng, vq, nf)               # the noise of a read
        zq, vn = upd.values, ver.values
        xu = xv = 0                                    # draws used in this batch: update, verify
        for j in range(j0, j1):
            if xu + maxp > len(zq):
                upd.extend(max(xu + maxp - len(zq), len(zq), (j1 - j) * guess))
            if xv + maxp + 1 > len(vn):
                ver.extend(max(xv + maxp + 1 - len(vn), len(vn), (j1 - j) * (guess + 1)))
            s = slots[j]
            g, fl, tg, tl = cur[s], flags[s], targets[j], tols[j]
            k = 0
            if fl:
                # stuck: the read is fixed (0, full scale, or the state for the unused flag 3) and
                # pulses do not move the cell, but each one still steps the update generator
                rb = 0 if fl == 1 else gs if fl == 2 else g
                first = r = rb + vn[xv]
                xv += 1
                while True:
                    err = r - tg
                    if -tl <= err <= tl:
                        st = conv
                        break
                    if k >= maxp:
                        st = stuck_st if -tl <= r - first <= tl else failed
                        break
                    k += 1
                    xu += 1
                    r = rb + vn[xv]
                    xv += 1
            else:
                first = r = g + vn[xv]
                xv += 1
                a, last = a0, -1
                while True:
                    err = r - tg
                    if -tl <= err <= tl:
                        st = conv
                        break
                    if k >= maxp:
                        st = stuck_st if -tl <= r - first <= tl else failed
                        break
                    if err < 0:                            # SET, towards full scale
                        if last == 0:
                            a = a + astep if a + astep < amax else amax
                        else:
                            a, last = a0, 0
                        d = (a * step_q * (gs + 1 - g) + sh_half) >> sh
                        d += (d * zq[xu] + nf_half) >> nf
                        g += d
                    else:                                  # RESET, towards 0
                        if last == 1:
                            a = a + astep if a + astep < amax else amax
                        else:
                            a, last = a0, 1
                        d = (a * step_q * (g + 1) + sh_half) >> sh
                        d += (d * zq[xu] + nf_half) >> nf
                        g -= d
                    if g < 0:
                        g = 0
                    elif g > gs:
                        g = gs
                    k += 1
                    xu += 1
                    r = g + vn[xv]
                    xv += 1
                cur[s] = g
            status_out[j], pulses_out[j] = st, k
            error_out[j] = -32768 if err < -32768 else 32767 if err > 32767 else err
        update_rng = int(xorshift32_advance(update_rng, xu)[()])
        verify_rng = int(xorshift32_advance(verify_rng, xv)[()])
    np.put(state, uniq, cur)
    return (np.array(status_out, dtype=np.int64), np.array(pulses_out, dtype=np.int64),
            np.array(error_out, dtype=np.int64), update_rng, verify_rng)
