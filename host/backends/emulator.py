"""The emulator backend: the PyTorch physics emulator of every tile, float and batched."""
from __future__ import annotations

import numpy as np
import torch

from cimstack.backends.base import (
    _CHUNK,
    _STREAM_VERIFY,
    Backend,
    CellJobs,
    Region,
    WriteVerifyParams,
    _cell_args,
    _neutral_post,
    adc_tie_bias,
    fabricate,
)
from cimstack.chip.config import ChipConfig
from cimstack.chip.enums import Polarity, Stuck, WriteVerifyStatus
from cimstack.errors import ConfigError, InputRangeError
from cimstack.golden.writeverify import check_write_verify_cells
from cimstack.physics import TileEmulator, input_range
from cimstack.physics.devices import seed_for
from cimstack.physics.regions import RegionStack, Workspace

__all__ = ['EmulatorBackend']

_CELLS_PER_CHUNK = 1 << 21     # pulse digits per batched VMM call (bounds its scratch memory: 8 MB of float32 digits)


class EmulatorBackend(Backend):
    """The PyTorch physics emulator.

    ``mode`` "physical" or "datapath" (see :class:`TileEmulator`); ``t`` the read time in
    seconds after programming (drift; default ``device.drift_t0_s``); ``drift_compensation``
    the global compensation of Joshi et al. 2020; ``ir_drop`` the IR-drop model ("exact",
    "fast" or "off") when the config's wires have resistance; ``dtype``/``device`` of the tensors
    (default float32 in physical mode, float64 in datapath mode, whose integer sums it keeps exact).

    A layer's passes run through :meth:`vmm_regions`: one batched VMM over only the cells they
    use (:class:`cimstack.physics.regions.RegionStack`, kept while the cells are unchanged),
    wherever that equals the whole-array VMM (:attr:`TileEmulator.region_exact`).
    """

    name = "emulator"

    def __init__(self, cfg: ChipConfig, *, mode: str = "physical", t: float | None = None,
                 drift_compensation: bool = False, ir_drop: str = "exact", dtype: torch.dtype | None = None,
                 device: str | torch.device | None = None):
        super().__init__(cfg)
        if mode not in ("physical", "datapath"):
            raise ConfigError(f"emulator mode {mode!r} is not one of physical, datapath")
        self.mode, self.t, self.drift_compensation = mode, t, drift_compensation
        if dtype is None:
            dtype = torch.float64 if mode == "datapath" else torch.float32
        self.dtype = dtype
        self._stacks: dict[tuple, tuple[RegionStack, torch.Tensor | None]] = {}
        self._workspace = Workspace()
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
        """The ISPP loop of :func:`cimstack.golden.writeverify.ispp`, on all cells in parallel.

        Cell by cell the same algorithm: a verify read (:meth:`_verify_read`), then while it is
        out of tolerance and pulses are left, one pulse (SET below the target, RESET above;
        ``amp_start`` on the first pulse and after a change of polarity, else ``amp_step``
        more, up to ``amp_max``) and a verify read; CONVERGED, or out of pulses: STUCK where
        the last read is within the tolerance of the first, else FAILED. Each step updates
        the cells still out of tolerance by masks, and compacts them into shorter tensors
        once no more than half of those in hand remain.

        After the loop every cell that took a pulse draws fresh drift exponents (its
        programmed state is new) and, in physical mode, relaxes
        (:meth:`DeviceModel.relax <cimstack.physics.devices.DeviceModel.relax>` at its target
        conductance): the change after the last pulse that no verify read saw, which makes
        the programmed conductances spread more than the tolerance window (none for a model
        without relaxation, and none in datapath mode, the twin of the integer chip). The
        error returned is the last verify read's, as the chip reports it.
        """
        self._check_tile(tile)
        p = params.resolved(self.cfg)
        max_pulses, amp_start, amp_step, amp_max = p.max_pulses, p.amp_start, p.amp_step, p.amp_max
        assert amp_max is not None                  # resolved() fills it in
        # the runs the chip refuses, refused here too, with the same messages
        check_write_verify_cells(self.cfg, tile, jobs.row, jobs.unit, jobs.cell, jobs.target, jobs.tol,
                                 max_pulses, amp_start, amp_step, amp_max)
        emu = self.tiles[tile]
        dev, dt, shape = emu.device, emu.dtype, emu.state.shape
        n = len(jobs)
        flat = torch.as_tensor((jobs.row * shape[1] + jobs.unit) * shape[2] + jobs.cell, device=dev)
        state = emu.state.reshape(-1)[flat]
        stuck = emu.stuck.reshape(-1)[flat]
        any_stuck = bool((stuck != Stuck.NONE).any())
        target = torch.as_tensor(jobs.target, device=dev).to(dt)
        tol = torch.as_tensor(jobs.tol, device=dev).to(dt)
        first = self._verify_read(state, stuck if any_stuck else None)
        final_state, final_read = state.clone(), first.clone()
        pulses = torch.zeros(n, dtype=torch.int64, device=dev)
        # the cells in hand (idx: their job positions) and their loop variables
        idx, s, rd, tg, tl, sk = torch.arange(n, device=dev), state, first, target, tol, stuck if any_stuck else None
        amp = torch.full((n,), float(amp_start), dtype=dt, device=dev)
        last = torch.full((n,), -1, dtype=torch.int64, device=dev)      # polarity of the last pulse
        cnt = torch.zeros(n, dtype=torch.int64, device=dev)
        gen = emu.gens["pulse"]
        for _ in range(max_pulses):
            err = rd - tg
            out: torch.Tensor | None = err.abs() > tl
            left = int(out.sum())
            if left == 0:
                break
            if 2 * left <= out.numel():             # compact: keep only the cells out of tolerance
                final_state[idx], final_read[idx], pulses[idx] = s, rd, cnt
                keep = out.nonzero().squeeze(1)
                idx, s, rd, tg, tl, amp, last, cnt, err = (v[keep] for v in (idx, s, rd, tg, tl, amp, last, cnt, err))
                sk = None if sk is None else sk[keep]
                out = None
            pol = torch.where(err < 0, Polarity.SET, Polarity.RESET)
            a = torch.where(pol == last, torch.clamp(amp + amp_step, max=amp_max), float(amp_start))
            new = emu.devices.pulse(s, pol, a, gen, stuck=sk, check=False)
            r_new = self._verify_read(new, sk)
            if out is None:
                s, rd, amp, last, cnt = new, r_new, a, pol, cnt + 1
            else:                                   # cells already within tolerance keep what they have
                s = torch.where(out, new, s)
                rd = s if r_new is new else torch.where(out, r_new, rd)     # a noiseless read is the state
                amp, last, cnt = torch.where(out, a, amp), torch.where(out, pol, last), cnt + out
        final_state[idx], final_read[idx], pulses[idx] = s, rd, cnt
        err = final_read - target
        status = torch.where(err.abs() <= tol, WriteVerifyStatus.CONVERGED,
                             torch.where((final_read - first).abs() <= tol, WriteVerifyStatus.STUCK, WriteVerifyStatus.FAILED))
        # the outcome into the tile: the pulsed cells relax (physical mode), then draw drift exponents
        d, fs, step = self.cfg.device, emu.frac_scale, emu.g_step
        pick = (pulses > 0).nonzero().squeeze(1)
        if self.mode == "physical" and pick.numel():
            free = pick[stuck[pick] == Stuck.NONE]      # stuck cells do not move
            g = d.g_min_us + final_state[free] / fs * step
            relaxed = emu.devices.relax(g, emu.gens["pulse"], d.g_min_us + target[free] / fs * step)
            if relaxed is not g:
                final_state = final_state.index_add(0, free, (relaxed - g) * (fs / step))
        emu.state = emu.state.reshape(-1).index_copy(0, flat, final_state).reshape(shape)
        if pick.numel():
            sk, g = stuck[pick], d.g_min_us + final_state[pick] / fs * step
            g = torch.where(sk == Stuck.AT_0, d.g_min_us, torch.where(sk == Stuck.AT_MAX, d.g_max_us, g))
            nu = emu.devices.sample_nu(g, emu.gens["prog"]).to(emu.nu.dtype)
            emu.nu = emu.nu.reshape(-1).index_copy(0, flat[pick], nu).reshape(shape)
        return (status.cpu().numpy().astype(np.int64), pulses.cpu().numpy(),
                torch.clamp(torch.round(err), -32768, 32767).cpu().numpy().astype(np.int64))

    def _verify_read(self, state: torch.Tensor, stuck: torch.Tensor | None) -> torch.Tensor:
        """A verify read of cells at ``state``: stuck cells read 0 or full scale, plus the
        verify read noise (``device.read_noise_sigma`` of full scale). ``stuck`` None: no
        cell among them is stuck."""
        full = float((1 << self.cfg.datapath.state_bits) - 1)
        sigma = self.cfg.device.read_noise_sigma * full
        eff = state
        if stuck is not None:
            eff = torch.where(stuck == Stuck.AT_0, 0.0, torch.where(stuck == Stuck.AT_MAX, full, state))
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

    def vmm_regions(self, regions: list[Region], x, mode: str | None = None) -> torch.Tensor:
        if not all(self.tiles[r.tile].region_exact for r in regions if 0 <= r.tile < len(self.tiles)):
            return super().vmm_regions(regions, x, mode)
        xn = self._check_region_inputs(regions, x)
        dev = self.tiles[0].device
        stack, index = self._stack(regions, xn.shape[1])
        xt = torch.as_tensor(xn, device=dev)
        if xt.numel():
            lo, hi = input_range(self.cfg, mode)
            low, high = (int(v) for v in torch.aminmax(xt))
            if low < lo or high > hi:
                raise InputRangeError(f"inputs span [{low}, {high}], outside [{lo}, {hi}] "
                                      f"for {self.cfg.input.bits}-bit {self.cfg.datapath.mode(mode).name} inputs")
        n, r_max = len(regions), int(stack.w.shape[1])
        if index is None:                            # one pass reading the features in order
            xg = xt.to(torch.int32).unsqueeze(0)
        else:                                        # every pass's inputs in its row order, a zero feature as padding
            padded = torch.zeros((len(xt), xt.shape[1] + 1), dtype=torch.int32, device=dev)
            padded[:, :-1] = xt
            xg = padded.index_select(1, index).reshape(len(xt), n, r_max).transpose(0, 1).contiguous()
        if len(xt) == 0:
            return torch.zeros((n, 0, int(stack.cols.shape[1])), dtype=torch.float64)
        chunk = max(1, _CELLS_PER_CHUNK // (n * max(r_max, 1) * self.cfg.datapath.pulses))
        outs = [stack.vmm(xg[:, i:i + chunk], input_mode=mode, workspace=self._workspace)
                for i in range(0, len(xt), chunk)]
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)).cpu()

    def _stack(self, regions: list[Region], features: int) -> tuple[RegionStack, torch.Tensor | None]:
        """The RegionStack of these regions at the current read time (rebuilt when a cell
        changed) and the feature of each of its input slots, flattened (None: the features
        in order, one pass)."""
        key = (self.mode, self.t, self.drift_compensation, features,
               tuple((r.tile, r.rows.tobytes(), r.cols.tobytes(), r.inputs.tobytes()) for r in regions))
        entry = self._stacks.get(key)
        if entry is None or not entry[0].current():
            dev = self.tiles[0].device
            t = None if self.mode == "datapath" else self.t
            stack = RegionStack([(self.tiles[r.tile], torch.as_tensor(r.rows, device=dev), torch.as_tensor(r.cols, device=dev))
                                 for r in regions], mode=self.mode, t=t, drift_compensation=self.drift_compensation,
                                dtype=self.dtype)
            r_max = int(stack.w.shape[1])
            if len(regions) == 1 and np.array_equal(regions[0].inputs, np.arange(features)):
                index = None
            else:
                slots = np.full((len(regions), r_max), features, dtype=np.int64)
                for i, r in enumerate(regions):
                    slots[i, :len(r.inputs)] = r.inputs
                index = torch.as_tensor(slots.reshape(-1), device=dev)
            if len(self._stacks) > 256:                 # many read times or layers: start afresh
                self._stacks.clear()
            entry = self._stacks[key] = (stack, index)
        return entry
