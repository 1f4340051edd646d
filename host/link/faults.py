"""Fault injection on the host link: a port that drops, duplicates, corrupts, delays and
truncates what passes through it, for testing that the host recovers from every kind of
damage without ever returning a wrong result.

    link = Link("socket://127.0.0.1:40123", faults=Faults(corrupt=0.01, seed=1))

It wraps the pyserial port :class:`cimstack.link.Link` opened. Faults are drawn from a seeded
generator, so a failing run can be replayed. It models a serial line, which loses and damages
bytes but never reorders them: a delayed frame holds back everything written after it.

Host to device, per frame (one ``write`` call):

- ``truncate``: cut at a random point;
- ``duplicate``: sent twice;
- ``delay``: held for ``delay_s`` seconds.

Both directions, per byte:

- ``corrupt``: one random bit flipped;
- ``drop``: lost.
"""
from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass

from cimstack.errors import ConfigError, DeviceError, LinkTimeout

__all__ = ["Faults", "FaultCounts", "FaultyPort", "soak"]


@dataclass(frozen=True)
class Faults:
    corrupt: float = 0.0
    drop: float = 0.0
    truncate: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    delay_s: float = 0.05
    seed: int = 0

    def __post_init__(self):
        for name in ("corrupt", "drop", "truncate", "duplicate", "delay"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ConfigError(f"fault rate {name} = {rate!r} is outside [0, 1]")
        if not 0.0 <= self.delay_s <= 60.0:
            raise ConfigError(f"delay_s = {self.delay_s!r} is outside [0, 60] s")


@dataclass
class FaultCounts:
    """What the port did, per kind (bytes for corrupt/drop, frames for the rest)."""
    corrupted: int = 0
    dropped: int = 0
    truncated: int = 0
    duplicated: int = 0
    delayed: int = 0
    frames: int = 0


class FaultyPort:
    """A pyserial-like port around ``port`` that damages traffic according to ``faults``."""

    def __init__(self, port, faults: Faults, rng: random.Random | None = None, counts: FaultCounts | None = None):
        """``rng`` and ``counts`` carry over a reconnection (:meth:`cimstack.link.Link.reconnect`),
        so the faults go on where they were and the counts cover the whole run."""
        self.port, self.faults = port, faults
        self.rng = rng or random.Random(faults.seed)
        self.counts = counts or FaultCounts()
        self._held: deque[tuple[float, bytes]] = deque()      # (release time, bytes), in order

    # -- the byte-level damage, both directions ---------------------------------------------
    def _bytes(self, data: bytes) -> bytes:
        f, out = self.faults, bytearray()
        for b in data:
            if f.drop and self.rng.random() < f.drop:
                self.counts.dropped += 1
                continue
            if f.corrupt and self.rng.random() < f.corrupt:
                b ^= 1 << self.rng.randrange(8)
                self.counts.corrupted += 1
            out.append(b)
        return bytes(out)

    def _release(self) -> None:
        now = time.monotonic()
        while self._held and self._held[0][0] <= now:
            self.port.write(self._held.popleft()[1])

    # -- the pyserial surface Link uses ---------------------------------------------------------
    def write(self, data: bytes) -> int:
        f = self.faults
        self.counts.frames += 1
        frame = bytes(data)
        if f.truncate and len(frame) > 2 and self.rng.random() < f.truncate:
            frame = frame[:self.rng.randrange(1, len(frame) - 1)]
            self.counts.truncated += 1
        copies = 1
        if f.duplicate and self.rng.random() < f.duplicate:
            copies = 2
            self.counts.duplicated += 1
        release = time.monotonic()
        if f.delay and self.rng.random() < f.delay:
            release += f.delay_s
            self.counts.delayed += 1
        if self._held:                       # a serial line keeps order: wait behind what is held
            release = max(release, self._held[-1][0])
        for _ in range(copies):
            self._held.append((release, self._bytes(frame)))
        self._release()
        return len(data)

    def read(self, size: int = 1) -> bytes:
        self._release()
        return self._bytes(self.port.read(size))

    @property
    def in_waiting(self) -> int:
        self._release()
        return self.port.in_waiting

    def flush(self) -> None:
        self.port.flush()

    def close(self) -> None:
        self._held.clear()
        self.port.close()


def soak(device, requests: int, seed: int = 0, region: int = 64) -> dict:
    """A random mix of register and activation-buffer reads and writes over ``device``'s link,
    checked against a shadow copy: every read must return what the writes left. Returns the
    counts, ``silent_errors`` first among them (reads that returned a wrong value without any
    error being raised). A request that raised a :class:`~cimstack.errors.LinkTimeout` or
    :class:`~cimstack.errors.DeviceError` was reported, not silent: the link is reconnected,
    and the words it may have written are read back into the shadow."""
    rng = random.Random(seed)
    link = device.link
    region = min(region, device.cfg.soc.act_words)

    def until_ok(read):
        """A read, repeated (reconnecting) until it gets through: after a reported failure,
        learn what the device holds."""
        for _ in range(50):
            try:
                return read()
            except (LinkTimeout, DeviceError):
                link.reconnect()
        raise LinkTimeout("the device did not come back after 50 reconnections")

    shadow = [w for lo in range(0, region, 8) for w in until_ok(lambda: device.read_memory("ACT", lo, min(8, region - lo)))]
    scratch = until_ok(lambda: device.read("SCRATCH"))
    dup0 = until_ok(lambda: device.read("LINK_DUPLICATES"))
    stats: dict[str, float] = {"requests": 0, "silent_errors": 0, "timeouts": 0, "device_errors": 0, "reads_checked": 0}
    retries0 = link.stats.retries

    def settle(addrs) -> None:
        nonlocal scratch
        if addrs == "scratch":
            scratch = until_ok(lambda: device.read("SCRATCH"))
        else:
            lo, n = addrs
            shadow[lo:lo + n] = until_ok(lambda: device.read_memory("ACT", lo, n))

    t0 = time.monotonic()
    for _ in range(requests):
        stats["requests"] += 1
        kind = rng.random()
        lo = rng.randrange(region)
        n = rng.randint(1, min(16, region - lo))
        try:
            if kind < 0.35:
                words = [rng.getrandbits(32) for _ in range(n)]
                device.write_memory("ACT", lo, words)
                shadow[lo:lo + n] = words
            elif kind < 0.7:
                got = device.read_memory("ACT", lo, n)
                stats["reads_checked"] += 1
                stats["silent_errors"] += int(list(got) != shadow[lo:lo + n])
            elif kind < 0.85:
                value = rng.getrandbits(32)
                device.write("SCRATCH", value)
                scratch = value
            else:
                stats["reads_checked"] += 1
                stats["silent_errors"] += int(device.read("SCRATCH") != scratch)
        except (LinkTimeout, DeviceError) as exc:
            stats["timeouts" if isinstance(exc, LinkTimeout) else "device_errors"] += 1
            settle("scratch" if kind >= 0.7 else (lo, n))
    # the whole region once more, and the retransmissions the device recognised
    final = [w for lo in range(0, region, 8) for w in until_ok(lambda: device.read_memory("ACT", lo, min(8, region - lo)))]
    stats["final_mismatches"] = (sum(int(a != b) for a, b in zip(final, shadow))
                                 + int(until_ok(lambda: device.read("SCRATCH")) != scratch))
    stats["retries"] = link.stats.retries - retries0
    stats["duplicates_acknowledged"] = (until_ok(lambda: device.read("LINK_DUPLICATES")) - dup0) & 0xFFFF
    stats["seconds"] = time.monotonic() - t0
    return stats
