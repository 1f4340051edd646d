"""Scripted link conversations for the cocotb SoC bench: the host's requests are framed here
(with the same codec as :class:`cimstack.link.Link`), replayed by
:mod:`cimstack.sim.benches.soc_bench`, and the answers parsed back."""
from __future__ import annotations

import struct

from cimstack.chip.protocol import Deframer, Frame, Op, encode_frame

__all__ = ["Script", "ok_payload", "error_code", "u32s"]


class Script:
    def __init__(self, **options):
        self.steps: list[dict] = []
        self.options = options
        self.seq = 0

    def request(self, op: int, payload: bytes = b"", timeout: int = 200_000) -> int:
        """Queue one framed request; returns the step index of its answer."""
        self.seq = (self.seq + 1) & 0xFF
        return self.raw(encode_frame(Frame(self.seq, op, payload)), frames=1, timeout=timeout)

    def raw(self, wire: bytes, frames: int, timeout: int = 200_000) -> int:
        """Queue arbitrary wire bytes, expecting ``frames`` answers (0 for none)."""
        self.steps.append({"send": wire.hex(), "frames": frames, "timeout": timeout})
        return len(self.steps) - 1

    def wait_idle(self, cycles: int = 2_000_000) -> int:
        self.steps.append({"wait_idle": cycles})
        return len(self.steps) - 1

    def job(self) -> dict:
        return {"steps": self.steps, **self.options}

    @staticmethod
    def answers(result: dict) -> list[list]:
        """Per step, the parsed answers (Frame or a string naming a damaged frame)."""
        out = []
        for wire in result["results"]:
            out.append([] if wire is None else Deframer().feed(bytes.fromhex(wire)))
        return out


def ok_payload(answers: list, step: int, op: int) -> bytes:
    """The payload of the single successful answer to ``op`` at ``step`` (asserts that)."""
    got = answers[step]
    assert len(got) == 1 and isinstance(got[0], Frame), f"step {step}: expected one frame, got {got}"
    assert got[0].op == op | 0x80, f"step {step}: expected a {Op(op).name} answer, got {got[0]}"
    return got[0].payload


def error_code(answers: list, step: int) -> int:
    got = answers[step]
    assert len(got) == 1 and isinstance(got[0], Frame) and got[0].op == Op.ERROR, \
        f"step {step}: expected one ERROR frame, got {got}"
    return got[0].payload[0]


def u32s(payload: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(payload) // 4}I", payload))
