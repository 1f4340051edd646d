"""The sequencer's instruction set, declared once: the assembler and disassembler here, the
RTL decoder (:mod:`cimstack.rtl.sequencer`), the golden interpreter
(:meth:`cimstack.golden.GoldenSoC.run_program`) and the generated documentation all read
:data:`OPCODES`.

Instructions are 64-bit words; bits 0..3 hold the opcode. A program sits in the ``INSTR``
memory space; RUN unit 2 starts it at register ``SEQ_PC`` with the loop counter at 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cimstack.chip.bitfields import Field, pack, unpack
from cimstack.chip.config import ChipConfig
from cimstack.chip.enums import InputEncoding
from cimstack.errors import InputRangeError

__all__ = ["Field", "Opcode", "OPCODES", "Instr", "assemble", "disassemble", "check_program",
           "HALT", "VMM", "POST", "COPY", "FILL", "LOOP", "OP_FIELD", "isa_markdown", "mode_name",
           "mode_field"]


@dataclass(frozen=True)
class Opcode:
    name: str
    code: int
    fields: tuple[Field, ...]
    doc: str


OP_BITS = 4
OP_FIELD = Field("op", 0, OP_BITS, "opcode")       # below every opcode's fields
HALT, VMM, POST, COPY, FILL, LOOP = range(6)

OPCODES: dict[str, Opcode] = {o.name: o for o in (
    Opcode("HALT", HALT, (), "Stop; STATUS.seq_busy clears."),
    Opcode("VMM", VMM, (
        Field("tile", 4, 6, "first tile"),
        Field("count", 10, 6, "number of tiles (tile .. tile+count-1), at least 1"),
        Field("src", 16, 16, "activation address of the input vector"),
        Field("dst", 32, 16, "activation address of the outputs"),
        Field("acc", 48, 1, "add the outputs (32-bit wrap-around) instead of storing them"),
        Field("split_rows", 49, 1, "tile k reads src + k*rows (a layer split by rows); else every tile "
                                   "gets the same input, multicast by the router"),
        Field("split_cols", 50, 1, "tile k writes dst + k*cols (a layer split by columns); else all "
                                   "write dst (then acc must be set when count > 1)"),
        Field("mode", 51, 2, "input mode: 0 the config's input.mode, 1 bit_serial, 2 amplitude (input.dac_bits "
                             "per pulse), 3 unary"),
    ), "VMM on one or more tiles through the router; waits for every output."),
    Opcode("POST", POST, (
        Field("src", 4, 16, "first source word"),
        Field("dst", 20, 16, "first destination word"),
        Field("n", 36, 12, "words"),
        Field("mul", 48, 8, "multiplier", signed=True),
        Field("shift", 56, 5, "right shift with rounding (add half, arithmetic shift)"),
        Field("relu", 61, 1, "clamp negative results to 0"),
    ), "Digital post-processing: dst[i] = sat32(relu(round_shift(src[i] * mul, shift))), ascending i."),
    Opcode("COPY", COPY, (
        Field("src", 4, 16, "first source word"),
        Field("dst", 20, 16, "first destination word"),
        Field("n", 36, 12, "words"),
        Field("src_iter", 48, 1, "add iteration * SEQ_IN_STRIDE to src"),
        Field("dst_iter", 49, 1, "add iteration * SEQ_OUT_STRIDE to dst"),
    ), "dst[i] = src[i], ascending i: loads a batch element's input, stores its output."),
    Opcode("FILL", FILL, (
        Field("dst", 4, 16, "first word"),
        Field("n", 20, 12, "words"),
        Field("value", 32, 32, "value", signed=True),
    ), "dst[i] = value (clears accumulators before a row-split VMM)."),
    Opcode("LOOP", LOOP, (
        Field("target", 4, 12, "instruction address to jump back to"),
    ), "iteration += 1; jump to target while iteration < SEQ_ITERS."),
)}
BY_CODE = {o.code: o for o in OPCODES.values()}


def mode_name(field_value: int) -> str | None:
    """The input mode a VMM's ``mode`` field (instruction ``VMM``, register ``VMM_FLAGS``)
    selects: ``None`` for 0, the config's own; else the :class:`InputEncoding` ``field - 1``."""
    return None if field_value == 0 else InputEncoding(field_value - 1).config_name


def mode_field(name: str | None) -> int:
    """The ``mode`` field value that selects input mode ``name`` (``None``: the config's own)."""
    return 0 if name is None else InputEncoding.from_config(name) + 1


@dataclass(frozen=True)
class Instr:
    op: str
    args: dict[str, int]

    def __str__(self) -> str:
        return f"{self.op} " + ", ".join(f"{k}={v}" for k, v in self.args.items())


def decode(word: int) -> Instr:
    op = BY_CODE.get(word & ((1 << OP_BITS) - 1))
    if op is None:
        raise InputRangeError(f"instruction 0x{word:016x} has no valid opcode")
    return Instr(op.name, unpack(op.fields, word))


def check_program(program: list[Instr], cfg: ChipConfig, base: int = 0) -> None:
    """Reject programs the chip would not run as meant: addresses outside the buffer, tiles
    outside the chip, tiles overwriting each other, loops to nowhere, no HALT. ``base`` is the
    instruction address the program is loaded at (LOOP targets are absolute)."""
    a, n_act = cfg.array, cfg.soc.act_words
    if base < 0 or base + len(program) > cfg.soc.instr_words:
        raise InputRangeError(f"program of {len(program)} instructions at {base} exceeds soc.instr_words = {cfg.soc.instr_words}")
    if not program or program[-1].op != "HALT":
        raise InputRangeError("a program must end with HALT")
    for pc, ins in enumerate(program):
        if ins.op not in OPCODES:
            raise InputRangeError(f"instruction {pc}: unknown op {ins.op!r}")
        g = {f.name: int(ins.args.get(f.name, 0)) for f in OPCODES[ins.op].fields}
        where = f"instruction {pc} ({ins})"
        if ins.op == "VMM":
            k = g["count"]
            if k < 1 or g["tile"] + k > a.tiles:
                raise InputRangeError(f"{where}: tiles {g['tile']}..{g['tile'] + k - 1} outside 0..{a.tiles - 1}")
            src_len = a.rows * (k if g["split_rows"] else 1)
            dst_len = a.cols * (k if g["split_cols"] else 1)
            if g["src"] + src_len > n_act or g["dst"] + dst_len > n_act:
                raise InputRangeError(f"{where}: input {src_len} / output {dst_len} words do not fit the {n_act}-word buffer")
            if k > 1 and not g["split_cols"] and not g["acc"]:
                raise InputRangeError(f"{where}: {k} tiles would overwrite each other's outputs (set acc or split_cols)")
            if k > 1 and g["src"] < g["dst"] + dst_len and g["dst"] < g["src"] + src_len:
                raise InputRangeError(f"{where}: outputs overlap the inputs of a multi-tile VMM")
            if g["mode"] and mode_name(g["mode"]) not in cfg.datapath.modes:
                raise InputRangeError(f"{where}: input mode {mode_name(g['mode'])} is not available for "
                                      f"{cfg.input.bits}-bit inputs")
        elif ins.op in ("POST", "COPY", "FILL"):
            if g["n"] < 1:
                raise InputRangeError(f"{where}: n must be at least 1")
            for key in ("src", "dst"):
                if key in g and g[key] + g["n"] > n_act:
                    raise InputRangeError(f"{where}: {key} range ends past the {n_act}-word buffer")
        elif ins.op == "LOOP" and not base <= g["target"] < base + pc:
            raise InputRangeError(f"{where}: LOOP must jump backwards within the program "
                                  f"(addresses {base}..{base + pc - 1})")


def assemble(program: list[Instr] | list[tuple[Any, ...]], cfg: ChipConfig | None = None, base: int = 0) -> list[int]:
    """Instruction words of ``program`` (``Instr`` or ``(op, {field: value})`` tuples);
    checked against ``cfg`` when given, for loading at instruction address ``base``."""
    program = [p if isinstance(p, Instr) else Instr(p[0], dict(p[1]) if len(p) > 1 else {}) for p in program]
    for pc, ins in enumerate(program):
        if ins.op not in OPCODES:
            raise InputRangeError(f"instruction {pc}: unknown op {ins.op!r}; ops: {', '.join(OPCODES)}")
    if cfg is not None:
        check_program(program, cfg, base)
    return [pack(OPCODES[ins.op].fields, ins.args, ins.op, base=OPCODES[ins.op].code) for ins in program]


def disassemble(words: list[int]) -> list[Instr]:
    return [decode(w) for w in words]


def isa_markdown() -> str:
    lines = ["| Opcode | Name | Fields (bit offset:width) | Meaning |", "|---|---|---|---|"]
    for o in OPCODES.values():
        fields = "; ".join(f"`{f.name}` {f.offset}:{f.width}{' signed' if f.signed else ''} — {f.doc}"
                           for f in o.fields) or "—"
        lines.append(f"| {o.code} | `{o.name}` | {fields.replace('|', chr(92) + '|')} | {o.doc} |")
    return "\n".join(lines) + "\n"
