"""cocotb benches of the whole SoC through its byte link: protocol robustness, VMM engine,
write-verify controller and single-cell access, each checked against the golden model; and
one bit-level UART conversation. Each top is Verilated once per session."""
from __future__ import annotations

import random
import struct
from collections import Counter

import numpy as np
import pytest
from helpers import random_inputs, random_tile, soc_test_config

from cimstack.chip import prng
from cimstack.chip.config import preset
from cimstack.chip.enums import Polarity, RunUnit, Stuck, WriteVerifyStatus
from cimstack.chip.isa import assemble, mode_name
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
    crc16,
    encode_frame,
    read_mem_payload,
    read_reg_payload,
    split_words,
    stuff,
    write_mem_payload,
    write_reg_payload,
)
from cimstack.chip.regmap import register_map
from cimstack.golden.bridge import MUTATING, BridgeModel
from cimstack.golden.soc import GoldenSoC
from cimstack.golden.tile import Pulse
from cimstack.golden.writeverify import WriteVerifyJob
from cimstack.sim.script import Script, error_code, ok_payload, u32s
from cimstack.sim.verilator import build_soc

# every test here runs Verilated RTL
pytestmark = pytest.mark.verilator


@pytest.fixture(scope="session")
def soc(tmp_path_factory):
    return build_soc(soc_test_config(), "stream", tmp_path_factory.mktemp("soc"))


def write_words(s: Script, space, addr: int, words: list[int], max_payload: int) -> list[int]:
    per = (max_payload - 3) // space.word_bytes
    return [s.request(Op.WRITE_MEM, write_mem_payload(space.space, addr + i, words[i:i + per], space.word_bytes))
            for i in range(0, len(words), per)]


def read_words(s: Script, space, addr: int, count: int, max_payload: int) -> list[int]:
    per = max_payload // space.word_bytes
    return [s.request(Op.READ_MEM, read_mem_payload(space.space, addr + i, min(per, count - i)))
            for i in range(0, count, per)]


def gather(answers, steps, word_bytes) -> list[int]:
    out = []
    for st in steps:
        out += split_words(ok_payload(answers, st, Op.READ_MEM), word_bytes)
    return out


def gather_act(answers, steps) -> np.ndarray:
    """Activation words read back, as signed 32-bit values."""
    got = np.array(gather(answers, steps, 4), dtype=np.int64)
    return np.where(got >= 1 << 31, got - (1 << 32), got)


def random_soc(cfg, rng, stuck_rate: float) -> GoldenSoC:
    model = GoldenSoC(cfg)
    for t in range(cfg.array.tiles):
        model.tiles[t] = random_tile(cfg, rng, stuck_rate=stuck_rate, tile=t)
    return model


def load_chip(s: Script, soc_model: GoldenSoC, rm, seed: int) -> None:
    """Copy the golden SoC's tiles (cells, post-processing, registers) into the chip."""
    cfg = soc_model.cfg
    mp = cfg.soc.max_payload
    for t, tile in enumerate(soc_model.tiles):
        write_words(s, rm.space(f"TILE{t}_XBAR"), 0, tile.memory_image(), mp)
        mask = (1 << cfg.post.bias_bits) - 1
        post = [(int(b) & mask) | int(sc) << cfg.post.bias_bits for b, sc in zip(tile.bias, tile.scale)]
        write_words(s, rm.space(f"TILE{t}_POST"), 0, post, mp)
        s.request(Op.WRITE_REG, write_reg_payload(rm[f"TILE{t}_ADC_GAIN"].addr, [
            tile.adc_gain, tile.adc_offset & ((1 << cfg.adc.bits) - 1), int(tile.relu)]))
    s.request(Op.WRITE_REG, write_reg_payload(rm["SEED_KEY"].addr, [prng.seed_key(seed)]))
    s.request(Op.WRITE_REG, write_reg_payload(rm["CONTROL"].addr, [1]))
    soc_model.reseed(seed)


def test_registers_and_damaged_frames(soc):
    """Every request kind, every error code, and frames that are corrupted, truncated,
    oversized or buried in garbage: good frames still work, bad ones change nothing."""
    cfg = soc.cfg
    rm = register_map(cfg)
    mp = cfg.soc.max_payload
    rng = random.Random(11)
    s = Script(rx_stall=0.3, tx_stall=0.3, seed=5)
    act = rm.space("ACT")
    echo_data = bytes([FLAG, ESC, 0, 0xFF] + [rng.randrange(256) for _ in range(60)])
    good = [rng.randrange(1 << 32) for _ in range(8)]
    other = [rng.randrange(1 << 32) for _ in range(8)]

    st = {}
    st["echo"] = s.request(Op.ECHO, echo_data)
    st["echo_max"] = s.request(Op.ECHO, bytes(range(256)) * (mp // 256) + bytes(mp % 256))
    st["ident"] = s.request(Op.READ_REG, read_reg_payload(0, 5))
    st["w_scratch"] = s.request(Op.WRITE_REG, write_reg_payload(rm["SCRATCH"].addr, [0x12345678]))
    st["w_vmm"] = s.request(Op.WRITE_REG, write_reg_payload(rm["VMM_TILE"].addr, [1, 0xABCD, 0x1234, 1]))
    st["r_vmm"] = s.request(Op.READ_REG, read_reg_payload(rm["VMM_TILE"].addr, 4))
    st["w_ro"] = s.request(Op.WRITE_REG, write_reg_payload(rm["ID"].addr, [0]))
    st["r_hole"] = s.request(Op.READ_REG, read_reg_payload(0x0FF, 1))
    st["r_span_hole"] = s.request(Op.READ_REG, read_reg_payload(rm["LINK_ERRORS"].addr, 6))
    st["bad_op"] = s.request(0x33, b"")
    st["bad_len"] = s.request(Op.READ_REG, b"\x00\x00\x01")
    st["w_mem_range"] = s.request(Op.WRITE_MEM, write_mem_payload(act.space, act.depth - 2, [1, 2, 3], 4))
    st["w_mem_partial"] = s.request(Op.WRITE_MEM, write_mem_payload(act.space, 0, [1, 2], 4)[:-1])
    st["r_wo_space"] = s.request(Op.READ_MEM, read_mem_payload(rm.space("TILE0_XBAR").space, 0, 1))
    st["r_too_many"] = s.request(Op.READ_MEM, read_mem_payload(act.space, 0, mp // 4 + 1))
    st["r_no_space"] = s.request(Op.READ_MEM, read_mem_payload(0x3F, 0, 1))
    st["run_bad"] = s.request(Op.RUN, bytes([5]))
    st["w_good"] = s.request(Op.WRITE_MEM, write_mem_payload(act.space, 0, good, 4))
    # a corrupted write: one payload bit flipped (not a FLAG/ESC byte, so framing survives)
    wire = bytearray(encode_frame(Frame(77, Op.WRITE_MEM, write_mem_payload(act.space, 0, other, 4))))
    pos = next(i for i in range(10, len(wire) - 4) if wire[i] not in (FLAG, ESC) and wire[i] ^ 1 not in (FLAG, ESC))
    wire[pos] ^= 1
    st["corrupt"] = s.raw(bytes(wire), frames=1)
    # a truncated write, then a good frame right behind it
    cut = encode_frame(Frame(78, Op.WRITE_MEM, write_mem_payload(act.space, 0, other, 4)))[:20]
    s.seq += 1
    st["truncated"] = s.raw(cut + encode_frame(Frame(s.seq, Op.READ_REG, read_reg_payload(rm["SCRATCH"].addr, 1))), frames=2)
    # garbage (no FLAG in it) in front of a good frame
    garbage = bytes(b for b in (rng.randrange(256) for _ in range(40)) if b != FLAG)
    s.seq += 1
    st["garbage"] = s.raw(garbage + encode_frame(Frame(s.seq, Op.ECHO, b"ok")), frames=2)
    st["oversize"] = s.request(Op.ECHO, bytes(mp + 10))
    st["r_act"] = s.request(Op.READ_MEM, read_mem_payload(act.space, 0, 8))
    st["status"] = s.request(Op.STATUS)
    # retransmissions (protocol 3.0): a write sent again with the seq of the last success is
    # acknowledged, not applied again (a different payload proves it); a failed write is not
    # remembered, so sent again it fails again
    scratch = rm["SCRATCH"].addr
    st["dup_first"] = s.request(Op.WRITE_REG, write_reg_payload(scratch, [0x0BADF00D]))
    st["dup_again"] = s.raw(encode_frame(Frame(s.seq, Op.WRITE_REG, write_reg_payload(scratch, [0xDEADBEEF]))), frames=1)
    st["dup_read"] = s.request(Op.READ_REG, read_reg_payload(scratch, 1))
    st["dup_read_again"] = s.raw(encode_frame(Frame(s.seq, Op.READ_REG, read_reg_payload(scratch, 1))), frames=1)
    st["fail_first"] = s.request(Op.WRITE_REG, write_reg_payload(rm["ID"].addr, [0]))
    st["fail_again"] = s.raw(encode_frame(Frame(s.seq, Op.WRITE_REG, write_reg_payload(rm["ID"].addr, [0]))), frames=1)
    st["counters"] = s.request(Op.READ_REG, read_reg_payload(rm["LINK_FRAMES"].addr, 3))

    ans = Script.answers(soc.run_job(s.job(), "protocol"))
    assert ok_payload(ans, st["echo"], Op.ECHO) == echo_data
    assert len(ok_payload(ans, st["echo_max"], Op.ECHO)) == mp
    assert u32s(ok_payload(ans, st["ident"], Op.READ_REG)) == [r.reset for r in rm.registers[:5]]
    assert ok_payload(ans, st["w_scratch"], Op.WRITE_REG) == b""
    addr_mask = (1 << rm["VMM_SRC"].fields[0].width) - 1        # as wide as the buffer's addresses
    assert addr_mask < 0xABCD and u32s(ok_payload(ans, st["r_vmm"], Op.READ_REG)) == [
        1, 0xABCD & addr_mask, 0x1234 & addr_mask, 1]
    for name in ("w_ro", "r_hole", "r_span_hole", "w_mem_range", "r_wo_space", "r_no_space", "run_bad"):
        assert error_code(ans, st[name]) == ErrorCode.BAD_ADDRESS, name
    assert error_code(ans, st["bad_op"]) == ErrorCode.BAD_OPCODE
    for name in ("bad_len", "w_mem_partial", "r_too_many"):
        assert error_code(ans, st[name]) == ErrorCode.BAD_LENGTH, name
    assert error_code(ans, st["corrupt"]) == ErrorCode.BAD_CRC
    trunc = ans[st["truncated"]]
    assert len(trunc) == 2 and trunc[0].op == Op.ERROR and trunc[0].payload[0] == ErrorCode.BAD_CRC
    assert u32s(trunc[1].payload) == [0x12345678]
    garb = ans[st["garbage"]]
    assert len(garb) == 2 and garb[0].op == Op.ERROR and garb[1].payload == b"ok"
    assert error_code(ans, st["oversize"]) == ErrorCode.OVERFLOW
    # the damaged writes left the buffer as the good write made it
    assert split_words(ok_payload(ans, st["r_act"], Op.READ_MEM), 4) == good
    status, cycles = struct.unpack("<II", ok_payload(ans, st["status"], Op.STATUS))
    assert status == 0 and cycles > 1000
    assert ok_payload(ans, st["dup_again"], Op.WRITE_REG) == b""
    assert u32s(ok_payload(ans, st["dup_read"], Op.READ_REG)) == [0x0BADF00D]        # not 0xDEADBEEF
    assert u32s(ok_payload(ans, st["dup_read_again"], Op.READ_REG)) == [0x0BADF00D]  # reads run again
    assert error_code(ans, st["fail_first"]) == error_code(ans, st["fail_again"]) == ErrorCode.BAD_ADDRESS
    frames_ok, errors, duplicates = u32s(ok_payload(ans, st["counters"], Op.READ_REG))
    assert duplicates == 1
    n_errors = sum(1 for a in ans for f in a if isinstance(f, Frame) and f.op == Op.ERROR)
    assert errors == n_errors == 17              # 13 refused requests + 4 damaged bodies
    # good CRC and length: one per step except the corrupted and the oversized body (the
    # truncated and garbage steps each carry one good frame); this read counts itself
    assert frames_ok == len(st) - 2


# -- random garbage and structure-aware fuzzing of the frame decoder -----------------------------

PLAIN = [b for b in range(256) if b not in (FLAG, ESC)]


def noisy_bytes(rng: random.Random, n: int, special: float = 0.12) -> bytes:
    """Random bytes with FLAG and ESC each ``special / 2`` likely (1/256 by chance)."""
    return bytes(rng.choice((FLAG, ESC)) if rng.random() < special else rng.randrange(256) for _ in range(n))


def plain_bytes(rng: random.Random, n: int) -> bytes:
    """Random bytes without FLAG and ESC: a body of exactly ``n`` bytes on the wire."""
    return bytes(rng.choice(PLAIN) for _ in range(n))


def wire_body(seq: int, op: int, payload: bytes, length: int | None = None) -> bytes:
    """A frame with a good CRC, its length field ``length`` (default: the true one)."""
    head = struct.pack("<BBH", seq & 0xFF, op & 0xFF, len(payload) if length is None else length) + payload
    return bytes((FLAG,)) + stuff(head + crc16(head).to_bytes(2, "big")) + bytes((FLAG,))


def garbage_chunk(rng: random.Random, mp: int) -> bytes:
    """A few pieces of line noise: random bytes dense in FLAG and ESC, short bodies, FLAG runs,
    ESC before FLAG, doubled ESC, truncated and bit-flipped frames, bodies around the frame
    buffer's size; it may end inside a body or on an ESC."""
    out = bytearray()
    for _ in range(rng.choice((1, 1, 2, 2, 3, 4))):
        k = rng.random()
        if k < 0.4:
            out += noisy_bytes(rng, rng.randint(1, 30), rng.choice((0.05, 0.15, 0.4)))
        elif k < 0.52:
            out += bytes((FLAG,)) + stuff(noisy_bytes(rng, rng.randint(1, 5))) + bytes((FLAG,))
        elif k < 0.62:
            out += bytes(rng.choice(([ESC, FLAG], [FLAG, FLAG, FLAG], [ESC, ESC, 0x41], [ESC, ESC, FLAG],
                                     [ESC, 0x5E, ESC, 0x5D], [FLAG, ESC, FLAG], [ESC])))
        elif k < 0.75:
            wire = encode_frame(Frame(rng.randrange(256), rng.randrange(7), noisy_bytes(rng, rng.randint(0, 12))))
            out += wire[:rng.randint(1, len(wire) - 2)]                         # cut short
        elif k < 0.88:
            body = bytearray(Frame(rng.randrange(256), rng.randrange(7), noisy_bytes(rng, rng.randint(0, 12))).body())
            for _ in range(rng.randint(1, 3)):
                body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
            out += bytes((FLAG,)) + stuff(bytes(body)) + bytes((FLAG,))
        elif k < 0.985:
            out += plain_bytes(rng, rng.randint(1, 30))                        # no FLAG, no ESC
        else:
            n = rng.choice((mp + 5, mp + 6, mp + 7, mp + 8, rng.randint(mp + 9, mp + 40)))
            out += stuff(noisy_bytes(rng, n, 0.02))                              # around the buffer size
    return bytes(out)


def test_frame_decoder_fuzz(soc):
    """Random garbage and structure-aware frames against the RTL frame decoder. Proves that
    it never hangs (every step is answered within its timeout) and always resynchronises (a
    good request after every garbage chunk gets its correct answer); that it answers each
    non-empty body exactly once, with the error code and header the host predicts (BAD_CRC,
    BAD_LENGTH, OVERFLOW for damaged bodies, BAD_OPCODE, BAD_LENGTH, BAD_ADDRESS for good
    bodies with random opcodes, spaces, addresses, counts and lengths); that it executes the
    acceptable ones exactly as a host-side shadow does, retransmissions acknowledged and not
    applied; that it never writes outside the addressed words (every readable memory word and
    read/write register read back equals the shadow bit for bit); and that LINK_FRAMES,
    LINK_ERRORS and LINK_DUPLICATES count what was predicted."""
    cfg = soc.cfg
    rm = register_map(cfg)
    mp = cfg.soc.max_payload
    mp_body = mp + HEADER_BYTES + CRC_BYTES
    rng = random.Random(20240611)
    model = BridgeModel(cfg, rm)
    s = Script(rx_stall=0.2, tx_stall=0.2, seed=7)
    expected: list[list] = []                        # per step, the answers the model predicts
    timeout = 8000                                   # cycles after a step's last byte

    def send(wire: bytes) -> int:
        want = model.send(wire)
        expected.append(want)
        return s.raw(wire, frames=len(want), timeout=timeout)

    def peek_seq() -> int:
        """The next fresh seq: never the last success's, which would make a write a retransmission."""
        nxt = (s.seq + 1) & 0xFF
        return nxt if nxt != model.last_ok else (nxt + 1) & 0xFF

    def request(op: int, payload: bytes = b"") -> int:
        s.seq = peek_seq()
        return send(encode_frame(Frame(s.seq, op, payload)))

    readable = [sp for sp in rm.spaces if sp.access == "rw"]

    # -- known contents: every readable word and read/write register random ------------------
    for sp in readable:
        per = (mp - 3) // sp.word_bytes
        words = [rng.getrandbits(8 * sp.word_bytes) for _ in range(sp.depth)]
        for a in range(0, sp.depth, per):
            request(Op.WRITE_MEM, write_mem_payload(sp.space, a, words[a:a + per], sp.word_bytes))
    for r in rm.registers:
        if r.access == "rw":
            request(Op.WRITE_REG, write_reg_payload(r.addr, [rng.getrandbits(32)]))
    fill_writes = model.writes

    # -- phase 1: garbage, each chunk followed by a good request -------------------------------
    scratch, act = rm["SCRATCH"].addr, rm.space("ACT")
    n_chunks, garbage_bytes = 160, 0
    boundary = [                                     # the frame buffer's edge, byte exact
        (plain_bytes(rng, mp_body), [ErrorCode.BAD_CRC]),                        # fills it
        (plain_bytes(rng, mp_body + 1), [ErrorCode.OVERFLOW]),                   # one byte over
        (plain_bytes(rng, mp_body) + bytes((ESC,)), [ErrorCode.BAD_CRC]),        # ESC, then FLAG: fits
        (plain_bytes(rng, mp_body) + bytes((ESC, FLAG ^ ESC_XOR)), [ErrorCode.OVERFLOW]),  # stuffed byte over
        (bytes((ESC,)), []),                                                     # a lone ESC: no body at all
        (bytes((FLAG, FLAG, ESC, FLAG, ESC, ESC, FLAG)), []),                    # empty bodies
        (bytes((0x41, ESC, FLAG)), [ErrorCode.BAD_LENGTH]),                      # one byte; ESC dropped
    ]
    good_payload = {
        Op.ECHO: lambda: noisy_bytes(rng, rng.randint(0, 10), 0.3),
        Op.READ_REG: lambda: read_reg_payload(scratch, 1),
        Op.WRITE_REG: lambda: write_reg_payload(scratch, [rng.getrandbits(32)]),
        Op.STATUS: lambda: b"",
        Op.READ_MEM: lambda: read_mem_payload(act.space, rng.randrange(act.depth - 4), rng.randint(1, 4)),
    }
    for i in range(n_chunks):
        while True:
            chunk = boundary[i][0] if i < len(boundary) else garbage_chunk(rng, mp)
            # pure garbage: a body that happens to pass the CRC and length checks is drawn again
            if not any(isinstance(b, Frame) for b in Deframer(mp_body).feed(chunk + bytes((FLAG,)))):
                break
        op = rng.choice((Op.ECHO, Op.ECHO, Op.READ_REG, Op.WRITE_REG, Op.STATUS, Op.READ_MEM))
        s.seq = peek_seq()
        step = send(chunk + encode_frame(Frame(s.seq, op, good_payload[op]())))
        last = expected[step][-1][0]                 # the generator's intent: the good request succeeds
        assert (last.seq, last.op) == (s.seq, op | RESPONSE_BIT)
        if i < len(boundary):
            assert [w.payload[0] for w, _ in expected[step][:-1]] == boundary[i][1]
        garbage_bytes += len(chunk)
    garbage_codes = Counter(model.codes)

    # -- phase 2: good CRC, random structure ----------------------------------------------------
    holes = [a for a in range(max(model.regs) + 3) if a not in model.regs]
    far = [0x200, 0x1000, 0x7FFF, 0xFFFE, 0xFFFF]
    nonexistent = [sp for sp in range(256) if sp not in model.spaces]

    def reg_addr(kinds) -> int:
        kind = rng.choice(kinds)
        if kind in ("rw", "ro", "wo"):
            return rng.choice([r.addr for r in rm.registers if r.access == kind])
        return rng.choice(holes) if kind == "hole" else rng.choice(far + [rng.randrange(0x10000)])

    def space_addr():
        """(space, address, word bytes): mostly readable spaces, also write-only and missing
        ones; addresses inside, at the end of and beyond the space."""
        k = rng.random()
        sp = rng.choice(readable) if k < 0.6 else rng.choice(rm.spaces) if k < 0.75 else None
        if sp is None:
            return rng.choice(nonexistent), rng.randrange(0x10000), 4
        k = rng.random()
        addr = (rng.randrange(sp.depth) if k < 0.5 else max(0, sp.depth - rng.randint(0, 4)) if k < 0.85
                else rng.choice((sp.depth + rng.randint(0, 3), rng.randrange(0x10000))))
        return sp.space, addr, sp.word_bytes

    def count(limit: int) -> int:
        k = rng.random()
        return (rng.randint(1, 4) if k < 0.6 else rng.randint(1, limit) if k < 0.75
                else limit + rng.randint(1, 3) if k < 0.82 else 0 if k < 0.88 else rng.randrange(0x10000))

    def fuzz_request() -> tuple[int, bytes, bool]:
        """(op, payload, whether to re-send the last success's seq) of one fuzz request."""
        op = rng.choices(list(Op)[:7] + [None], weights=(8, 17, 20, 17, 20, 5, 5, 4))[0]
        if op is None:                                           # unknown, 0x7F and op | 0x80 among them
            return rng.randrange(7, 256), noisy_bytes(rng, rng.randint(0, 8)), False
        if op == Op.ECHO:
            n = rng.choice((rng.randint(0, 12),) * 6 + (rng.randint(13, mp), mp + rng.randint(1, 4)))
            return op, noisy_bytes(rng, n), False               # the last: OVERFLOW with a good CRC
        if op == Op.STATUS:
            return op, b"" if rng.random() < 0.8 else noisy_bytes(rng, rng.randint(1, 4)), False
        if op == Op.READ_REG:
            p = read_reg_payload(reg_addr(("rw", "rw", "ro", "ro", "wo", "hole", "far")), count(mp // 4))
        elif op == Op.WRITE_REG:
            n = rng.choice((1, 1, 1, 2, 3, 4, rng.randint(5, (mp - 2) // 4)))
            p = write_reg_payload(reg_addr(("rw",) * 5 + ("ro", "wo", "hole", "hole", "far")),
                                  [rng.getrandbits(32) for _ in range(n)])
        elif op == Op.READ_MEM:
            space, addr, wb = space_addr()
            p = read_mem_payload(space, addr, count(max(1, mp // wb)))
        elif op == Op.WRITE_MEM:
            space, addr, wb = space_addr()
            n = rng.choice((1, 1, 2, 3, 5, rng.randint(1, max(1, (mp - 3) // wb))))
            p = struct.pack("<BH", space, addr) + noisy_bytes(rng, n * wb, 0.02)
        else:
            p = bytes([rng.randrange(len(RunUnit), 256) if rng.random() < 0.6 else rng.randrange(len(RunUnit))])
        if rng.random() < 0.12:                                  # payload cut short or too long
            cut = rng.choice((rng.randrange(3), rng.randrange(len(p))))
            p = p[:cut] if rng.random() < 0.5 else p + noisy_bytes(rng, rng.randint(1, 3))
        # retransmissions of the last success: acknowledged, not applied (most RUNs among them)
        return op, p, op in MUTATING and rng.random() < (0.6 if op == Op.RUN else 0.08)

    # payloads too short for their op's fixed fields first (the space byte of an empty WRITE_MEM
    # would be the CRC's high byte), then random ones
    for op, p in ((Op.WRITE_MEM, b""), (Op.WRITE_MEM, b"\x07"), (Op.WRITE_MEM, b"\x07\x00"),
                  (Op.WRITE_MEM, b"\x00\x00"), (Op.READ_MEM, b""), (Op.READ_REG, b""), (Op.WRITE_REG, b""),
                  (Op.RUN, b"")):
        request(op, p)
    n_fuzz = 260
    for _ in range(n_fuzz):
        while True:
            if rng.random() < 0.03:                              # shorter than a header, good CRC
                data = noisy_bytes(rng, rng.randint(0, 3))
                wire, seq = bytes((FLAG,)) + stuff(data + crc16(data).to_bytes(2, "big")) + bytes((FLAG,)), None
            else:
                op, p, resend = fuzz_request()
                seq = model.last_ok if resend and model.last_ok is not None else peek_seq()
                length = None
                if rng.random() < 0.06:                          # the length field disagrees
                    length = rng.choice((len(p) + rng.choice((-3, -2, -1, 1, 2, 3)), rng.randrange(0x10000))) & 0xFFFF
                    length = length if length != len(p) else len(p) + 1
                wire = wire_body(seq, op, p, length)
            if model.safe(wire):                                 # else draw another
                break
        if seq is not None and seq != model.last_ok:
            s.seq = seq
        send(wire)
    fuzz_codes = model.codes - garbage_codes

    # -- everything read back ---------------------------------------------------------------------
    reads = {sp.name: [request(Op.READ_MEM, read_mem_payload(sp.space, a, min(mp // sp.word_bytes, sp.depth - a)))
                       for a in range(0, sp.depth, mp // sp.word_bytes)] for sp in readable}
    addrs = sorted(model.regs)                                   # in runs of consecutive addresses
    firsts = [a for a in addrs if a - 1 not in model.regs]
    reg_reads = {}
    for a in firsts:
        n = next(i for i in range(1, len(addrs) + 1) if a + i not in model.regs)
        reg_reads[a] = request(Op.READ_REG, read_reg_payload(a, n))
    counters = request(Op.READ_REG, read_reg_payload(rm["LINK_FRAMES"].addr, 3))
    shadow_mem = {sp.name: list(model.mem[sp.space]) for sp in readable}
    shadow_reg = dict(model.reg)

    result = soc.run_job(s.job(), "fuzz")
    ans = Script.answers(result)
    assert len(ans) == len(expected)
    wrong = []
    for i, (got, want) in enumerate(zip(ans, expected)):
        ok = len(got) == len(want) and all(
            isinstance(g, Frame) and (g.seq, g.op, len(g.payload)) == (w.seq, w.op, len(w.payload))
            and all(g.payload[4 * j:4 * j + 4] == w.payload[4 * j:4 * j + 4] for j in range((len(w.payload) + 3) // 4)
                    if j not in skip)
            for g, (w, skip) in zip(got, want))
        if not ok:
            wrong.append(f"step {i}: sent {s.steps[i]['send'][:240]}\n  want {[w for w, _ in want]}\n  got  {got}")
    assert not wrong, f"{len(wrong)} of {len(expected)} steps answered wrongly:\n" + "\n".join(wrong[:6])

    # said once more, plainly: the whole readback is the shadow, bit for bit
    for sp in readable:
        assert gather(ans, reads[sp.name], sp.word_bytes) == shadow_mem[sp.name], sp.name
    for a, step in reg_reads.items():
        for j, v in enumerate(u32s(ok_payload(ans, step, Op.READ_REG))):
            if a + j in shadow_reg:
                assert v == shadow_reg[a + j], model.regs[a + j].name
    frames_ok, errors, dups = u32s(ok_payload(ans, counters, Op.READ_REG))
    assert (frames_ok, errors, dups) == (model.frames_ok, model.errors, model.dups)
    assert errors == sum(1 for a in ans for f in a if isinstance(f, Frame) and f.op == Op.ERROR)

    # the fuzz reached what it was meant to
    print(f"garbage: {n_chunks} chunks, {garbage_bytes} bytes, {sum(garbage_codes.values())} bodies "
          f"{dict(garbage_codes)}; fuzz: {n_fuzz} frames {dict(fuzz_codes)}, {dups} retransmissions, "
          f"{model.writes - fill_writes} writes; {len(expected)} steps, {sum(result['cycles'])} cycles, "
          f"longest step {max(result['cycles'])}")
    assert garbage_codes["BAD_CRC"] > 100 and garbage_codes["BAD_LENGTH"] > 50 and garbage_codes["OVERFLOW"] >= 2
    assert all(fuzz_codes[c] >= 2 for c in ("BAD_LENGTH", "BAD_OPCODE", "BAD_ADDRESS", "OVERFLOW"))
    assert dups >= 5 and model.writes - fill_writes > 30


def test_vmm_engine_matches_golden(soc):
    """Tiles loaded over the link, inputs in the activation buffer (some beyond the input
    range, so the engine clamps), chained and accumulating VMMs on both tiles."""
    cfg = soc.cfg
    rm = register_map(cfg)
    rng = np.random.default_rng(21)
    model = random_soc(cfg, rng, stuck_rate=0.02)
    s = Script(rx_stall=0.1, tx_stall=0.2, seed=9)
    load_chip(s, model, rm, seed=int(rng.integers(1 << 32)))
    rows, cols, n = cfg.array.rows, cfg.array.cols, cfg.soc.act_words
    x = random_inputs(cfg, rng, 6).ravel()
    x[::7] *= 3                                              # out of range: clamped on chip
    model.act[:x.size] = x
    write_words(s, rm.space("ACT"), 0, [int(v) & 0xFFFF_FFFF for v in x], cfg.soc.max_payload)
    ops = []
    for i in range(24):
        tile = int(rng.integers(cfg.array.tiles))
        src = int(rng.integers(0, 300))
        dst = int(rng.integers(300, n - cols)) if i % 3 else src + rows // 2    # some overwrite inputs
        mode = int(rng.integers(0, 4))                   # 0: the config's, 1..3: chosen per VMM
        ops.append((tile, src, dst, bool(rng.integers(2)), mode))
    assert {o[4] for o in ops} == {0, 1, 2, 3}
    for tile, src, dst, acc, mode in ops:
        s.request(Op.WRITE_REG, write_reg_payload(rm["VMM_TILE"].addr, [tile, src, dst, int(acc) | mode << 1]))
        s.request(Op.RUN, bytes([RunUnit.VMM]))
        s.wait_idle()
        model.vmm(tile, src, dst, acc, mode_name(mode))
    reads = read_words(s, rm.space("ACT"), 0, n, cfg.soc.max_payload)
    ans = Script.answers(soc.run_job(s.job(), "vmm"))
    np.testing.assert_array_equal(gather_act(ans, reads), model.act)
    assert len(np.unique(model.act[300:])) > 50


def test_write_verify_and_cell_access(soc):
    """Hardware write-verify equals the golden algorithm cell for cell; healthy cells converge
    within the budget, stuck ones are reported; single reads and pulses match too."""
    cfg = soc.cfg
    rm = register_map(cfg)
    dp, a = cfg.datapath, cfg.array
    rng = np.random.default_rng(31)
    model = random_soc(cfg, rng, stuck_rate=0.0)
    tile = 1
    g = model.tiles[tile]
    cells = {(int(rng.integers(a.rows)), int(rng.integers(dp.units)), int(rng.integers(2))) for _ in range(70)}
    cells = sorted(cells)[:60]
    stuck_cells = set(cells[::6])
    for r, u, c in stuck_cells:
        g.stuck[r, u, c] = Stuck.AT_MAX if r % 2 else Stuck.AT_0
    s = Script(seed=3)
    load_chip(s, model, rm, seed=int(rng.integers(1 << 32)))
    jobs = [WriteVerifyJob(r, u // a.mac_lanes, u % a.mac_lanes, c,
                           # targets away from both ends, so a stuck cell cannot be "on target"
                           target=int(rng.integers(12, (1 << dp.state_bits) - 12)), tol=int(rng.integers(2, 6)))
            for r, u, c in cells]
    words = [j.target | j.tol << 16 | j.row << 24 | j.group << 40 | j.lane << 48 | j.cell << 56 for j in jobs]
    write_words(s, rm.space("WV_JOBS"), 0, words, cfg.soc.max_payload)
    amax = cfg.device.pulse_max_amplitude
    s.request(Op.WRITE_REG, write_reg_payload(rm["WV_TILE"].addr, [tile, len(jobs), 60, 1 | 1 << 8 | amax << 16]))
    s.request(Op.RUN, bytes([RunUnit.WRITE_VERIFY]))
    busy = s.request(Op.RUN, bytes([RunUnit.WRITE_VERIFY]))        # already running
    s.wait_idle(20_000_000)
    res_steps = read_words(s, rm.space("WV_RESULTS"), 0, len(jobs), cfg.soc.max_payload)
    done = s.request(Op.READ_REG, read_reg_payload(rm["WV_DONE"].addr, 1))
    expected = model.write_verify(tile, jobs, 60, 1, 1, amax)

    # single-cell access: reads and pulses interleaved
    singles = []
    for k in range(12):
        r, u, c = cells[k * 3]
        s.request(Op.WRITE_REG, write_reg_payload(rm["CELL_ADDR"].addr, [tile | r << 8 | c << 24, (u // a.mac_lanes) | (u % a.mac_lanes) << 8]))
        if k % 2:
            pol, amp = Polarity(k % 4 // 2), 1 + k % amax
            s.request(Op.WRITE_REG, write_reg_payload(rm["CELL_OP"].addr, [1 | pol << 1 | amp << 8]))
            want = g.pulse(Pulse(r, u, c, pol, amp))
        else:
            s.request(Op.WRITE_REG, write_reg_payload(rm["CELL_OP"].addr, [0]))
            want = model.read_cell(tile, r, u, c)
        s.wait_idle()
        singles.append((s.request(Op.READ_REG, read_reg_payload(rm["CELL_RESULT"].addr, 1)), want))
    # the programmed states, seen through VMMs on the chip
    x = random_inputs(cfg, rng, 4).ravel()
    model.act[:x.size] = x
    write_words(s, rm.space("ACT"), 0, [int(v) & 0xFFFF_FFFF for v in x], cfg.soc.max_payload)
    for i in range(4):
        s.request(Op.WRITE_REG, write_reg_payload(rm["VMM_TILE"].addr, [tile, i * a.rows, 200 + i * a.cols, 0]))
        s.request(Op.RUN, bytes([RunUnit.VMM]))
        s.wait_idle()
        model.vmm(tile, i * a.rows, 200 + i * a.cols)
    vmm_reads = read_words(s, rm.space("ACT"), 200, 4 * a.cols, cfg.soc.max_payload)

    ans = Script.answers(soc.run_job(s.job(), "writeverify"))
    assert error_code(ans, busy) == ErrorCode.BUSY
    words = gather(ans, res_steps, 4)
    got = [(w & 3, (w >> 4) & 0xFFF, ((w >> 16) ^ 0x8000) - 0x8000) for w in words]
    assert got == [(e.status, e.pulses, e.error) for e in expected]
    assert u32s(ok_payload(ans, done, Op.READ_REG)) == [len(jobs)]
    for (r, u, c), e in zip(cells, expected):
        if (r, u, c) in stuck_cells:
            assert e.status == WriteVerifyStatus.STUCK, (r, u, c, e)
        else:
            assert e.status == WriteVerifyStatus.CONVERGED, (r, u, c, e)
    assert sum(e.pulses for e in expected) > 3 * len(jobs)    # the cells really were moved
    for step, want in singles:
        (v,) = u32s(ok_payload(ans, step, Op.READ_REG))
        assert v - (1 << 32) * (v >> 31) == want
    np.testing.assert_array_equal(gather_act(ans, vmm_reads), model.act[200:200 + 4 * a.cols])


@pytest.mark.slow
def test_uart_bit_level(tmp_path_factory):
    """The UART top with a cocotb bit-level UART model at 8 clocks per bit."""
    cfg = preset("ice40-tiny").replace(name="uart-test", clock=dict(clock_hz=25_000_000, uart_baud=3_125_000))
    top = build_soc(cfg, "uart", tmp_path_factory.mktemp("uart"))
    rm = register_map(cfg)
    s = Script(phy="uart", divisor=8)
    data = bytes([FLAG, 1, ESC, 0x55, 0xAA, 0, 0xFF])
    e = s.request(Op.ECHO, data, timeout=50_000)
    i = s.request(Op.READ_REG, read_reg_payload(0, 3), timeout=50_000)
    w = s.request(Op.WRITE_REG, write_reg_payload(rm["SCRATCH"].addr, [0xA5A5_5A5A]), timeout=50_000)
    r = s.request(Op.READ_REG, read_reg_payload(rm["SCRATCH"].addr, 1), timeout=50_000)
    ans = Script.answers(top.run_job(s.job(), "uart"))
    assert ok_payload(ans, e, Op.ECHO) == data
    assert u32s(ok_payload(ans, i, Op.READ_REG)) == [r.reset for r in rm.registers[:3]]
    assert ok_payload(ans, w, Op.WRITE_REG) == b""
    assert u32s(ok_payload(ans, r, Op.READ_REG)) == [0xA5A5_5A5A]


def sequencer_program(base: int = 0):
    """A 2-layer network over a batch: layer 1 split by rows over both tiles (partial sums
    accumulated in the buffer), digital post-processing, layer 2 split by columns (the input
    multicast to both tiles), outputs stored per batch element."""
    return [
        ("COPY", dict(src=0, dst=200, n=64, src_iter=1)),
        ("FILL", dict(dst=264, n=16, value=0)),
        ("VMM", dict(tile=0, count=2, src=200, dst=264, acc=1, split_rows=1)),
        ("POST", dict(src=264, dst=280, n=16, mul=3, shift=4, relu=1)),
        ("FILL", dict(dst=296, n=16, value=-1)),
        ("VMM", dict(tile=0, count=2, src=280, dst=320, split_cols=1, mode=3)),     # unary pulses
        ("POST", dict(src=320, dst=360, n=32, mul=-5, shift=2)),
        ("COPY", dict(src=360, dst=400, n=32, dst_iter=1)),
        ("LOOP", dict(target=base)),            # instruction addresses are absolute
        ("HALT", {}),
    ]


def test_sequencer_program_matches_golden(soc):
    cfg = soc.cfg
    rm = register_map(cfg)
    rng = np.random.default_rng(41)
    model = random_soc(cfg, rng, stuck_rate=0.02)
    s = Script(rx_stall=0.1, seed=4)
    load_chip(s, model, rm, seed=int(rng.integers(1 << 32)))
    x = rng.integers(-40, 40, 3 * 64)
    model.act[:x.size] = x
    write_words(s, rm.space("ACT"), 0, [int(v) & 0xFFFF_FFFF for v in x], cfg.soc.max_payload)
    words = assemble(sequencer_program(base=8), cfg, base=8)
    write_words(s, rm.space("INSTR"), 8, words, cfg.soc.max_payload)
    s.request(Op.WRITE_REG, write_reg_payload(rm["SEQ_PC"].addr, [8, 3, 64, 32]))
    s.request(Op.RUN, bytes([RunUnit.PROGRAM]))
    s.wait_idle(5_000_000)
    state = s.request(Op.READ_REG, read_reg_payload(rm["SEQ_STATE"].addr, 2))
    reads = read_words(s, rm.space("ACT"), 0, cfg.soc.act_words, cfg.soc.max_payload)
    # an invalid opcode stops the program with the error flag
    write_words(s, rm.space("INSTR"), 0, [0xF], cfg.soc.max_payload)
    s.request(Op.WRITE_REG, write_reg_payload(rm["SEQ_PC"].addr, [0, 1, 0, 0]))
    s.request(Op.RUN, bytes([RunUnit.PROGRAM]))
    s.wait_idle()
    bad = s.request(Op.READ_REG, read_reg_payload(rm["SEQ_STATE"].addr, 1))

    steps = model.run_program([0] * 8 + words, iters=3, in_stride=64, out_stride=32, pc=8)
    ans = Script.answers(soc.run_job(s.job(), "sequencer"))
    np.testing.assert_array_equal(gather_act(ans, reads), model.act)
    seq_state, executed = u32s(ok_payload(ans, state, Op.READ_REG))
    assert rm["SEQ_STATE"].unpack(seq_state) == {"pc": 8 + len(words) - 1, "iteration": 3, "error": 0}
    assert executed == steps == 3 * (len(words) - 1) + 1
    assert len(np.unique(model.act[400:496])) > 30          # real outputs for all three elements
    assert rm["SEQ_STATE"].unpack(u32s(ok_payload(ans, bad, Op.READ_REG))[0])["error"] == 1
