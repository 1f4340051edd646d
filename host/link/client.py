"""A cimstack SoC seen from the host: named registers, tiles, activation buffer, VMMs and
write-verify, over a :class:`~cimstack.link.Link` to the simulation server or a board.

Every operation validates its arguments against the config before anything is sent, so a
bad call raises :class:`~cimstack.errors.InputRangeError` and leaves the chip untouched.
"""
from __future__ import annotations

import time
from typing import cast

import numpy as np

from cimstack.chip import prng
from cimstack.chip.bitfields import pack, unpack
from cimstack.chip.config import ChipConfig
from cimstack.chip.datapath import check_adc_registers, check_post_params
from cimstack.chip.enums import Polarity, RunUnit, WriteVerifyStatus
from cimstack.chip.isa import assemble, check_program, disassemble, mode_field
from cimstack.chip.regmap import ID_MAGIC, PROTOCOL_VERSION, WV_JOB_FIELDS, WV_RESULT_FIELDS, register_map
from cimstack.errors import ConfigMismatchError, DeviceError, InputRangeError, LinkTimeout
from cimstack.golden.tile import GoldenTile
from cimstack.golden.writeverify import WriteVerifyJob, WriteVerifyResult, check_write_verify
from cimstack.link.transport import Link

__all__ = ["Device"]


class Device:
    def __init__(self, link: Link, cfg: ChipConfig, check: bool = True, poll_timeout: float = 60.0):
        self.link, self.cfg = link, cfg
        self.map = register_map(cfg)
        self.poll_timeout = poll_timeout
        link.max_payload = cfg.soc.max_payload
        if check:
            self.check_identity()

    # -- registers --------------------------------------------------------------------------
    def read(self, name: str) -> int:
        return self.link.read_regs(self.map[name].addr)[0]

    def write(self, name: str, value: int | None = None, **fields: int) -> None:
        reg = self.map[name]
        if value is None:
            value = reg.pack(**fields)
        self.link.write_regs(reg.addr, [value])

    def fields(self, name: str) -> dict[str, int]:
        return self.map[name].unpack(self.read(name))

    def check_identity(self) -> None:
        """Refuse a chip that is not a cimstack SoC built from this config."""
        ident, version, chash = self.link.read_regs(self.map["ID"].addr, 3)
        if ident != ID_MAGIC:
            raise ConfigMismatchError(f"{self.link.url} is not a cimstack SoC (ID 0x{ident:08x})")
        if version >> 16 != PROTOCOL_VERSION[0]:
            raise ConfigMismatchError(
                f"{self.link.url} speaks protocol {version >> 16}.{version & 0xFFFF}, this host "
                f"{PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}: rebuild the bitstream or update the host")
        want = self.cfg.datapath.config_hash
        if chash != want:
            raise ConfigMismatchError(
                f"{self.link.url} was built from a config with hash 0x{chash:08x}, the host uses "
                f"{self.cfg.name!r} with hash 0x{want:08x}")

    def wait_idle(self, mask: int = 0b1111) -> int:
        """Poll STATUS until the units in ``mask`` are idle; returns the CYCLES counter."""
        deadline = time.monotonic() + self.poll_timeout
        while True:
            status, cycles = self.link.status()
            if not status & mask:
                return cycles
            if time.monotonic() > deadline:
                raise LinkTimeout(f"the device stayed busy (STATUS 0x{status:x}) for {self.poll_timeout} s")

    def reseed(self, seed: int) -> None:
        self.write("SEED_KEY", prng.seed_key(seed))
        self.write("CONTROL", reseed=1)

    # -- tiles ---------------------------------------------------------------------------------
    def _tile(self, tile: int) -> None:
        if not 0 <= tile < self.cfg.array.tiles:
            raise InputRangeError(f"tile {tile} outside 0..{self.cfg.array.tiles - 1}")

    def load_tile(self, tile: int, model: GoldenTile) -> None:
        """Copy a golden tile's cell states, stuck map, post-processing and registers."""
        self._tile(tile)
        self.write_memory(f"TILE{tile}_XBAR", 0, model.memory_image())
        self.set_post(tile, model.bias, model.scale)
        self.set_tile_regs(tile, model.adc_gain, model.adc_offset, model.relu)

    def set_post(self, tile: int, bias, scale) -> None:
        self._tile(tile)
        p = check_post_params(bias, scale, self.cfg)
        mask = (1 << self.cfg.post.bias_bits) - 1
        words = [(int(b) & mask) | int(s) << self.cfg.post.bias_bits for b, s in zip(p["bias"], p["scale"])]
        self.write_memory(f"TILE{tile}_POST", 0, words)

    def set_tile_regs(self, tile: int, adc_gain: int, adc_offset: int, relu: bool) -> None:
        self.set_adc(tile, adc_gain, adc_offset)
        self.write(f"TILE{tile}_RELU", relu=int(bool(relu)))

    def set_adc(self, tile: int, adc_gain: int, adc_offset: int) -> None:
        """The tile's ADC gain (integration time) and offset registers."""
        self._tile(tile)
        gain, offset = check_adc_registers(self.cfg, adc_gain, adc_offset)
        self.write(f"TILE{tile}_ADC_GAIN", gain=gain)
        self.write(f"TILE{tile}_ADC_OFFSET", offset=offset)

    # -- memories ------------------------------------------------------------------------------
    def write_memory(self, space: str, addr: int, words) -> None:
        sp = self.map.space(space)
        words = [int(w) for w in words]
        if addr < 0 or addr + len(words) > sp.depth:
            raise InputRangeError(f"{space}: words {addr}..{addr + len(words) - 1} outside 0..{sp.depth - 1}")
        self.link.write_mem(sp.space, addr, words, sp.word_bytes)

    def read_memory(self, space: str, addr: int, count: int) -> list[int]:
        sp = self.map.space(space)
        if sp.access != "rw":
            raise InputRangeError(f"{space} is write-only")
        if addr < 0 or count < 1 or addr + count > sp.depth:
            raise InputRangeError(f"{space}: words {addr}..{addr + count - 1} outside 0..{sp.depth - 1}")
        return self.link.read_mem(sp.space, addr, count, sp.word_bytes)

    def write_act(self, addr: int, values) -> None:
        values = np.asarray(values, dtype=np.int64).ravel()
        if values.size and (values.min() < -(1 << 31) or values.max() >= 1 << 31):
            raise InputRangeError("activations must fit in signed 32 bits")
        self.write_memory("ACT", addr, values.tolist())

    def read_act(self, addr: int, count: int) -> np.ndarray:
        v = np.array(self.read_memory("ACT", addr, count), dtype=np.int64)
        return np.where(v >= 1 << 31, v - (1 << 32), v)

    # -- compute ---------------------------------------------------------------------------------
    def vmm(self, tile: int, src: int, dst: int, accumulate: bool = False, mode: str | None = None,
            wait: bool = True) -> None:
        """Run act[dst:dst+cols] (+)= tile(act[src:src+rows]) on the chip, in input ``mode``
        (default: the config's)."""
        self._tile(tile)
        self.cfg.datapath.mode(mode)                  # raises for a mode the chip lacks
        a, n = self.cfg.array, self.cfg.soc.act_words
        if not (0 <= src <= n - a.rows and 0 <= dst <= n - a.cols):
            raise InputRangeError(f"VMM src {src} / dst {dst} do not fit the {n}-word activation buffer")
        flags = self.map["VMM_FLAGS"].pack(accumulate=int(accumulate), mode=mode_field(mode))
        self.link.write_regs(self.map["VMM_TILE"].addr, [tile, src, dst, flags])
        self.link.run(RunUnit.VMM)
        if wait:
            self.wait_idle(0b001)

    def run_program(self, program, iters: int = 1, in_stride: int = 0, out_stride: int = 0,
                    pc: int = 0, wait: bool = True) -> None:
        """Load a sequencer program (``isa.Instr`` list or instruction words) at ``pc`` and
        run it; ``iters`` LOOP iterations with COPY strides ``in_stride``/``out_stride``."""
        if program and isinstance(program[0], int):
            words = list(program)
            check_program(disassemble(words), self.cfg, pc)
        else:
            words = assemble(program, self.cfg, pc)
        n = self.cfg.soc.act_words
        if not (1 <= iters < 1 << 16 and 0 <= in_stride < n and 0 <= out_stride < n):
            raise InputRangeError(f"iters {iters} (1..65535) / strides {in_stride}, {out_stride} (0..{n - 1}, "
                                  f"the activation buffer's words)")
        last = max(in_stride, out_stride) * (iters - 1)
        if last >= self.cfg.soc.act_words:
            raise InputRangeError(f"{iters} iterations of stride {max(in_stride, out_stride)} run past the "
                                  f"{self.cfg.soc.act_words}-word activation buffer")
        self.write_memory("INSTR", pc, words)
        self.link.write_regs(self.map["SEQ_PC"].addr, [pc, iters, in_stride, out_stride])
        self.link.run(RunUnit.PROGRAM)
        if wait:
            self.wait_idle(0b1001)
            state = self.fields("SEQ_STATE")
            if state["error"]:
                raise DeviceError(f"the sequencer stopped on an invalid instruction at {state['pc']}")

    def write_verify(self, tile: int, jobs: list[WriteVerifyJob], max_pulses: int = 32,
                     amp_start: int = 1, amp_step: int = 1, amp_max: int | None = None) -> list[WriteVerifyResult]:
        """Program cells with the on-chip write-verify controller (in batches of
        ``soc.wv_jobs``); per-cell results in job order."""
        amp_max = self.cfg.device.pulse_max_amplitude if amp_max is None else amp_max
        check_write_verify(self.cfg, tile, jobs, max_pulses, amp_start, amp_step, amp_max)
        out: list[WriteVerifyResult] = []
        per = self.cfg.soc.wv_jobs                   # the job memory's size: run in batches
        for start in range(0, len(jobs), per):
            out += self._write_verify_batch(tile, jobs[start:start + per], max_pulses, amp_start, amp_step, amp_max)
        return out

    def _write_verify_batch(self, tile, jobs, max_pulses, amp_start, amp_step, amp_max) -> list[WriteVerifyResult]:
        words = [pack(WV_JOB_FIELDS, dict(target=j.target, tol=j.tol, row=j.row, group=j.group, lane=j.lane,
                                          cell=j.cell), "write-verify job") for j in jobs]
        self.write_memory("WV_JOBS", 0, words)
        self.write("WV_TILE", tile=tile)
        self.write("WV_COUNT", count=len(jobs))
        self.write("WV_MAX_PULSES", pulses=max_pulses)
        self.write("WV_AMP", start=amp_start, step=amp_step, max=amp_max)
        self.link.run(RunUnit.WRITE_VERIFY)
        self.wait_idle(0b010)
        out = []
        for w in self.read_memory("WV_RESULTS", 0, len(jobs)):
            r = unpack(WV_RESULT_FIELDS, w)
            out.append(WriteVerifyResult(cast(WriteVerifyStatus, r["status"]), r["pulses"], r["error"]))  # the raw field
        return out

    def _cell(self, tile: int, row: int, unit: int, cell: int) -> None:
        self._tile(tile)
        dp = self.cfg.datapath
        if not (0 <= row < self.cfg.array.rows and 0 <= unit < dp.units and 0 <= cell < dp.cells_per_unit):
            raise InputRangeError(f"cell ({row}, {unit}, {cell}) outside the tile")
        lanes = self.cfg.array.mac_lanes
        self.write("CELL_ADDR", tile=tile, row=row, cell=cell)
        self.write("CELL_UNIT", group=unit // lanes, lane=unit % lanes)

    def read_cell(self, tile: int, row: int, unit: int, cell: int) -> int:
        """One verify read (effective state plus verify read noise), in state LSBs."""
        self._cell(tile, row, unit, cell)
        self.write("CELL_OP", pulse=0)
        self.wait_idle(0b100)
        return self.fields("CELL_RESULT")["value"]

    def pulse_cell(self, tile: int, row: int, unit: int, cell: int, polarity: int, amplitude: int) -> int:
        """One programming pulse; returns the cell's state after it."""
        if polarity not in tuple(Polarity) or not 1 <= amplitude <= self.cfg.device.pulse_max_amplitude:
            raise InputRangeError(f"pulse polarity {polarity} (0/1) / amplitude {amplitude} "
                                  f"(1..{self.cfg.device.pulse_max_amplitude})")
        self._cell(tile, row, unit, cell)
        self.write("CELL_OP", pulse=1, polarity=polarity, amplitude=amplitude)
        self.wait_idle(0b100)
        return self.fields("CELL_RESULT")["value"]
