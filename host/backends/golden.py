"""The golden backend: the bit-exact NumPy model of the SoC (:class:`cimstack.golden.GoldenSoC`)."""
from __future__ import annotations

from typing import cast

import numpy as np
import torch

from cimstack.backends.base import (
    _CHUNK,
    Backend,
    CellJobs,
    WriteVerifyParams,
    _cell_args,
    _neutral_post,
    fabricate,
)
from cimstack.chip.config import ChipConfig
from cimstack.chip.datapath import check_adc_registers
from cimstack.chip.enums import Polarity
from cimstack.golden.soc import GoldenSoC
from cimstack.golden.tile import Pulse

__all__ = ['GoldenBackend']


class GoldenBackend(Backend):
    """The bit-exact integer model."""

    name = "golden"
    bit_exact = True

    def __init__(self, cfg: ChipConfig):
        super().__init__(cfg)
        self.soc = GoldenSoC(cfg)

    def erase(self, tiles, seed: int) -> None:
        for t in tiles:
            self._check_tile(t)
            g = self.soc.tiles[t]
            g.set_state(np.zeros_like(g.state), fabricate(self.cfg, seed, t))
        self.soc.reseed(seed)

    def reseed_noise(self, seed: int) -> None:
        self.soc.reseed(seed)

    def configure_tile(self, tile: int, adc_gain: int, adc_offset: int, post_scale: int) -> None:
        self.set_adc(tile, adc_gain, adc_offset)
        g = self.soc.tiles[tile]
        g.relu = False
        g.set_post(*_neutral_post(self.cfg, post_scale))

    def set_adc(self, tile: int, adc_gain: int, adc_offset: int) -> None:
        self._check_tile(tile)
        g = self.soc.tiles[tile]
        g.adc_gain, g.adc_offset = check_adc_registers(self.cfg, adc_gain, adc_offset)

    def write_verify(self, tile: int, jobs: CellJobs, params: WriteVerifyParams = WriteVerifyParams()):
        p = params.resolved(self.cfg)
        assert p.amp_max is not None                # resolved() fills it in
        # the jobs' arrays as they are (GoldenSoC.write_verify_cells): no WriteVerifyJob per cell
        return self.soc.write_verify_cells(tile, jobs.row, jobs.unit, jobs.cell, jobs.target, jobs.tol, p.max_pulses,
                                           p.amp_start, p.amp_step, p.amp_max)

    def pulse(self, tile, row, unit, cell, polarity, amplitude=1):
        self._check_tile(tile)
        g = self.soc.tiles[tile]
        args = zip(*_cell_args(self.cfg, row, unit, cell, polarity, amplitude))
        # the polarity goes in as the int it is: GoldenTile.pulse rejects one that is not a Polarity
        return np.array([g.pulse(Pulse(r, u, c, cast(Polarity, pol), amp))
                         for r, u, c, pol, amp in (map(int, a) for a in args)], dtype=np.int64)

    def read_cells(self, tile, row, unit, cell):
        self._check_tile(tile)
        return np.array([self.soc.read_cell(tile, *map(int, a)) for a in zip(*_cell_args(self.cfg, row, unit, cell))],
                        dtype=np.int64)

    def vmm(self, tile, x, mode=None):
        self._check_tile(tile)
        x = np.asarray(x, dtype=np.int64)
        out = [self.soc.tiles[tile].vmm(x[i:i + _CHUNK], mode) for i in range(0, len(x), _CHUNK)]
        return torch.as_tensor(np.concatenate(out) if out else np.zeros((0, self.cfg.array.cols), np.int64),
                               dtype=torch.float64)
