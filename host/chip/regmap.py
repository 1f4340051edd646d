"""The SoC's register map and memory spaces, declared once.

Everything else is generated from :func:`register_map`: the RTL decoder
(:class:`cimstack.rtl.regs.RegisterFile`), the host's register access
(:class:`cimstack.link.client.Device`), and the JSON, Markdown and C header that
``cimstack gen`` writes. Never copy an address by hand.

Registers are 32 bits wide and word-addressed (address ``n`` is the n-th register). Access:

``ro``
    read-only; the hardware drives it.
``rw``
    read/write; holds what the host wrote (reset value at power-up).
``wo``
    write-only command register: writing starts an action; it reads back as 0.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any

from cimstack.chip import prng
from cimstack.chip.bitfields import Field, index_bits, pack, unpack
from cimstack.chip.config import ChipConfig
from cimstack.chip.datapath import memory_word_bits
from cimstack.chip.enums import Polarity, WriteVerifyStatus

__all__ = ["Field", "Register", "MemorySpace", "RegisterMap", "register_map", "ID_MAGIC",
           "PROTOCOL_VERSION", "TILE_REG_BASE", "TILE_REG_STRIDE", "WV_JOB_FIELDS", "WV_RESULT_FIELDS"]

ID_MAGIC = 0x434D5343            # "CSMC" little-endian bytes: b"CSMC"
PROTOCOL_VERSION = (3, 0)
TILE_REG_BASE = 0x100
TILE_REG_STRIDE = 0x10

# words of the WV_JOBS and WV_RESULTS memory spaces (contiguous from bit 0: the RTL's layouts)
WV_JOB_FIELDS = (
    Field("target", 0, 16, "target state, state LSBs"), Field("tol", 16, 8, "tolerance, state LSBs"),
    Field("row", 24, 16, "row"), Field("group", 40, 8, "MAC lane group"), Field("lane", 48, 8, "lane"),
    Field("cell", 56, 1, "0 G+, 1 G-"),
)
WV_RESULT_FIELDS = (
    Field("status", 0, 2, "0 pending, 1 converged, 2 failed, 3 stuck", enum=WriteVerifyStatus),
    Field("reserved", 2, 2, "0"),
    Field("pulses", 4, 12, "pulses applied"), Field("error", 16, 16, "last read minus target", signed=True),
)


@dataclass(frozen=True)
class Register:
    name: str
    addr: int
    access: str                       # "ro" | "rw" | "wo"
    doc: str
    fields: tuple[Field, ...]
    reset: int = 0
    const: bool = False               # read-only constant the register file itself holds

    @property
    def mask(self) -> int:
        """The bits its fields cover: the only bits a rw register stores."""
        return functools.reduce(int.__or__, (f.mask for f in self.fields), 0)

    def pack(self, **values: int) -> int:
        """The register word with the named fields set (others zero)."""
        return pack(self.fields, values, self.name)

    def unpack(self, word: int) -> dict[str, int]:
        return unpack(self.fields, word)


@dataclass(frozen=True)
class MemorySpace:
    """A memory the host reads or writes in bulk (``READ_MEM`` / ``WRITE_MEM``)."""

    name: str
    space: int                        # the space byte of the protocol
    word_bytes: int                   # bytes per word on the link, little-endian
    word_bits: int                    # meaningful bits of a word
    depth: int                        # words
    access: str                       # "rw" | "wo"
    doc: str
    tile: int | None = None


def _f(name: str, offset: int, width: int, doc: str, signed: bool = False,
       enum: type[IntEnum] | None = None) -> Field:
    return Field(name, offset, width, doc, signed, enum)


def _whole(doc: str, signed: bool = False) -> tuple[Field, ...]:
    return (Field("value", 0, 32, doc, signed),)


@dataclass(frozen=True)
class RegisterMap:
    config_name: str
    config_hash: int
    registers: tuple[Register, ...]
    spaces: tuple[MemorySpace, ...]
    by_name: dict[str, Register] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "by_name", {r.name: r for r in self.registers})
        addrs = [r.addr for r in self.registers]
        assert len(set(addrs)) == len(addrs), "register addresses collide"

    def __getitem__(self, name: str) -> Register:
        try:
            return self.by_name[name]
        except KeyError:
            raise KeyError(f"no register {name!r}") from None

    def space(self, name: str) -> MemorySpace:
        for s in self.spaces:
            if s.name == name:
                return s
        raise KeyError(f"no memory space {name!r}")

    def to_json(self) -> str:
        def register(r: Register) -> dict[str, Any]:
            # a field's enum is the RTL's and the host's business, not the file's
            return asdict(r) | {"fields": [{k: v for k, v in asdict(f).items() if k != "enum"} for f in r.fields]}

        return json.dumps({
            "config": self.config_name, "config_hash": f"0x{self.config_hash:08x}",
            "protocol_version": list(PROTOCOL_VERSION),
            "registers": [register(r) for r in self.registers],
            "memory_spaces": [asdict(s) for s in self.spaces],
        }, indent=2)


def _layout(fields: tuple[Field, ...]) -> str:
    return " | ".join(f"{f.name} ({f.width}{', signed' if f.signed else ''}: {f.doc})" for f in fields) + ", from bit 0 up."


def register_map(cfg: ChipConfig) -> RegisterMap:
    """The register map and memory spaces of the SoC built from ``cfg``.

    Fields that hold a tile, row, lane group, lane, buffer address, instruction address or job
    count are as wide as the config needs (offsets are fixed): the chip stores only field bits,
    so a small chip stores fewer, and the host refuses a value that does not fit."""
    dp, a, s = cfg.datapath, cfg.array, cfg.soc
    tile_w, act_w = index_bits(a.tiles), index_bits(s.act_words)
    regs = [
        Register("ID", 0x000, "ro", "Identifies a cimstack SoC: the bytes 'CSMC'.", _whole("magic"), ID_MAGIC, const=True),
        Register("VERSION", 0x001, "ro", "Protocol and register-map version.",
                 (_f("minor", 0, 16, "minor version"), _f("major", 16, 16, "major version")),
                 PROTOCOL_VERSION[0] << 16 | PROTOCOL_VERSION[1], const=True),
        Register("CONFIG_HASH", 0x002, "ro",
                 "First 4 bytes (little-endian) of the SHA-256 of the chip config's TOML the gateware "
                 "was built from; the host refuses to drive a chip whose hash differs from its config.",
                 _whole("hash"), dp.config_hash, const=True),
        Register("GEOMETRY", 0x003, "ro", "Tile geometry.",
                 (_f("tiles", 0, 8, "number of tiles"), _f("lanes", 8, 8, "MAC lanes per tile"),
                  _f("groups", 16, 8, "MAC lane groups per row"),
                  _f("cells", 24, 2, "cells per column unit (2 differential, 1 offset)")),
                 a.tiles | a.mac_lanes << 8 | dp.groups << 16 | dp.cells_per_unit << 24, const=True),
        Register("SIZE", 0x004, "ro", "Tile rows and columns.",
                 (_f("rows", 0, 16, "rows per tile"), _f("cols", 16, 16, "logical columns per tile")),
                 a.rows | a.cols << 16, const=True),
        Register("STATUS", 0x005, "ro", "What is running.",
                 (_f("vmm_busy", 0, 1, "the sequencer is running (a single VMM or a program)"),
                  _f("wv_busy", 1, 1, "the write-verify controller is running a job list"),
                  _f("cell_busy", 2, 1, "a single-cell operation is in progress"),
                  _f("seq_busy", 3, 1, "a sequencer program is running"))),
        Register("CYCLES", 0x006, "ro", "Free-running system clock cycle counter (wraps at 2**32).",
                 _whole("cycles")),
        Register("SCRATCH", 0x007, "rw", "Scratch register for link tests; no effect.", _whole("value")),
        Register("SEED_KEY", 0x008, "rw",
                 "Key of the seed every on-chip random generator restarts from on RESEED: "
                 "seed * 0x9E3779B1 mod 2**32 (cimstack.chip.prng.seed_key; Device.reseed writes it).",
                 _whole("key"), prng.seed_key(cfg.seed)),
        Register("CONTROL", 0x009, "wo", "Chip-wide commands.",
                 (_f("reseed", 0, 1, "restart every generator (read noise, cell update, verify) from SEED_KEY"),)),
        Register("LINK_FRAMES", 0x00A, "ro", "Frames received with a good CRC (wraps).", _whole("count")),
        Register("LINK_ERRORS", 0x00B, "ro",
                 "Frames rejected (bad CRC, bad length, overflow, unknown opcode or address) (wraps).",
                 _whole("count")),
        Register("LINK_DUPLICATES", 0x00C, "ro",
                 "Writes and RUNs received again with the seq of the last success: acknowledged, not "
                 "applied a second time (host retransmissions after a lost answer) (wraps).",
                 (_f("count", 0, 16, "retransmissions acknowledged"),)),
        # single VMM through the sequencer (RUN unit 0)
        Register("VMM_TILE", 0x010, "rw", "Tile a single VMM (RUN unit 0) runs on.", (_f("tile", 0, tile_w, "tile index"),)),
        Register("VMM_SRC", 0x011, "rw",
                 "Activation-buffer address of the input vector (rows words, each clamped to the "
                 "input range).", (_f("addr", 0, act_w, "word address"),)),
        Register("VMM_DST", 0x012, "rw", "Activation-buffer address the cols outputs are written to.",
                 (_f("addr", 0, act_w, "word address"),)),
        Register("VMM_FLAGS", 0x013, "rw", "VMM options.",
                 (_f("accumulate", 0, 1, "add the outputs to the buffer (wrapping 32-bit) instead of storing them"),
                  _f("mode", 1, 2, "input mode: 0 the config's, 1 bit_serial, 2 amplitude, 3 unary"))),
        Register("VMM_CYCLES", 0x014, "ro", "Clock cycles the last VMM instruction took, from its start to its last output stored.",
                 _whole("cycles")),
        # sequencer
        Register("SEQ_PC", 0x030, "rw", "Instruction address a program run (RUN unit 2) starts at.",
                 (_f("pc", 0, index_bits(s.instr_words), "instruction address"),)),
        Register("SEQ_ITERS", 0x031, "rw", "Iterations of the program's LOOP (the batch size).",
                 (_f("iters", 0, 16, "iterations"),), 1),
        Register("SEQ_IN_STRIDE", 0x032, "rw", "Words COPY adds to src per iteration when src_iter is set.",
                 (_f("stride", 0, act_w, "words"),)),
        Register("SEQ_OUT_STRIDE", 0x033, "rw", "Words COPY adds to dst per iteration when dst_iter is set.",
                 (_f("stride", 0, act_w, "words"),)),
        Register("SEQ_STATE", 0x034, "ro", "Where the sequencer is.",
                 (_f("pc", 0, 12, "current instruction address"), _f("iteration", 16, 15, "loop iteration"),
                  _f("error", 31, 1, "the last program hit an invalid opcode"))),
        Register("SEQ_EXECUTED", 0x035, "ro", "Instructions the last program executed.", _whole("count")),
        Register("SEQ_CYCLES", 0x036, "ro", "Clock cycles the last program ran, RUN to HALT.", _whole("cycles")),
        # write-verify
        Register("WV_TILE", 0x018, "rw", "Tile the write-verify job list programs.",
                 (_f("tile", 0, tile_w, "tile index"),)),
        Register("WV_COUNT", 0x019, "rw", "Number of jobs (from entry 0 of WV_JOBS) the next run processes.",
                 (_f("count", 0, s.wv_jobs.bit_length(), "jobs"),)),
        Register("WV_MAX_PULSES", 0x01A, "rw", "Pulse budget per cell.", (_f("pulses", 0, 10, "pulses"),), 32),
        Register("WV_AMP", 0x01B, "rw",
                 "Pulse amplitude schedule: start, increment per repeated same-polarity pulse, limit.",
                 (_f("start", 0, 8, "first amplitude"), _f("step", 8, 8, "increment"),
                  _f("max", 16, 8, "largest amplitude")),
                 1 | 1 << 8 | min(255, cfg.device.pulse_max_amplitude) << 16),
        Register("WV_DONE", 0x01C, "ro", "Jobs finished in the current or last run.", (_f("count", 0, 16, "jobs"),)),
        # single-cell access
        Register("CELL_ADDR", 0x020, "rw", "The cell CELL_OP acts on.",
                 (_f("tile", 0, tile_w, "tile"), _f("row", 8, index_bits(a.rows), "row"),
                  _f("cell", 24, 1, "0 = G+, 1 = G-"))),
        Register("CELL_UNIT", 0x021, "rw", "The cell's column unit as group and lane.",
                 (_f("group", 0, index_bits(dp.groups), "MAC lane group"),
                  _f("lane", 8, index_bits(a.mac_lanes), "lane in the group"))),
        Register("CELL_OP", 0x022, "wo", "Start a single-cell operation; poll STATUS.cell_busy.",
                 (_f("pulse", 0, 1, "0: read the cell (with verify read noise), 1: apply one pulse"),
                  _f("polarity", 1, 1, "0 SET (conductance up), 1 RESET (down)", enum=Polarity),
                  _f("amplitude", 8, 8, "pulse amplitude 1..device.pulse_max_amplitude"))),
        Register("CELL_RESULT", 0x023, "ro",
                 "Result of the last CELL_OP: the noisy read in state LSBs, or the state after a pulse.",
                 _whole("value", signed=True)),
    ]
    for t in range(a.tiles):
        base = TILE_REG_BASE + TILE_REG_STRIDE * t
        regs += [
            Register(f"TILE{t}_ADC_GAIN", base, "rw", f"Tile {t}: ADC gain (integration time), code = sum * gain >> gain_shift.",
                     (_f("gain", 0, 8, "gain 1..255"),), cfg.adc.gain),
            Register(f"TILE{t}_ADC_OFFSET", base + 1, "rw", f"Tile {t}: ADC offset in ADC LSBs.",
                     (_f("offset", 0, cfg.adc.bits, "offset", signed=True),), cfg.adc.offset & ((1 << cfg.adc.bits) - 1)),
            Register(f"TILE{t}_RELU", base + 2, "rw", f"Tile {t}: ReLU after post-processing.",
                     (_f("relu", 0, 1, "1 = clamp negative outputs to 0"),), int(cfg.post.relu)),
        ]

    xbar_bits = memory_word_bits(cfg)
    post_bits = cfg.post.bias_bits + cfg.post.scale_bits
    spaces = [
        MemorySpace("ACT", 0x00, 4, 32, s.act_words, "rw",
                    "Activation buffer: signed 32-bit inputs and outputs of VMMs."),
        MemorySpace("INSTR", 0x03, 8, 64, s.instr_words, "rw",
                    "Sequencer program: 64-bit instructions (docs/soc.md)."),
        # the job memory keeps the job layout's bits only (57): wider bits read back as 0
        MemorySpace("WV_JOBS", 0x01, 8, max(f.offset + f.width for f in WV_JOB_FIELDS), s.wv_jobs, "rw",
                    "Write-verify jobs: " + _layout(WV_JOB_FIELDS)),
        MemorySpace("WV_RESULTS", 0x02, 4, 32, s.wv_jobs, "rw", "Write-verify results: " + _layout(WV_RESULT_FIELDS)),
    ]
    for t in range(a.tiles):
        spaces.append(MemorySpace(f"TILE{t}_XBAR", 0x10 + t, (xbar_bits + 7) // 8, xbar_bits,
                                  dp.groups * a.rows, "wo",
                                  f"Tile {t} crossbar words (address group * rows + row; layout in docs/datapath.md).",
                                  tile=t))
        spaces.append(MemorySpace(f"TILE{t}_POST", 0x40 + t, (post_bits + 7) // 8, post_bits, a.cols, "wo",
                                  f"Tile {t} post-processing: bias ({cfg.post.bias_bits}, signed) | "
                                  f"scale ({cfg.post.scale_bits}) per column.", tile=t))
    return RegisterMap(cfg.name, dp.config_hash, tuple(regs), tuple(spaces))
