"""The device backend: a real or simulated SoC over a link, bit-exact with the golden backend."""
from __future__ import annotations

import numpy as np
import torch

from cimstack.backends.base import Backend, CellJobs, WriteVerifyParams, _cell_args, _neutral_post, _results, fabricate
from cimstack.chip.config import ChipConfig
from cimstack.chip.isa import mode_field
from cimstack.errors import ConfigError
from cimstack.golden.tile import GoldenTile
from cimstack.golden.writeverify import ispp
from cimstack.link.client import Device
from cimstack.link.transport import Link

__all__ = ['DeviceBackend']


class DeviceBackend(Backend):
    """A chip over a link: the simulation server (``socket://host:port``) or a board's serial port.

    ``target`` is a :class:`cimstack.link.client.Device`, a :class:`cimstack.link.Link` or a
    pyserial URL. ``write_verify`` "chip" uses the on-chip controller, "host" drives the
    same algorithm from the host one cell operation at a time (slow; for chips without the
    controller or for debugging a cell).
    """

    name = "device"
    keeps_state_across_processes = True
    bit_exact = True

    def __init__(self, target, cfg: ChipConfig | None = None, *, write_verify: str = "chip", **link_args):
        if write_verify not in ("chip", "host"):
            raise ConfigError(f"write_verify = {write_verify!r} is not one of chip, host")
        if isinstance(target, Device):
            self.dev, self._own = target, False
        else:
            if cfg is None:
                raise ConfigError("DeviceBackend needs the chip config the gateware was built from")
            own = not isinstance(target, Link)
            link = Link(str(target), **link_args) if own else target
            try:
                self.dev, self._own = Device(link, cfg), own
            except Exception:
                if own:                      # a refused chip (wrong config hash) leaves no port open
                    link.close()
                raise
        super().__init__(self.dev.cfg if cfg is None else cfg)
        if self.dev.cfg != self.cfg:
            raise ConfigError("the Device was opened with a different chip config")
        self.wv_mode = write_verify

    def erase(self, tiles, seed: int) -> None:
        for t in tiles:
            self._check_tile(t)
            g = GoldenTile(self.cfg, t)
            g.set_state(np.zeros_like(g.state), fabricate(self.cfg, seed, t))
            self.dev.load_tile(t, g)
        self.dev.reseed(seed)

    def reseed_noise(self, seed: int) -> None:
        self.dev.reseed(seed)

    def configure_tile(self, tile: int, adc_gain: int, adc_offset: int, post_scale: int) -> None:
        self.dev.set_tile_regs(tile, adc_gain, adc_offset, False)
        self.dev.set_post(tile, *_neutral_post(self.cfg, post_scale))

    def set_adc(self, tile: int, adc_gain: int, adc_offset: int) -> None:
        self.dev.set_adc(tile, adc_gain, adc_offset)

    def write_verify(self, tile: int, jobs: CellJobs, params: WriteVerifyParams = WriteVerifyParams()):
        p = params.resolved(self.cfg)
        assert p.amp_max is not None                # resolved() fills it in
        job_list = jobs.jobs(self.cfg)
        if self.wv_mode == "chip":
            return _results(self.dev.write_verify(tile, job_list, p.max_pulses, p.amp_start, p.amp_step, p.amp_max))
        lanes = self.cfg.array.mac_lanes

        def read(j):
            return self.dev.read_cell(tile, j.row, j.group * lanes + j.lane, j.cell)

        def pulse(j, polarity, amplitude):
            self.dev.pulse_cell(tile, j.row, j.group * lanes + j.lane, j.cell, polarity, amplitude)

        return _results(ispp(job_list, read, pulse, p.max_pulses, p.amp_start, p.amp_step, p.amp_max))

    def pulse(self, tile, row, unit, cell, polarity, amplitude=1):
        self._check_tile(tile)
        return np.array([self.dev.pulse_cell(tile, *map(int, a))
                         for a in zip(*_cell_args(self.cfg, row, unit, cell, polarity, amplitude))], dtype=np.int64)

    def read_cells(self, tile, row, unit, cell):
        self._check_tile(tile)
        return np.array([self.dev.read_cell(tile, *map(int, a)) for a in zip(*_cell_args(self.cfg, row, unit, cell))],
                        dtype=np.int64)

    def vmm(self, tile, x, mode=None):
        """A batch as one sequencer program per chunk that fits the activation buffer: per
        iteration copy the input vector in, run the VMM, copy the outputs out."""
        self._check_tile(tile)
        a, words = self.cfg.array, self.cfg.soc.act_words
        rows, cols = a.rows, a.cols
        x = np.asarray(x, dtype=np.int64)
        base = rows + cols                                 # [0, rows) input, [rows, base) output scratch
        per = min((words - base) // (rows + cols), (1 << 16) - 1)
        if per < 1:
            raise ConfigError(f"soc.act_words = {words} cannot hold one input and one output vector")
        out_base = base + per * rows
        program = [("COPY", dict(src=base, dst=0, n=rows, src_iter=1)),
                   ("VMM", dict(tile=tile, count=1, src=0, dst=rows, mode=mode_field(mode))),
                   ("COPY", dict(src=rows, dst=out_base, n=cols, dst_iter=1)),
                   ("LOOP", dict(target=0)), ("HALT", {})]
        out = []
        for i in range(0, len(x), per):
            chunk = x[i:i + per]
            self.dev.write_act(base, chunk.ravel())
            self.dev.run_program(program, iters=len(chunk), in_stride=rows, out_stride=cols)
            out.append(self.dev.read_act(out_base, len(chunk) * cols).reshape(len(chunk), cols))
        y = np.concatenate(out) if out else np.zeros((0, cols), dtype=np.int64)
        return torch.as_tensor(y, dtype=torch.float64)

    def close(self) -> None:
        if self._own:
            self.dev.link.close()
