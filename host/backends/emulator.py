"""The emulator backend: the PyTorch physics emulator of every tile, float and batched."""
from __future__ import annotations

import numpy as np
import torch

from cimstack.backends.base import (
    _CHUNK,
    _STREAM_VERIFY,
    Backend,
    CellJobs,
    WriteVerifyParams,
    _cell_args,
    _neutral_post,
    adc_tie_bias,
    fabricate,
)
from cimstack.chip.config import ChipConfig
from cimstack.chip.enums import Polarity, Stuck, WriteVerifyStatus
from cimstack.errors import ConfigError
from cimstack.physics import TileEmulator
from cimstack.physics.devices import seed_for

__all__ = ['EmulatorBackend']


class EmulatorBackend(Backend):
    """The PyTorch physics emulator.

    ``mode`` "physical" or "datapath" (see :class:`TileEmulator`); ``t`` the read time in
    seconds after programming (drift; default ``device.drift_t0_s``); ``drift_compensation``
    the global compensation of Joshi et al. 2020; ``ir_drop`` the IR-drop model ("exact",
    "fast" or "off") when the config's wires have resistance; ``dtype``/``device`` of the tensors.
    """

    name = "emulator"

    def __init__(self, cfg: ChipConfig, *, mode: str = "physical", t: float | None = None,
                 drift_compensation: bool = False, ir_drop: str = "exact", dtype: torch.dtype = torch.float64,
                 device: str | torch.device | None = None):
        super().__init__(cfg)
        if mode not in ("physical", "datapath"):
            raise ConfigError(f"emulator mode {mode!r} is not one of physical, datapath")
        self.mode, self.t, self.drift_compensation = mode, t, drift_compensation
        self.tiles = [TileEmulator(cfg, tile=t_, ir_drop=ir_drop, dtype=dtype, device=device)
                      for t_ in range(cfg.array.tiles)]
        self.verify_gen = torch.Generator(device=self.tiles[0].device)

    def erase(self, tiles, seed: int) -> None:
        dp, frac = self.cfg.datapath, self.cfg.cell.frac_bits
        for t in tiles:
            self._check_tile(t)
            emu = self.tiles[t]
            emu.reseed(seed)
            emu.set_state(np.zeros(tuple(emu.state.shape)), fabricate(self.cfg, seed, t))
            if emu.ref_state is not None and frac:
                # the reference column sits at the centre of its code bin, like programmed cells
                emu.ref_state = torch.full_like(emu.ref_state, dp.ref_code * emu.frac_scale + (1 << (frac - 1)))
        self.verify_gen.manual_seed(seed_for(seed, 0, _STREAM_VERIFY))

    def reseed_noise(self, seed: int) -> None:
        for emu in self.tiles:
            emu.reseed_reads(seed)

    def rounding_bias(self, adc_gain: int) -> float:
        """The datapath twin has integer sums and rounds like the chip; physical column sums
        are continuous, so their rounding is unbiased."""
        return adc_tie_bias(self.cfg, adc_gain) if self.mode == "datapath" else 0.0

    def configure_tile(self, tile: int, adc_gain: int, adc_offset: int, post_scale: int) -> None:
        self.set_adc(tile, adc_gain, adc_offset)
        emu = self.tiles[tile]
        emu.relu = False
        emu.set_post(*_neutral_post(self.cfg, post_scale))

    def set_adc(self, tile: int, adc_gain: int, adc_offset: int) -> None:
        self._check_tile(tile)
        self.tiles[tile].adc.set_registers(gain=int(adc_gain), offset=int(adc_offset))

    def write_verify(self, tile: int, jobs: CellJobs, params: WriteVerifyParams = WriteVerifyParams()):
        """The ISPP loop of :func:`cimstack.golden.writeverify.ispp`, on all cells in parallel."""
        self._check_tile(tile)
        p = params.resolved(self.cfg)
        max_pulses, amp_start, amp_step, amp_max = p.max_pulses, p.amp_start, p.amp_step, p.amp_max
        emu = self.tiles[tile]
        r_, u_, c_ = (torch.as_tensor(v, device=emu.device) for v in (jobs.row, jobs.unit, jobs.cell))
        target = torch.as_tensor(jobs.target, dtype=emu.dtype, device=emu.device)
        tol = torch.as_tensor(jobs.tol, dtype=emu.dtype, device=emu.device)
        state = emu.state[r_, u_, c_].clone()
        stuck = emu.stuck[r_, u_, c_]

        def read(st: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return self._verify_read(st, stuck[idx])

        everyone = torch.arange(len(jobs), device=emu.device)
        first = read(state, everyone)
        last_read = first.clone()
        pulses = torch.zeros(len(jobs), dtype=torch.int64, device=emu.device)
        amp = torch.full((len(jobs),), amp_start, dtype=torch.int64, device=emu.device)
        last_pol = torch.full((len(jobs),), -1, dtype=torch.int64, device=emu.device)
        for _ in range(max_pulses):
            err = last_read - target
            idx = torch.nonzero(err.abs() > tol).flatten()
            if idx.numel() == 0:
                break
            pol = torch.where(err[idx] < 0, Polarity.SET, Polarity.RESET)
            a = torch.where(pol == last_pol[idx], torch.clamp(amp[idx] + amp_step, max=amp_max),
                            torch.full_like(pol, amp_start))
            state[idx] = emu.devices.pulse(state[idx], pol, a, emu.gens["pulse"], stuck=stuck[idx])
            pulses[idx] += 1
            amp[idx], last_pol[idx] = a, pol
            last_read[idx] = read(state[idx], idx)
        err = last_read - target
        ok = err.abs() <= tol
        status = torch.where(ok, WriteVerifyStatus.CONVERGED,
                             torch.where((last_read - first).abs() <= tol, WriteVerifyStatus.STUCK, WriteVerifyStatus.FAILED))
        new_state = emu.state.clone()
        new_state[r_, u_, c_] = state
        emu.set_state(new_state, emu.stuck)          # fresh drift exponents for the programmed states
        return (status.cpu().numpy().astype(np.int64), pulses.cpu().numpy(),
                torch.clamp(torch.round(err), -32768, 32767).cpu().numpy().astype(np.int64))

    def _verify_read(self, state: torch.Tensor, stuck: torch.Tensor) -> torch.Tensor:
        """A verify read of cells at ``state``: stuck cells read 0 or full scale, plus the
        verify read noise (``device.read_noise_sigma`` of full scale)."""
        full = float((1 << self.cfg.datapath.state_bits) - 1)
        sigma = self.cfg.device.read_noise_sigma * full
        eff = torch.where(stuck == Stuck.AT_0, torch.zeros_like(state),
                          torch.where(stuck == Stuck.AT_MAX, torch.full_like(state, full), state))
        if sigma > 0:
            eff = eff + sigma * torch.randn(state.shape, generator=self.verify_gen, dtype=state.dtype, device=state.device)
        return eff

    def pulse(self, tile, row, unit, cell, polarity, amplitude=1):
        self._check_tile(tile)
        r, u, c, pol, amp = _cell_args(self.cfg, row, unit, cell, polarity, amplitude)
        return self.tiles[tile].apply_pulses(r, u, c, pol, amp).cpu().numpy()

    def read_cells(self, tile, row, unit, cell):
        self._check_tile(tile)
        emu = self.tiles[tile]
        r, u, c = (torch.as_tensor(a, device=emu.device) for a in _cell_args(self.cfg, row, unit, cell))
        return self._verify_read(emu.state[r, u, c], emu.stuck[r, u, c]).cpu().numpy()

    def vmm(self, tile, x, mode=None):
        self._check_tile(tile)
        emu = self.tiles[tile]
        xt = torch.as_tensor(np.asarray(x, dtype=np.int64), device=emu.device)
        outs = [emu.vmm(xt[i:i + _CHUNK], mode=self.mode, t=None if self.mode == "datapath" else self.t,
                        drift_compensation=self.drift_compensation, input_mode=mode) for i in range(0, len(xt), _CHUNK)]
        return torch.cat(outs).to(torch.float64) if outs else torch.zeros((0, self.cfg.array.cols), dtype=torch.float64)
