"""Backends: one interface over the three models of the chip, so that a deployment runs
unchanged on any of them.

``EmulatorBackend``
    The PyTorch physics emulator (:class:`cimstack.physics.TileEmulator`): float, batched,
    conductances in µS with every device non-ideality (``mode="physical"``, the default) or
    the float twin of the integer datapath. Write-verify runs the chip's ISPP algorithm on
    every cell at once, with the float pulse model (cycle-to-cycle noise, soft bounds) and
    Gaussian verify-read noise. Agrees with the others statistically.
``GoldenBackend``
    The bit-exact NumPy model (:class:`cimstack.golden.GoldenSoC`).
``DeviceBackend``
    A real or simulated SoC over a :class:`cimstack.link.Link` (``socket://`` to the
    simulation server, or a serial port). Write-verify runs on the chip's controller
    (``write_verify="chip"``) or host-driven through the single-cell registers
    (``"host"``, the same ISPP loop as the golden model). Equals the golden backend bit for bit.

A backend holds the state of every tile. :meth:`Backend.erase` puts tiles into their
as-fabricated state: every cell at conductance state 0 (fully RESET) with the stuck-at
faults of this chip instance (:func:`fabricate`, drawn from the config's stuck-at rates
and the seed, the same for every backend), and restarts the noise generators.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .config import ChipConfig
from .errors import ConfigError, InputRangeError
from .golden import RESET, SET, GoldenSoC, GoldenTile, Pulse, WriteVerifyJob, ispp
from .isa import mode_field
from .physics import TileEmulator
from .physics.devices import DeviceModel, seed_for
from .mapping import check_adc_registers
from .regmap import WV_CONVERGED, WV_FAILED, WV_STUCK

__all__ = ["Backend", "EmulatorBackend", "GoldenBackend", "DeviceBackend", "CellJobs", "fabricate", "backend",
           "adc_tie_bias"]

_STREAM_FAB, _STREAM_VERIFY = 3, 4
_CHUNK = 4096          # VMM rows per call of a model (bounds the memory of the per-pulse sums)


def fabricate(cfg: ChipConfig, seed: int, tile: int) -> np.ndarray:
    """The stuck-at map (golden encoding) of one tile of the chip instance ``seed``."""
    dp = cfg.datapath
    gen = torch.Generator().manual_seed(seed_for(seed, tile, _STREAM_FAB))
    shape = (cfg.array.rows, dp.units, dp.cells_per_unit)
    return DeviceModel(cfg).sample_stuck(shape, gen).numpy()


def adc_tie_bias(cfg: ChipConfig, gain: int) -> float:
    """Mean error, in ADC LSBs, of one conversion of an integer column sum.

    The ADC rounds ``sum * gain / 2**gain_shift`` half up. With integer sums the fractional
    part takes ``m = 2**gain_shift / gcd(gain, 2**gain_shift)`` values; when they are equally
    likely, rounding half up is off by ``+1/(2m)`` on average (ties always go up), and 0
    when ``m == 1``. Summed over every pulse and slice of a VMM this is a per-column offset
    worth correcting: 1084 output LSBs on the default chip (gain 1/2, 8 pulses, 2 slices).
    """
    full = 1 << cfg.adc.gain_shift
    m = full // math.gcd(int(gain), full)
    return 0.0 if m == 1 else 1.0 / (2 * m)


class CellJobs:
    """Cells to program on one tile: parallel int64 arrays ``row``, ``unit``, ``cell``,
    ``target`` (state LSBs) and ``tol``."""

    def __init__(self, row, unit, cell, target, tol):
        self.row, self.unit, self.cell, self.target, self.tol = (np.asarray(v, dtype=np.int64).ravel()
                                                                 for v in (row, unit, cell, target, tol))

    def __len__(self) -> int:
        return len(self.row)

    def jobs(self, cfg: ChipConfig) -> list[WriteVerifyJob]:
        lanes = cfg.array.mac_lanes
        return [WriteVerifyJob(int(r), int(u) // lanes, int(u) % lanes, int(c), int(t), int(tol))
                for r, u, c, t, tol in zip(self.row, self.unit, self.cell, self.target, self.tol)]


class Backend:
    """What a deployment needs of a chip: erase, tile registers, write-verify and VMMs."""

    name = "backend"

    def __init__(self, cfg: ChipConfig):
        if not isinstance(cfg, ChipConfig):
            raise ConfigError(f"a backend needs a ChipConfig, got {type(cfg).__name__}")
        self.cfg = cfg

    def erase(self, tiles, seed: int) -> None:
        """Tiles to their as-fabricated state; every noise generator restarted from ``seed``."""
        raise NotImplementedError

    def configure_tile(self, tile: int, adc_gain: int, adc_offset: int, post_scale: int) -> None:
        """ADC registers of a tile; post-processing bias 0, scale ``post_scale`` on every
        column, no ReLU."""
        raise NotImplementedError

    def set_adc(self, tile: int, adc_gain: int, adc_offset: int) -> None:
        """Only the ADC gain (integration time) and offset registers of a tile: what the
        runtime rewrites between layers that share a tile but were tuned differently."""
        raise NotImplementedError

    def write_verify(self, tile: int, jobs: CellJobs, max_pulses: int, amp_start: int, amp_step: int,
                     amp_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Program cells; per cell (status, pulses, final error in state LSBs)."""
        raise NotImplementedError

    def reseed_noise(self, seed: int) -> None:
        """Restart the read-noise generators from ``seed`` (cell states are kept), so that
        runs compared against each other see the same noise draws."""
        raise NotImplementedError

    def vmm(self, tile: int, x: np.ndarray, mode: str | None = None) -> torch.Tensor:
        """Integer inputs (batch, rows) in order; post-processed outputs (batch, cols) as float64."""
        raise NotImplementedError

    def pulse(self, tile: int, row, unit, cell, polarity, amplitude=1) -> np.ndarray:
        """One programming pulse on each of a set of distinct cells (parallel int arrays,
        broadcast); returns their states after it (state LSBs). For training on the chip."""
        raise NotImplementedError

    def read_cells(self, tile: int, row, unit, cell) -> np.ndarray:
        """Verify reads of a set of cells (state LSBs, with the verify read noise)."""
        raise NotImplementedError

    def rounding_bias(self, adc_gain: int) -> float:
        """Mean ADC rounding error per conversion (ADC LSBs) that the runtime subtracts:
        the integer datapath's tie bias (:func:`adc_tie_bias`)."""
        return adc_tie_bias(self.cfg, adc_gain)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_tile(self, tile: int) -> None:
        if not 0 <= tile < self.cfg.array.tiles:
            raise InputRangeError(f"tile {tile} outside 0..{self.cfg.array.tiles - 1}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg.name})"


def _cell_args(cfg: ChipConfig, *args) -> list[np.ndarray]:
    """Cell index (and pulse) arguments broadcast to flat int64 arrays, indices checked."""
    try:
        arrs = [a.ravel() for a in np.broadcast_arrays(*(np.asarray(a, dtype=np.int64) for a in args))]
    except ValueError as exc:
        raise InputRangeError(f"cell arguments do not broadcast: {exc}") from None
    dp = cfg.datapath
    for name, a, hi in (("row", arrs[0], cfg.array.rows), ("unit", arrs[1], dp.units), ("cell", arrs[2], dp.cells_per_unit)):
        if a.size and (a.min() < 0 or a.max() >= hi):
            raise InputRangeError(f"cell {name} indices must lie in 0..{hi - 1}")
    return arrs


def _neutral_post(cfg: ChipConfig, post_scale: int) -> tuple[np.ndarray, np.ndarray]:
    cols = cfg.array.cols
    return np.zeros(cols, dtype=np.int64), np.full(cols, int(post_scale), dtype=np.int64)


def _results(results) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.array([r.status for r in results], dtype=np.int64), np.array([r.pulses for r in results], dtype=np.int64),
            np.array([r.error for r in results], dtype=np.int64))


class GoldenBackend(Backend):
    """The bit-exact integer model."""

    name = "golden"

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

    def write_verify(self, tile, jobs, max_pulses, amp_start, amp_step, amp_max):
        return _results(self.soc.write_verify(tile, jobs.jobs(self.cfg), max_pulses, amp_start, amp_step, amp_max))

    def pulse(self, tile, row, unit, cell, polarity, amplitude=1):
        self._check_tile(tile)
        g = self.soc.tiles[tile]
        return np.array([g.pulse(Pulse(*map(int, a))) for a in zip(*_cell_args(self.cfg, row, unit, cell, polarity, amplitude))],
                        dtype=np.int64)

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

    def write_verify(self, tile, jobs, max_pulses, amp_start, amp_step, amp_max):
        """The ISPP loop of :func:`cimstack.golden.ispp`, on all cells in parallel."""
        self._check_tile(tile)
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
            pol = torch.where(err[idx] < 0, SET, RESET)
            a = torch.where(pol == last_pol[idx], torch.clamp(amp[idx] + amp_step, max=amp_max),
                            torch.full_like(pol, amp_start))
            state[idx] = emu.devices.pulse(state[idx], pol, a, emu.gens["pulse"], stuck=stuck[idx])
            pulses[idx] += 1
            amp[idx], last_pol[idx] = a, pol
            last_read[idx] = read(state[idx], idx)
        err = last_read - target
        ok = err.abs() <= tol
        status = torch.where(ok, WV_CONVERGED, torch.where((last_read - first).abs() <= tol, WV_STUCK, WV_FAILED))
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
        eff = torch.where(stuck == 1, torch.zeros_like(state), torch.where(stuck == 2, torch.full_like(state, full), state))
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


class DeviceBackend(Backend):
    """A chip over a link: the simulation server (``socket://host:port``) or a board's serial port.

    ``target`` is a :class:`cimstack.device.Device`, a :class:`cimstack.link.Link` or a
    pyserial URL. ``write_verify`` "chip" uses the on-chip controller, "host" drives the
    same algorithm from the host one cell operation at a time (slow; for chips without the
    controller or for debugging a cell).
    """

    name = "device"

    def __init__(self, target, cfg: ChipConfig | None = None, *, write_verify: str = "chip", **link_args):
        from .device import Device
        from .link import Link
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

    def write_verify(self, tile, jobs, max_pulses, amp_start, amp_step, amp_max):
        job_list = jobs.jobs(self.cfg)
        if self.wv_mode == "chip":
            return _results(self.dev.write_verify(tile, job_list, max_pulses, amp_start, amp_step, amp_max))
        lanes = self.cfg.array.mac_lanes

        def read(j):
            return self.dev.read_cell(tile, j.row, j.group * lanes + j.lane, j.cell)

        def pulse(j, polarity, amplitude):
            self.dev.pulse_cell(tile, j.row, j.group * lanes + j.lane, j.cell, polarity, amplitude)

        return _results(ispp(job_list, read, pulse, max_pulses, amp_start, amp_step, amp_max))

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


def backend(name: str, cfg: ChipConfig, **kwargs) -> Backend:
    """A backend by name: ``emulator``, ``golden`` or ``device`` (``target=`` a link URL)."""
    if name == "emulator":
        return EmulatorBackend(cfg, **kwargs)
    if name == "golden":
        return GoldenBackend(cfg, **kwargs)
    if name == "device":
        return DeviceBackend(kwargs.pop("target"), cfg, **kwargs)
    raise ConfigError(f"unknown backend {name!r}; backends: emulator, golden, device")
