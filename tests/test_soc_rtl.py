"""cocotb benches of the whole SoC through its byte link: protocol robustness, VMM engine,
write-verify controller and single-cell access, each checked against the golden model; and
one bit-level UART conversation. Each top is Verilated once per session."""
from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from cimstack import prng
from cimstack.config import preset
from cimstack.golden import GoldenSoC, Pulse, WriteVerifyJob
from cimstack.protocol import (ESC, FLAG, ErrorCode, Frame, Op, encode_frame, read_mem_payload,
                               read_reg_payload, split_words, write_mem_payload, write_reg_payload)
from cimstack.isa import mode_name
from cimstack.regmap import WV_CONVERGED, WV_STUCK, register_map
from cimstack.sim.script import Script, error_code, ok_payload, u32s
from cimstack.sim.verilator import build_soc

from conftest import random_inputs, random_tile, soc_test_config


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
        s.request(Op.RUN, bytes([0]))
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
        g.stuck[r, u, c] = 1 + (r % 2)
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
    s.request(Op.RUN, bytes([1]))
    busy = s.request(Op.RUN, bytes([1]))                     # already running
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
            pol, amp = k % 4 // 2, 1 + k % amax
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
        s.request(Op.RUN, bytes([0]))
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
            assert e.status == WV_STUCK, (r, u, c, e)
        else:
            assert e.status == WV_CONVERGED, (r, u, c, e)
    assert sum(e.pulses for e in expected) > 3 * len(jobs)    # the cells really were moved
    for step, want in singles:
        (v,) = u32s(ok_payload(ans, step, Op.READ_REG))
        assert v - (1 << 32) * (v >> 31) == want
    np.testing.assert_array_equal(gather_act(ans, vmm_reads), model.act[200:200 + 4 * a.cols])


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
    from cimstack.isa import assemble
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
    s.request(Op.RUN, bytes([2]))
    s.wait_idle(5_000_000)
    state = s.request(Op.READ_REG, read_reg_payload(rm["SEQ_STATE"].addr, 2))
    reads = read_words(s, rm.space("ACT"), 0, cfg.soc.act_words, cfg.soc.max_payload)
    # an invalid opcode stops the program with the error flag
    write_words(s, rm.space("INSTR"), 0, [0xF], cfg.soc.max_payload)
    s.request(Op.WRITE_REG, write_reg_payload(rm["SEQ_PC"].addr, [0, 1, 0, 0]))
    s.request(Op.RUN, bytes([2]))
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
