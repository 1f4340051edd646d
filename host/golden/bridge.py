"""Reference model of the host bridge (:mod:`cimstack.rtl.bridge`): the answers the chip gives
to any byte stream, with a shadow of its readable memories and read/write registers and its
link counters. The frame-decoder fuzz test predicts the RTL's every answer with it."""
from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Sequence

from cimstack.chip.config import ChipConfig
from cimstack.chip.enums import RunUnit
from cimstack.chip.protocol import (
    CRC_BYTES,
    ESC,
    ESC_XOR,
    FLAG,
    HEADER_BYTES,
    RESPONSE_BIT,
    Deframer,
    ErrorCode,
    Frame,
    Op,
    split_words,
)
from cimstack.chip.regmap import RegisterMap

__all__ = ["BridgeModel", "Unmodelled", "MUTATING"]

#: requests a retransmission (the seq of the last success again) must not apply twice
MUTATING = (Op.WRITE_REG, Op.WRITE_MEM, Op.RUN)
#: the error code of a body the Deframer rejects, by its reason (others: BAD_LENGTH)
REJECTED = {"bad CRC": ErrorCode.BAD_CRC, "overflow": ErrorCode.OVERFLOW}


class Unmodelled(Exception):
    """A request whose effect the model does not cover: it would write a command register or a
    write-only space, or start a unit."""


class BridgeModel:
    """The host bridge as docs/protocol.md specifies it (the order of checks inside one
    request as rtl/bridge.py makes them), with a shadow of every readable memory word and
    read/write register and the link counters.

    :meth:`send` takes wire bytes and returns the answers they must get: the host
    :class:`Deframer` cuts the bodies, each rejected body gets one ERROR frame, each good one is
    executed on the shadow. Its answers are ``(Frame, words of the payload not compared)``.

    The RTL receiver and ``Deframer(max_body=max_payload + 6)`` cut and judge bodies alike: FLAG
    ends a body and an ESC before it is dropped, empty bodies are ignored, a body of exactly
    max_payload + 6 bytes still fits, and the checks come in the same order (overflow, shorter
    than 6 bytes, CRC, length field). The Deframer names two causes the RTL answers with one
    code (a short body and a wrong length field are both BAD_LENGTH)."""

    def __init__(self, cfg: ChipConfig, rm: RegisterMap):
        self.mp = cfg.soc.max_payload
        self.regs = {r.addr: r for r in rm.registers}
        self.spaces = {s.space: s for s in rm.spaces}
        self.mask = {s.space: (1 << s.word_bits) - 1 for s in rm.spaces}
        self.mem = {s.space: [0] * s.depth for s in rm.spaces if s.access == "rw"}     # reset: 0
        self.reg = {r.addr: r.reset for r in rm.registers if r.access == "rw"}
        self.deframer = Deframer(max_body=self.mp + HEADER_BYTES + CRC_BYTES)
        self.head: list[int] = []            # the current body's first two bytes, unstuffed
        self.esc = False
        self.frames_ok = self.errors = self.dups = 0
        self.last_ok: int | None = None      # seq of the last successful answer (protocol 3.0)
        self.codes: Counter[str] = Counter()  # ERROR answers predicted, by code
        self.writes = 0                      # requests that changed the shadow

    def send(self, wire: bytes) -> list[tuple[Frame, Sequence[int]]]:
        out: list[tuple[Frame, Sequence[int]]] = []
        for b in wire:
            # the RTL answers a rejected body with the body's own first two bytes as seq and op
            # (0 where the body is shorter); the spec only says "an arbitrary seq", but a
            # stale header from an earlier frame would show here
            head = self.head
            if b == FLAG:
                self.head, self.esc = [], False
            elif b == ESC:
                self.esc = True
            else:
                if len(self.head) < 2:
                    self.head.append(b ^ ESC_XOR if self.esc else b)
                self.esc = False
            for body in self.deframer.feed(bytes((b,))):
                if isinstance(body, Frame):
                    out.append(self.execute(body))
                else:
                    seq, op = (head + [0, 0])[:2]
                    out.append((self.error(seq, op, REJECTED.get(body, ErrorCode.BAD_LENGTH)), ()))
        return out

    def error(self, seq: int, op: int, code: int) -> Frame:
        self.errors += 1
        self.codes[ErrorCode(code).name] += 1
        return Frame(seq, Op.ERROR, bytes((code, op)))

    def execute(self, f: Frame) -> tuple[Frame, Sequence[int]]:
        self.frames_ok += 1
        code, payload, ignore, apply = self.decide(f)
        if f.op in MUTATING and f.seq == self.last_ok:
            self.dups += 1
        if code:
            return self.error(f.seq, f.op, code), ()
        if apply:
            apply()
            self.writes += 1
        self.last_ok = f.seq
        return Frame(f.seq, f.op | RESPONSE_BIT, payload), ignore

    def decide(self, f: Frame) -> tuple[int, bytes, Sequence[int], Callable[[], None] | None]:
        """(error code or 0, answer payload, answer words not compared, what it applies)
        for a body with a good CRC and length; raises :class:`Unmodelled` for a request whose
        effect the shadow does not model (wo register, wo space, RUN)."""
        op, p, mp = f.op, f.payload, self.mp
        if op in MUTATING and f.seq == self.last_ok:
            return 0, b"", (), None                          # a retransmission: acknowledged, not applied
        if op == Op.ECHO:
            return 0, p, (), None
        if op == Op.STATUS:
            return (ErrorCode.BAD_LENGTH, b"", (), None) if p else (0, bytes(8), (1,), None)   # CYCLES varies
        if op == Op.READ_REG:
            if len(p) != 4:
                return ErrorCode.BAD_LENGTH, b"", (), None
            addr, count = struct.unpack("<HH", p)
            if count == 0 or count > mp // 4:
                return ErrorCode.BAD_LENGTH, b"", (), None
            addrs = [(addr + i) & 0xFFFF for i in range(count)]
            if any(a not in self.regs for a in addrs):
                return ErrorCode.BAD_ADDRESS, b"", (), None
            values = struct.pack(f"<{count}I", *(self.reg_value(a) for a in addrs))
            return 0, values, [i for i, a in enumerate(addrs) if self.regs[a].name == "CYCLES"], None
        if op == Op.WRITE_REG:
            if len(p) < 6 or len(p) % 4 != 2:
                return ErrorCode.BAD_LENGTH, b"", (), None
            (addr,) = struct.unpack_from("<H", p)
            values = split_words(p[2:], 4)
            addrs = [(addr + i) & 0xFFFF for i in range(len(values))]
            if any(a not in self.regs or self.regs[a].access == "ro" for a in addrs):
                return ErrorCode.BAD_ADDRESS, b"", (), None
            if any(self.regs[a].access != "rw" for a in addrs):
                raise Unmodelled("a write-only (command) register")

            def apply():
                for a, v in zip(addrs, values):
                    self.reg[a] = v & self.regs[a].mask
            return 0, b"", (), apply
        if op == Op.READ_MEM:
            if len(p) != 5:
                return ErrorCode.BAD_LENGTH, b"", (), None
            space, addr, count = struct.unpack("<BHH", p)
            sp = self.spaces.get(space)
            if sp is None or sp.access != "rw" or count == 0 or addr + count > sp.depth:
                return ErrorCode.BAD_ADDRESS, b"", (), None
            if count * sp.word_bytes > mp:
                return ErrorCode.BAD_LENGTH, b"", (), None
            words = self.mem[space][addr:addr + count]
            return 0, b"".join(w.to_bytes(sp.word_bytes, "little") for w in words), (), None
        if op == Op.WRITE_MEM:
            # a payload too short to hold the space byte is BAD_LENGTH whatever follows it
            if len(p) < 3:
                return ErrorCode.BAD_LENGTH, b"", (), None
            space, addr = struct.unpack_from("<BH", p)
            sp = self.spaces.get(space)
            if sp is None:
                return ErrorCode.BAD_ADDRESS, b"", (), None
            if len(p) < 3 + sp.word_bytes or (len(p) - 3) % sp.word_bytes:
                return ErrorCode.BAD_LENGTH, b"", (), None
            words = split_words(p[3:], sp.word_bytes)
            if addr + len(words) > sp.depth:
                return ErrorCode.BAD_ADDRESS, b"", (), None
            if sp.access != "rw":
                raise Unmodelled("a tile's crossbar or post-processing memory")

            def apply():
                for i, w in enumerate(words):
                    self.mem[space][addr + i] = w & self.mask[space]
            return 0, b"", (), apply
        if op == Op.RUN:
            if len(p) != 1:
                return ErrorCode.BAD_LENGTH, b"", (), None
            if p[0] >= len(RunUnit):
                return ErrorCode.BAD_ADDRESS, b"", (), None
            raise Unmodelled("RUN")
        return ErrorCode.BAD_OPCODE, b"", (), None

    def reg_value(self, addr: int) -> int:
        r = self.regs[addr]
        if r.access == "rw":
            return self.reg[addr]
        counters = {"LINK_FRAMES": self.frames_ok, "LINK_ERRORS": self.errors, "LINK_DUPLICATES": self.dups}
        if r.name in counters:
            return counters[r.name] & r.mask
        # constants; command registers and idle engines' status read 0
        return r.reset & r.mask if r.const else 0

    def safe(self, wire: bytes) -> bool:
        """Whether every good body in ``wire`` (sent from a frame boundary) is one the shadow
        models; changes nothing."""
        try:
            for body in Deframer(max_body=self.mp + HEADER_BYTES + CRC_BYTES).feed(wire):
                if isinstance(body, Frame):
                    self.decide(body)
        except Unmodelled:
            return False
        return True
