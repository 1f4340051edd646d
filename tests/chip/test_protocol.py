"""Host-side protocol codec, register map declaration and generated artefacts."""
import json
import random
import struct

import pytest
from helpers import REPO
from hypothesis import given, settings
from hypothesis import strategies as st

from cimstack import preset
from cimstack.chip.protocol import (
    ESC,
    FLAG,
    Deframer,
    ErrorCode,
    Frame,
    Op,
    crc16,
    encode_frame,
    split_words,
    stuff,
    write_mem_payload,
)
from cimstack.chip.regmap import ID_MAGIC, register_map
from cimstack.errors import InputRangeError
from cimstack.gen import regmap_c_header, regmap_markdown, update_protocol_doc
from cimstack.gen.registers import DOC_BEGIN, DOC_END


def test_crc_is_xmodem_and_body_checks_to_zero():
    assert crc16(b"123456789") == 0x31C3
    body = Frame(7, Op.READ_REG, b"\x01\x00\x02\x00").body()
    assert crc16(body) == 0


def test_stuffing_hides_flag_and_escape():
    f = Frame(FLAG, ESC, bytes([FLAG, ESC, 0x5E, 0x5D, 0]) * 20)
    wire = encode_frame(f)
    assert wire[0] == FLAG and wire[-1] == FLAG and FLAG not in wire[1:-1]
    assert Deframer().feed(wire) == [f]


def test_deframer_resynchronises_and_names_damage():
    rng = random.Random(3)
    frames = [Frame(i, Op.ECHO, bytes(rng.randrange(256) for _ in range(rng.randrange(40)))) for i in range(50)]
    stream, expect = b"", []
    for f in frames:
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(8)))
        stream += garbage + encode_frame(f)
        expect.append(f)
    got = [x for x in Deframer().feed(stream) if isinstance(x, Frame)]
    assert got == expect                      # garbage costs nothing but error items
    wire = bytearray(encode_frame(frames[5]))
    wire[3] ^= 0x04
    assert Deframer().feed(bytes(wire)) == ["bad CRC"]
    assert Deframer().feed(encode_frame(frames[5])[:4] + bytes([FLAG])) == ["short body (3 bytes)"]
    assert Deframer(max_body=10).feed(encode_frame(Frame(1, 0, bytes(20)))) == ["overflow"]


def test_word_packing_roundtrip():
    words = [0, 1, (1 << 72) - 1, 12345678901234567890]
    payload = write_mem_payload(0x10, 3, words, 9)
    assert payload[:3] == bytes([0x10, 3, 0])
    assert split_words(payload[3:], 9) == words


@pytest.mark.parametrize("name", ["default", "opencimtc-576x128", "ice40-tiny"])
def test_register_map_is_consistent(name):
    cfg = preset(name)
    rm = register_map(cfg)
    assert rm["ID"].reset == ID_MAGIC and rm["CONFIG_HASH"].reset == cfg.datapath.config_hash
    for r in rm.registers:
        used = 0
        for f in r.fields:
            assert f.offset + f.width <= 32, (r.name, f.name)
            assert not used & f.mask, f"{r.name}.{f.name} overlaps another field"
            used |= f.mask
    assert len({s.space for s in rm.spaces}) == len(rm.spaces)
    assert sum(1 for s in rm.spaces if s.name.endswith("_XBAR")) == cfg.array.tiles
    data = json.loads(rm.to_json())
    assert len(data["registers"]) == len(rm.registers)
    assert rm["WV_AMP"].unpack(rm["WV_AMP"].pack(start=2, step=3, max=7)) == {"start": 2, "step": 3, "max": 7}
    with pytest.raises(InputRangeError, match="outside"):
        rm["WV_AMP"].pack(start=256)
    with pytest.raises(InputRangeError, match="no field"):
        rm["WV_AMP"].pack(bogus=1)


def test_generated_header_and_markdown_name_every_register():
    rm = register_map(preset("default"))
    header, md = regmap_c_header(rm), regmap_markdown(rm)
    for r in rm.registers:
        assert f"#define CIM_REG_{r.name} 0x{r.addr:03x}u" in header
        assert f"`{r.name}`" in md


def test_protocol_doc_register_map_is_current(tmp_path):
    """docs/protocol.md carries the generated map; regenerate with cimstack gen --docs."""
    doc = REPO / "docs" / "protocol.md"
    copy = tmp_path / "protocol.md"
    copy.write_text(doc.read_text())
    assert DOC_BEGIN in copy.read_text() and DOC_END in copy.read_text()
    assert not update_protocol_doc(copy, preset("default")), \
        "docs/protocol.md's register map is stale: run cimstack gen --docs"


def test_instruction_set_roundtrip_and_checks():
    from cimstack.chip.isa import OPCODES, assemble, disassemble
    from cimstack.errors import InputRangeError
    cfg = preset("default").replace(soc=dict(act_words=1024, instr_words=16))
    prog = [("COPY", dict(src=0, dst=500, n=64, src_iter=1)),
            ("VMM", dict(tile=1, count=2, src=500, dst=700, acc=1, split_rows=1)),
            ("POST", dict(src=700, dst=800, n=64, mul=-7, shift=3, relu=1)),
            ("FILL", dict(dst=900, n=10, value=-123456)),
            ("LOOP", dict(target=4)), ("HALT", {})]
    words = assemble(prog, cfg, base=4)
    back = disassemble(words)
    for (op, args), ins in zip(prog, back):
        assert ins.op == op and all(ins.args[k] == v for k, v in args.items())
        assert all(v == 0 for k, v in ins.args.items() if k not in args)
    for f in (f for o in OPCODES.values() for f in o.fields):
        assert f.offset >= 4 and f.offset + f.width <= 64
    bad = {
        "outside": [("VMM", dict(tile=3, count=2, src=0, dst=0)), ("HALT", {})],
        "overwrite": [("VMM", dict(tile=0, count=2, src=0, dst=200)), ("HALT", {})],
        "overlap": [("VMM", dict(tile=0, count=2, src=0, dst=60, acc=1)), ("HALT", {})],
        "do not fit": [("VMM", dict(tile=0, count=1, src=1000, dst=0)), ("HALT", {})],
        "backwards": [("LOOP", dict(target=0)), ("HALT", {})],
        "end with HALT": [("FILL", dict(dst=0, n=1))],
        "at least 1": [("COPY", dict(src=0, dst=0, n=0)), ("HALT", {})],
        "no field": [("FILL", dict(dst=0, n=1, bogus=1)), ("HALT", {})],
        "outside \\[": [("POST", dict(src=0, dst=0, n=1, mul=200)), ("HALT", {})],
        "unknown op": [("JUMP", {}), ("HALT", {})],
        "exceeds": [("HALT", {})] * 17,
    }
    for what, program in bad.items():
        with pytest.raises(InputRangeError, match=what):
            assemble(program, cfg)


def test_soc_doc_instruction_set_is_current(tmp_path):
    from cimstack.gen import update_isa_doc
    doc = REPO / "docs" / "soc.md"
    copy = tmp_path / "soc.md"
    copy.write_text(doc.read_text())
    assert not update_isa_doc(copy), "docs/soc.md's instruction table is stale: run cimstack gen --docs"


# -- property-based fuzzing of the host's frame parser (hypothesis) -----------------------------

frames_st = st.builds(Frame, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=300))
# wire garbage with the framing bytes far more frequent than by chance
garbage_st = st.lists(st.one_of(st.sampled_from([FLAG, ESC]), st.integers(0, 255)), max_size=400).map(bytes)


def feed_in_chunks(data: bytes, cuts: list[int]) -> list:
    d, out, last = Deframer(), [], 0
    for c in sorted(set(min(c, len(data)) for c in cuts)) + [len(data)]:
        out += d.feed(data[last:c])
        last = c
    return out


@given(st.lists(frames_st, max_size=12), st.lists(st.integers(0, 5000), max_size=20))
def test_any_frames_survive_any_chunking(frames, cuts):
    wire = b"".join(encode_frame(f) for f in frames)
    assert feed_in_chunks(wire, cuts) == frames


@given(garbage_st, frames_st, st.lists(st.integers(0, 1000), max_size=8))
def test_after_any_garbage_the_next_frame_is_recovered(garbage, frame, cuts):
    """Garbage yields only error items or frames that really are well-formed; a FLAG then ends
    it, and the frame behind comes out intact, however the bytes arrive."""
    items = feed_in_chunks(garbage + bytes((FLAG,)) + encode_frame(frame), cuts)
    assert items[-1] == frame
    for item in items[:-1]:
        assert isinstance(item, str) or (crc16(item.body()) == 0 and len(item.payload) < len(garbage))


@given(frames_st, st.data())
def test_any_burst_of_up_to_16_bits_in_a_body_is_caught(frame, data):
    """CRC-16 detects every error burst of at most 16 bits: damage inside a body, however
    the stuffing then frames it, never passes."""
    body = bytearray(frame.body())
    at = data.draw(st.integers(0, len(body) - 1))
    pattern = data.draw(st.integers(1, 0xFFFF))
    body[at] ^= pattern >> 8
    if at + 1 < len(body):
        body[at + 1] ^= pattern & 0xFF
    elif not pattern >> 8:
        body[at] ^= pattern                   # the last byte: keep the damage inside the body
    wire = bytes((FLAG,)) + stuff(bytes(body)) + bytes((FLAG,))
    assert Deframer().feed(wire) == ["bad CRC"]


@given(st.lists(frames_st, min_size=1, max_size=4), st.data())
@settings(max_examples=300)
def test_one_damaged_wire_byte_never_yields_a_wrong_frame(frames, data):
    """Any single byte of the wire changed to any value, FLAG and ESC included (which split
    or merge frames): every frame that comes out is one that was sent."""
    wire = bytearray(b"".join(encode_frame(f) for f in frames))
    at = data.draw(st.integers(0, len(wire) - 1))
    wire[at] = data.draw(st.one_of(st.sampled_from([FLAG, ESC, wire[at] ^ 1]), st.integers(0, 255)))
    items = Deframer().feed(bytes(wire))
    assert all(item in frames for item in items if isinstance(item, Frame))
    assert sum(isinstance(item, Frame) for item in items) >= len(frames) - 1     # only the one hit


@given(st.binary(max_size=2000), st.integers(6, 64))
def test_arbitrary_bytes_never_break_the_parser(data, max_body):
    items = Deframer(max_body=max_body).feed(data)
    assert all(isinstance(i, str) or len(i.payload) <= max_body - 6 for i in items)
    assert len(items) <= data.count(FLAG)


# -- the Link against a device that answers wrongly --------------------------------------------

ANSWERS = ("right", "silent", "garbage", "wrong_seq", "wrong_op", "short", "long", "error", "bad_crc")


class ScriptedDevice:
    """A pyserial-like port whose device answers each request as ``answers`` says (then
    rightly). Registers hold ``regs``; a write is applied unless refused, and one arriving
    again with the seq of the last applied one is acknowledged without applying it, as the
    SoC's bridge does."""

    def __init__(self, answers: list[str], garbage: bytes, regs: list[int]):
        self.answers, self.garbage, self.regs = list(answers), garbage, list(regs)
        self.deframer, self.out, self.writes, self.last_seq = Deframer(), bytearray(), 0, None

    @property
    def in_waiting(self) -> int:
        return len(self.out)

    def read(self, n: int) -> bytes:
        data, self.out[:] = bytes(self.out[:n]), self.out[n:]
        return data

    def flush(self):
        pass

    def close(self):
        pass

    def write(self, data: bytes) -> int:
        for req in self.deframer.feed(data):
            if isinstance(req, Frame):
                self.out += self._answer(req)
        return len(data)

    def _answer(self, req: Frame) -> bytes:
        how = self.answers.pop(0) if self.answers else "right"
        if req.op == Op.ECHO:
            payload = req.payload
        elif req.op == Op.READ_REG:
            addr, count = struct.unpack("<HH", req.payload)
            payload = b"".join(struct.pack("<I", v) for v in self.regs[addr:addr + count])
        else:                                  # WRITE_REG, applied once per seq (protocol 3.0)
            addr = struct.unpack_from("<H", req.payload)[0]
            payload = b""
            if how not in ("error", "bad_crc") and req.seq != self.last_seq:
                self.writes += 1
                self.regs[addr] = struct.unpack_from("<I", req.payload, 2)[0]
                self.last_seq = req.seq
        frame = {
            "right": Frame(req.seq, req.op | 0x80, payload),
            "wrong_seq": Frame(req.seq ^ 1, req.op | 0x80, payload),
            "wrong_op": Frame(req.seq, (req.op + 1) | 0x80, payload),
            "short": Frame(req.seq, req.op | 0x80, payload[:-1] if payload else b""),
            "long": Frame(req.seq, req.op | 0x80, payload + b"\x00"),
            "error": Frame(req.seq, Op.ERROR, bytes((ErrorCode.BAD_ADDRESS, req.op))),
            "bad_crc": Frame(req.seq, Op.ERROR, bytes((ErrorCode.BAD_CRC, req.op))),
        }.get(how)
        if frame is None:
            return self.garbage if how == "garbage" else b""
        if how == "short" and not payload:
            return b""
        return encode_frame(frame)


@given(st.lists(st.sampled_from(ANSWERS), max_size=6), garbage_st, st.integers(0, 2),
       st.integers(0, (1 << 32) - 1))
@settings(max_examples=150)
def test_the_link_never_returns_a_wrong_answer(answers, garbage, which, value):
    """Whatever the device sends back (silence, garbage, another seq or op, a payload too
    short or too long, errors), the link returns the right result or raises one of its own
    errors; a write the device applied is never applied twice."""
    from cimstack.errors import CimstackError
    from cimstack.link.transport import Link
    regs = [0x1111_0000 + i for i in range(8)]
    dev = ScriptedDevice(answers, garbage, regs)
    link = Link("loop://", timeout=0.005, retries=2)
    link.port.close()
    link.port = dev
    link.synced = True                         # the ECHO sync is exercised in test_link_faults
    try:
        if which == 0:
            assert link.read_regs(2, 3) == regs[2:5]
        elif which == 1:
            link.write_regs(5, [value])
            assert dev.regs[5] == value and dev.writes == 1
        else:
            data = value.to_bytes(4, "little") * 3
            assert link.echo(data) == data
    except CimstackError:
        pass
    assert dev.writes <= 1


@pytest.mark.parametrize("how, problem", [("short", "11 payload bytes, the protocol prescribes 12"),
                                          ("long", "13 payload bytes"), ("wrong_op", "answered with opcode")])
def test_a_well_formed_answer_of_the_wrong_shape_is_refused(how, problem):
    from cimstack.errors import LinkError
    from cimstack.link.transport import Link
    link = Link("loop://", timeout=0.05, retries=2)
    link.port.close()
    link.port, link.synced = ScriptedDevice([how], b"", list(range(8))), True
    with pytest.raises(LinkError, match=problem):
        link.read_regs(2, 3)
