"""The host link's frame format, shared by the host (:class:`cimstack.link.Link`) and the
gateware (:mod:`cimstack.rtl.bridge`). ``docs/protocol.md`` is the full specification.

On the wire a frame is ``FLAG  stuffed(body)  FLAG`` with HDLC-style byte stuffing: FLAG
(0x7E) and ESC (0x7D) inside the body are sent as ESC followed by the byte XOR 0x20. A
receiver drops whatever it was collecting when it sees FLAG, so it resynchronises after
garbage at the next frame. The body is::

    seq (1) | op (1) | length (2, little-endian) | payload (length) | crc (2, big-endian)

with ``crc`` the CRC-16/XMODEM of seq .. payload, sent high byte first so that the CRC over
the whole body is zero (the receiver's check).
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Protocol

from amaranth.lib.crc import catalog  # pyright: ignore[reportMissingTypeStubs]  # amaranth ships no stubs or py.typed

__all__ = ["FLAG", "ESC", "Op", "ErrorCode", "Frame", "crc16", "encode_frame", "Deframer",
           "RESPONSE_BIT", "HEADER_BYTES", "CRC_BYTES", "read_reg_payload", "write_reg_payload",
           "read_mem_payload", "write_mem_payload", "split_words"]

FLAG, ESC, ESC_XOR = 0x7E, 0x7D, 0x20
RESPONSE_BIT = 0x80
HEADER_BYTES, CRC_BYTES = 4, 2
CRC = catalog.CRC16_XMODEM(data_width=8)


class _CrcCompute(Protocol):
    """What :func:`crc16` uses of :data:`CRC` (amaranth's ``Parameters.compute`` is unannotated)."""

    def compute(self, data: bytes) -> int: ...


_CRC: _CrcCompute = CRC


class Op(enum.IntEnum):
    """Request opcodes; a successful response carries ``op | 0x80``, a failure ``ERROR``."""

    ECHO = 0x00        # payload: anything                 -> the same payload
    READ_REG = 0x01    # addr u16, count u16               -> count x u32
    WRITE_REG = 0x02   # addr u16, value u32 x n           -> empty
    READ_MEM = 0x03    # space u8, addr u16, count u16     -> count x word_bytes
    WRITE_MEM = 0x04   # space u8, addr u16, words         -> empty
    RUN = 0x05         # unit u8 (0 single VMM, 1 write-verify, 2 sequencer program) -> empty
    STATUS = 0x06      # empty                             -> STATUS u32, CYCLES u32
    ERROR = 0x7F       # response only: code u8, request op u8


class ErrorCode(enum.IntEnum):
    BAD_CRC = 1        # the body's CRC did not check
    BAD_LENGTH = 2     # body shorter than header + CRC, length field disagrees, or payload malformed
    BAD_OPCODE = 3     # unknown request opcode
    BAD_ADDRESS = 4    # register or memory address (or space, or unit) outside the map, or not writable
    BUSY = 5           # RUN of a unit that is running, or memory access that would disturb it
    OVERFLOW = 6       # body longer than soc.max_payload + header + CRC


def crc16(data: bytes) -> int:
    return _CRC.compute(data)


@dataclass(frozen=True)
class Frame:
    seq: int
    op: int
    payload: bytes = b""

    def body(self) -> bytes:
        head = struct.pack("<BBH", self.seq & 0xFF, self.op & 0xFF, len(self.payload)) + self.payload
        return head + crc16(head).to_bytes(2, "big")


def stuff(body: bytes) -> bytes:
    out = bytearray()
    for b in body:
        if b in (FLAG, ESC):
            out += bytes((ESC, b ^ ESC_XOR))
        else:
            out.append(b)
    return bytes(out)


def encode_frame(frame: Frame) -> bytes:
    """Wire bytes of one frame (leading and trailing FLAG)."""
    return bytes((FLAG,)) + stuff(frame.body()) + bytes((FLAG,))


class Deframer:
    """Incremental receiver: feed wire bytes, get complete bodies' parse results.

    :meth:`feed` returns a list whose items are a :class:`Frame` (good CRC, consistent length)
    or a ``str`` naming why a body was rejected. Empty bodies (FLAG FLAG) are ignored.
    """

    def __init__(self, max_body: int = 1 << 20):
        self.max_body = max_body
        self._buf = bytearray()
        self._esc = False
        self._overflow = False

    def feed(self, data: bytes) -> list[Frame | str]:
        out: list[Frame | str] = []
        for b in data:
            if b == FLAG:
                if self._overflow:
                    out.append("overflow")
                elif self._buf:
                    out.append(self._parse(bytes(self._buf)))
                self._buf.clear()
                self._esc = self._overflow = False
            elif self._overflow:
                continue
            elif b == ESC:
                self._esc = True
            else:
                self._buf.append(b ^ ESC_XOR if self._esc else b)
                self._esc = False
                if len(self._buf) > self.max_body:
                    self._overflow = True
        return out

    @staticmethod
    def _parse(body: bytes) -> Frame | str:
        if len(body) < HEADER_BYTES + CRC_BYTES:
            return f"short body ({len(body)} bytes)"
        if crc16(body) != 0:
            return "bad CRC"
        seq, op, length = struct.unpack_from("<BBH", body)
        if length != len(body) - HEADER_BYTES - CRC_BYTES:
            return f"length field {length} but {len(body) - HEADER_BYTES - CRC_BYTES} payload bytes"
        return Frame(seq, op, body[HEADER_BYTES:-CRC_BYTES])


# -- request payloads (the one place their byte layout is written down on the host) ------------

def read_reg_payload(addr: int, count: int = 1) -> bytes:
    return struct.pack("<HH", addr, count)


def write_reg_payload(addr: int, values: list[int]) -> bytes:
    return struct.pack("<H", addr) + b"".join(struct.pack("<I", v & 0xFFFF_FFFF) for v in values)


def read_mem_payload(space: int, addr: int, count: int) -> bytes:
    return struct.pack("<BHH", space, addr, count)


def write_mem_payload(space: int, addr: int, words: list[int], word_bytes: int) -> bytes:
    return struct.pack("<BH", space, addr) + b"".join(
        (int(w) & ((1 << (8 * word_bytes)) - 1)).to_bytes(word_bytes, "little") for w in words)


def split_words(data: bytes, word_bytes: int) -> list[int]:
    return [int.from_bytes(data[i:i + word_bytes], "little") for i in range(0, len(data), word_bytes)]
