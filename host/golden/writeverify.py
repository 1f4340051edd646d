"""Golden model of the write-verify controller: the incremental step pulse programming (ISPP)
loop the on-chip controller runs, cell by cell, and the checks the hardware applies to a run."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from cimstack.chip.config import ChipConfig
from cimstack.chip.enums import Polarity, WriteVerifyStatus
from cimstack.errors import InputRangeError

__all__ = ["WriteVerifyJob", "WriteVerifyResult", "check_write_verify", "ispp"]


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


def check_write_verify(cfg: ChipConfig, tile: int, jobs: Iterable[WriteVerifyJob], max_pulses: int,
                       amp_start: int, amp_step: int, amp_max: int) -> None:
    """Reject a write-verify run the hardware would not execute as asked."""
    a, dp, amax = cfg.array, cfg.datapath, cfg.device.pulse_max_amplitude
    if not 0 <= tile < a.tiles:
        raise InputRangeError(f"write-verify tile {tile} outside 0..{a.tiles - 1}")
    if not (1 <= amp_start <= amp_max <= amax and 0 <= amp_step <= 255):
        raise InputRangeError(f"write-verify amplitudes start {amp_start}, step {amp_step}, max {amp_max}: "
                              f"need 1 <= start <= max <= device.pulse_max_amplitude = {amax}, step 0..255")
    if not 0 <= max_pulses <= 1023:
        raise InputRangeError(f"write-verify pulse budget {max_pulses} outside 0..1023")
    for j in jobs:
        if not (0 <= j.row < a.rows and 0 <= j.group < dp.groups and 0 <= j.lane < a.mac_lanes
                and 0 <= j.cell < dp.cells_per_unit and 0 <= j.target < 1 << dp.state_bits
                and 0 <= j.tol <= 255):
            raise InputRangeError(f"write-verify job {j} outside the tile (rows {a.rows}, groups {dp.groups}, "
                                  f"lanes {a.mac_lanes}, cells {dp.cells_per_unit}, target < {1 << dp.state_bits}, tol <= 255)")


def ispp(jobs: Iterable[WriteVerifyJob], read: Callable[[WriteVerifyJob], int],
         pulse: Callable[[WriteVerifyJob, Polarity, int], object], max_pulses: int, amp_start: int,
         amp_step: int, amp_max: int) -> list[WriteVerifyResult]:
    """The write-verify algorithm of the on-chip controller, cell by cell, over two callbacks:
    ``read(job) -> state`` (a noisy verify read) and ``pulse(job, polarity, amplitude)``.
    :meth:`GoldenSoC.write_verify` runs it on the golden tiles; the device backend runs it
    host-driven over the link's single-cell registers."""
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
