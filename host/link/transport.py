"""The host end of the byte link: frames, sequence numbers, retries and error responses over
any pyserial URL — ``socket://127.0.0.1:PORT`` for the simulation server, ``/dev/ttyUSB0``
for a board. One request is outstanding at a time.
"""
from __future__ import annotations

import os
import struct
import time

import serial

from cimstack.chip.protocol import (
    FLAG,
    RESPONSE_BIT,
    Deframer,
    ErrorCode,
    Frame,
    Op,
    encode_frame,
    read_mem_payload,
    read_reg_payload,
    split_words,
    write_mem_payload,
    write_reg_payload,
)
from cimstack.errors import DeviceError, LinkError, LinkTimeout
from cimstack.link.faults import FaultyPort

__all__ = ["Link", "LinkStats"]


class LinkStats:
    """Byte counters for link-efficiency figures (payload bytes / wire bytes)."""

    def __init__(self):
        self.requests = self.retries = 0
        self.payload_tx = self.payload_rx = self.wire_tx = self.wire_rx = 0

    @property
    def efficiency(self) -> float:
        wire = self.wire_tx + self.wire_rx
        return (self.payload_tx + self.payload_rx) / wire if wire else 0.0


class Link:
    """Request/response access to a cimstack SoC.

    ``timeout`` bounds the wait for one response; a lost or corrupted exchange is retried
    ``retries`` times, then :class:`LinkTimeout`: a device that stops answering is reported
    within ``(retries + 1) * timeout`` seconds.

    Every attempt of one request carries the same ``seq``. The device remembers the seq of
    the last request it answered with success and acknowledges a write or RUN that arrives
    again with it without applying it a second time, so a request whose answer was lost is
    retried safely, RUN included (docs/protocol.md, "Retries"). The first request of a link
    is preceded by an ECHO with a fresh seq, so a new host's first write can never be taken
    for a retransmission of the previous host's last one.
    """

    def __init__(self, url: str, baudrate: int = 115_200, timeout: float = 2.0, retries: int = 3,
                 max_payload: int = 1024, faults=None):
        self.url, self.baudrate, self.faults = url, baudrate, faults
        self.port = None
        self.fault_counts = None              # cimstack.link.faults.FaultCounts over the link's life
        self._fault_plan = self._fault_rng = None
        self._open()
        self.timeout, self.retries, self.max_payload = timeout, retries, max_payload
        self.seq = int.from_bytes(os.urandom(1), "little")
        self.synced = False
        self.deframer = Deframer()
        self.stats = LinkStats()

    # -- lifecycle ----------------------------------------------------------------------------
    def _open(self) -> None:
        """Open the port (through :class:`cimstack.link.faults.FaultyPort` when ``faults`` is set)."""
        try:
            port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=0.05)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkError(f"cannot open link {self.url!r}: {exc}") from None
        if self.faults is not None:
            if self._fault_plan is not self.faults:
                self._fault_plan = self.faults
                port = FaultyPort(port, self.faults)
                self._fault_rng, self.fault_counts = port.rng, port.counts
            else:                                 # a reconnection: the same faults go on
                port = FaultyPort(port, self.faults, self._fault_rng, self.fault_counts)
        self.port = port

    def reconnect(self) -> None:
        """Close and reopen the port, drop any half-received frame, and sync again on the next
        request: what to do after a :class:`LinkTimeout` once the device is back."""
        self.close()
        self._open()
        self.deframer = Deframer()
        self.synced = False

    def close(self) -> None:
        if self.port is not None:
            self.port.close()
            self.port = None

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the exchange ---------------------------------------------------------------------------
    def request(self, op: Op, payload: bytes = b"", reply_bytes: int | None = None) -> bytes:
        """Send one request and return the payload of its successful response.

        A response of the wrong length (``reply_bytes``, by default what the protocol
        prescribes for ``op``; READ_MEM's depends on the space, so its caller passes it)
        raises :class:`LinkError`: with a good CRC it means a device that does not speak this
        protocol, and a short read must not come back as fewer words.
        """
        if reply_bytes is None:
            reply_bytes = _reply_bytes(op, payload)
        if len(payload) > self.max_payload:
            raise LinkError(f"{op.name} payload of {len(payload)} bytes exceeds the device's {self.max_payload}")
        if self.port is None:
            raise LinkError(f"link {self.url!r} is closed")
        if not self.synced:
            self.synced = True                    # before the request, so the ECHO itself does not recurse
            try:
                self.request(Op.ECHO, b"")
            except BaseException:
                self.synced = False
                raise
        self.stats.requests += 1
        last_problem = "no answer"
        self.seq = (self.seq + 1) & 0xFF
        wire = encode_frame(Frame(self.seq, op, payload))
        for attempt in range(self.retries + 1):
            if attempt:
                self._write(bytes((FLAG,)))       # end any partial frame the device is holding
            self._write(wire)
            self.stats.wire_tx += len(wire)
            try:
                reply = self._await(self.seq)
            except LinkTimeout:
                last_problem = f"no answer within {self.timeout} s"
                self.stats.retries += 1
                continue
            if reply.op == Op.ERROR:
                code = reply.payload[0] if reply.payload else 0
                if code == ErrorCode.BAD_CRC and attempt < self.retries:
                    last_problem = "device saw a bad CRC"
                    self.stats.retries += 1
                    continue
                name = ErrorCode(code).name if code in ErrorCode._value2member_map_ else f"code {code}"
                raise DeviceError(f"device refused {op.name} ({len(payload)}-byte payload): {name}", code)
            if reply.op != op | RESPONSE_BIT:
                raise LinkError(f"{op.name} answered with opcode 0x{reply.op:02x}")
            if reply_bytes is not None and len(reply.payload) != reply_bytes:
                raise LinkError(f"{op.name} answered with {len(reply.payload)} payload bytes, "
                                f"the protocol prescribes {reply_bytes}")
            self.stats.payload_tx += len(payload)
            self.stats.payload_rx += len(reply.payload)
            return reply.payload
        raise LinkTimeout(f"{op.name} to {self.url}: {last_problem} after {self.retries + 1} attempt(s)")

    def _write(self, data: bytes) -> None:
        assert self.port is not None                  # request() refuses a closed link
        try:
            self.port.write(data)
            self.port.flush()
        except OSError as exc:
            raise LinkError(f"writing to {self.url} failed: {exc}") from None

    def _await(self, seq: int) -> Frame:
        assert self.port is not None                  # request() refuses a closed link
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                data = self.port.read(max(1, self.port.in_waiting))
            except OSError as exc:
                raise LinkError(f"reading from {self.url} failed: {exc}") from None
            if not data:
                continue
            self.stats.wire_rx += len(data)
            for item in self.deframer.feed(data):
                if isinstance(item, Frame) and item.seq == seq:
                    return item
                # a stale answer (earlier seq) or a damaged frame: keep waiting
        raise LinkTimeout(f"no answer from {self.url} within {self.timeout} s")

    # -- operations -------------------------------------------------------------------------------
    def echo(self, data: bytes) -> bytes:
        return self.request(Op.ECHO, data)

    def read_regs(self, addr: int, count: int = 1) -> list[int]:
        return list(struct.unpack(f"<{count}I", self.request(Op.READ_REG, read_reg_payload(addr, count))))

    def write_regs(self, addr: int, values: list[int]) -> None:
        self.request(Op.WRITE_REG, write_reg_payload(addr, values))

    def read_mem(self, space: int, addr: int, count: int, word_bytes: int) -> list[int]:
        """Read ``count`` words, split into as many requests as the payload limit needs."""
        out: list[int] = []
        per = max(1, self.max_payload // word_bytes)
        while count:
            n = min(per, count)
            reply = self.request(Op.READ_MEM, read_mem_payload(space, addr, n), reply_bytes=n * word_bytes)
            out += split_words(reply, word_bytes)
            addr, count = addr + n, count - n
        return out

    def write_mem(self, space: int, addr: int, words: list[int], word_bytes: int) -> None:
        per = max(1, (self.max_payload - 3) // word_bytes)
        for i in range(0, len(words), per):
            chunk = words[i:i + per]
            self.request(Op.WRITE_MEM, write_mem_payload(space, addr + i, chunk, word_bytes))

    def run(self, unit: int) -> None:
        self.request(Op.RUN, bytes((unit,)))

    def status(self) -> tuple[int, int]:
        """(STATUS register, CYCLES counter)."""
        return struct.unpack("<II", self.request(Op.STATUS))


def _reply_bytes(op: int, payload: bytes) -> int | None:
    """Payload length of the successful response to a request (None: not known here)."""
    if op == Op.ECHO:
        return len(payload)
    if op == Op.READ_REG and len(payload) == 4:
        return 4 * struct.unpack("<HH", payload)[1]
    if op == Op.STATUS:
        return 8
    if op in (Op.WRITE_REG, Op.WRITE_MEM, Op.RUN):
        return 0
    return None
