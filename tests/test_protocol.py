"""Host-side protocol codec, register map declaration and generated artefacts."""
import json
import random

import pytest

from cimstack import preset
from cimstack.gen import regmap_c_header, regmap_markdown, update_protocol_doc
from cimstack.gen.registers import DOC_BEGIN, DOC_END
from cimstack.protocol import (ESC, FLAG, Deframer, Frame, Op, crc16, encode_frame, split_words,
                               write_mem_payload)
from cimstack.errors import InputRangeError
from cimstack.regmap import ID_MAGIC, register_map


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
    from pathlib import Path
    doc = Path(__file__).parent.parent / "docs" / "protocol.md"
    copy = tmp_path / "protocol.md"
    copy.write_text(doc.read_text())
    assert DOC_BEGIN in copy.read_text() and DOC_END in copy.read_text()
    assert not update_protocol_doc(copy, preset("default")), \
        "docs/protocol.md's register map is stale: run cimstack gen --docs"


def test_instruction_set_roundtrip_and_checks():
    from cimstack.errors import InputRangeError
    from cimstack.isa import OPCODES, assemble, disassemble
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
    from pathlib import Path
    from cimstack.gen import update_isa_doc
    doc = Path(__file__).parent.parent / "docs" / "soc.md"
    copy = tmp_path / "soc.md"
    copy.write_text(doc.read_text())
    assert not update_isa_doc(copy), "docs/soc.md's instruction table is stale: run cimstack gen --docs"
