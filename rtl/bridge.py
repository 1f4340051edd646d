"""The host bridge: framed request/response protocol over a byte stream (UART or the
simulation server's socket), driving the register file and the memory bus.

Specification: :mod:`cimstack.chip.protocol` and ``docs/protocol.md``. A frame is received into a
buffer and checked completely (CRC, length, addresses, busy) before anything it carries is
applied, so a corrupted or truncated frame never changes chip state.
"""

from amaranth import *
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from cimstack.chip.config import ChipConfig
from cimstack.chip.enums import RunUnit
from cimstack.chip.protocol import CRC, CRC_BYTES, ESC, ESC_XOR, FLAG, HEADER_BYTES, RESPONSE_BIT, ErrorCode, Op
from cimstack.chip.regmap import RegisterMap
from cimstack.rtl.arith import const_mul

__all__ = ["HostBridge", "TxFramer", "MemoryBus"]


def MemoryBus(word_bits: int) -> wiring.Signature:
    """Bridge-side memory bus: hold ``we`` or ``re`` with ``space``/``addr`` (and ``w_data``)
    until ``ack``; read data is valid with ``ack``."""
    return wiring.Signature({
        "space": Out(8), "addr": Out(16), "w_data": Out(word_bits),
        "we": Out(1), "re": Out(1), "ack": In(1), "r_data": In(word_bits),
    })


TxByte = data.StructLayout({"data": 8, "last": 1})


class TxFramer(wiring.Component):
    """Wraps a response body in FLAGs, stuffs it and appends its CRC (high byte first)."""

    i: In(stream.Signature(TxByte))
    o: Out(stream.Signature(8))
    busy: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc_ = CRC.create()
        byte = Signal(8)           # the byte being sent (before stuffing)
        esc_done = Signal()
        crc_lo = Signal(8)

        def send_stuffed(next_state):
            needs = (byte == FLAG) | (byte == ESC)
            m.d.comb += self.o.valid.eq(1)
            with m.If(needs & ~esc_done):
                m.d.comb += self.o.payload.eq(ESC)
                with m.If(self.o.ready):
                    m.d.sync += esc_done.eq(1)
            with m.Else():
                m.d.comb += self.o.payload.eq(Mux(needs, byte ^ ESC_XOR, byte))
                with m.If(self.o.ready):
                    m.d.sync += esc_done.eq(0)
                    m.next = next_state

        last = Signal()
        with m.FSM() as fsm:
            m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
            with m.State("IDLE"):
                m.d.comb += crc_.start.eq(1)
                with m.If(self.i.valid):
                    m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(FLAG)]
                    with m.If(self.o.ready):
                        m.next = "TAKE"
            with m.State("TAKE"):
                m.d.comb += [self.i.ready.eq(1), crc_.data.eq(self.i.payload.data), crc_.valid.eq(self.i.valid)]
                with m.If(self.i.valid):
                    m.d.sync += [byte.eq(self.i.payload.data), last.eq(self.i.payload.last)]
                    m.next = "BODY"
            with m.State("BODY"):
                with m.If(last):
                    send_stuffed("CRC_HI_LOAD")
                with m.Else():
                    send_stuffed("TAKE")
            with m.State("CRC_HI_LOAD"):
                m.d.sync += [byte.eq(crc_.crc[8:]), crc_lo.eq(crc_.crc[:8])]
                m.next = "CRC_HI"
            with m.State("CRC_HI"):
                send_stuffed("CRC_LO_LOAD")
            with m.State("CRC_LO_LOAD"):
                m.d.sync += byte.eq(crc_lo)
                m.next = "CRC_LO"
            with m.State("CRC_LO"):
                send_stuffed("END")
            with m.State("END"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(FLAG)]
                with m.If(self.o.ready):
                    m.next = "IDLE"
        return m


class HostBridge(wiring.Component):
    """Receives frames from ``rx``, executes them, answers on ``tx``; ``active`` while it
    holds unprocessed bytes or a frame, or is still sending.

    ``regs`` is the register file's bus, ``mem`` the memory bus, ``run`` one strobe per
    :class:`~cimstack.chip.enums.RunUnit` (bit ``RunUnit.VMM`` and so on), ``busy`` the same
    units' busy flags (memory access and RUN are refused with BUSY while any unit runs).
    ``status`` and ``cycles`` feed the STATUS reply.
    """

    def __init__(self, cfg: ChipConfig, regmap: RegisterMap):
        self.cfg, self.regmap = cfg, regmap
        self.word_bits = max(s.word_bytes for s in regmap.spaces) * 8
        self.max_body = cfg.soc.max_payload + HEADER_BYTES + CRC_BYTES
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "regs": Out(wiring.Signature({
                "addr": Out(16), "w_data": Out(32), "w_en": Out(1),
                "r_data": In(32), "hit": In(1), "writable": In(1)})),
            "mem": Out(MemoryBus(self.word_bits)),
            "run": Out(len(RunUnit)),
            "busy": In(len(RunUnit)),
            "status": In(32),
            "cycles": In(32),
            "active": Out(1),
            "frames_ok": Out(32),
            "frames_bad": Out(32),
            "frames_dup": Out(16),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, regmap = self.cfg, self.regmap
        max_payload = cfg.soc.max_payload
        depth = self.max_body

        # ---- receive: FIFO, unstuff into the frame buffer, running CRC -----------------
        m.submodules.rx_fifo = rx_fifo = fifo.SyncFIFOBuffered(width=8, depth=64)
        m.d.comb += [rx_fifo.w_data.eq(self.rx.payload), rx_fifo.w_en.eq(self.rx.valid),
                     self.rx.ready.eq(rx_fifo.w_rdy)]
        m.submodules.buf = buf = memory.Memory(shape=8, depth=depth, init=[])
        bw, br = buf.write_port(), buf.read_port()
        m.submodules.rx_crc = rx_crc = CRC.create()

        count = Signal(range(depth + 1))
        esc = Signal()
        ovf = Signal()
        frame_pending = Signal()
        frame_len = Signal(range(depth + 1))
        frame_crc_ok = Signal()
        frame_ovf = Signal()
        frame_done = Signal()          # executor strobe: buffer free again

        b = rx_fifo.r_data
        m.d.comb += rx_fifo.r_en.eq(~frame_pending)
        with m.If(rx_fifo.r_rdy & ~frame_pending):
            with m.If(b == FLAG):
                m.d.comb += rx_crc.start.eq(1)
                m.d.sync += [count.eq(0), esc.eq(0), ovf.eq(0)]
                with m.If((count != 0) | ovf):
                    m.d.sync += [frame_pending.eq(1), frame_len.eq(count),
                                 frame_crc_ok.eq(rx_crc.match_detected), frame_ovf.eq(ovf)]
            with m.Elif(ovf):
                pass
            with m.Elif(b == ESC):
                m.d.sync += esc.eq(1)
            with m.Elif(count == depth):
                m.d.sync += ovf.eq(1)
            with m.Else():
                d = Mux(esc, b ^ ESC_XOR, b)
                m.d.comb += [bw.en.eq(1), bw.addr.eq(count), bw.data.eq(d),
                             rx_crc.valid.eq(1), rx_crc.data.eq(d)]
                m.d.sync += [count.eq(count + 1), esc.eq(0)]
        with m.If(frame_done):
            m.d.sync += frame_pending.eq(0)

        # ---- transmit ---------------------------------------------------------------------
        m.submodules.framer = framer = TxFramer()
        wiring.connect(m, framer.o, wiring.flipped(self.tx))
        m.d.comb += self.active.eq(frame_pending | rx_fifo.r_rdy | framer.busy)

        # ---- executor -----------------------------------------------------------------------
        W = self.word_bits
        hdr = Signal(data.ArrayLayout(8, 9))        # seq, op, len lo, len hi, args[5]
        seq, op = hdr[0], hdr[1]
        plen = Cat(hdr[2], hdr[3])
        arg_space = hdr[4]
        arg_addr = Cat(hdr[4], hdr[5])              # READ_REG / WRITE_REG register address
        arg_count = Cat(hdr[6], hdr[7])             # READ_REG count
        mem_addr_arg = Cat(hdr[5], hdr[6])          # READ_MEM / WRITE_MEM address
        mem_count_arg = Cat(hdr[7], hdr[8])         # READ_MEM count

        ptr = Signal(range(depth + 1))
        m.d.comb += br.addr.eq(ptr)
        i = Signal(range(depth + 1))

        reg_addr = Signal(16)
        m.d.comb += self.regs.addr.eq(reg_addr)
        n = Signal(16)                       # items (registers, words) left
        mem_addr = Signal(16)
        m.d.comb += [self.mem.addr.eq(mem_addr), self.mem.space.eq(arg_space)]

        out_sr = Signal(max(W, 64))
        out_cnt = Signal(range(max(W, 64) // 8 + 1))
        left = Signal(17)                    # response bytes left to send (header + payload)
        in_sr = Signal(W)
        k = Signal(range(W // 8 + 1))
        err = Signal(8)
        kind = Signal(3)                     # payload source
        K_NONE, K_ECHO, K_REG, K_MEM, K_STATUS, K_ERR = range(6)

        # per-space constants
        sp_ok, sp_read = Signal(), Signal()
        sp_wb = Signal(range(W // 8 + 1))
        sp_count_bytes = Signal(16 + (W // 8).bit_length())     # READ_MEM's count in bytes
        sp_depth = Signal(17)
        with m.Switch(arg_space):
            for s in regmap.spaces:
                with m.Case(s.space):
                    m.d.comb += [sp_ok.eq(1), sp_read.eq(s.access == "rw"), sp_wb.eq(s.word_bytes),
                                 sp_count_bytes.eq(const_mul(mem_count_arg, s.word_bytes)),
                                 sp_depth.eq(s.depth)]

        resp_len = Signal(16)
        any_busy = self.busy.any()
        unit_bits = max(1, (len(RunUnit) - 1).bit_length())      # RUN's unit byte, once checked in range

        # the seq of the last request answered with success: a write or RUN that arrives again
        # with it is a retransmission (docs/protocol.md, "Retries") and is not applied twice
        last_seq, last_seq_valid = Signal(8), Signal()
        mutating = (op == Op.WRITE_REG) | (op == Op.WRITE_MEM) | (op == Op.RUN)

        m.d.comb += [framer.i.payload.data.eq(out_sr[:8]), framer.i.payload.last.eq(left == 1)]

        # respond() and fail() only raise a strobe and name the length or error code: the wide
        # response registers are loaded in one place below, not once per call site
        resp_go, resp_bytes, resp_kind = Signal(), Signal(16 + (W // 8).bit_length()), Signal(3)
        fail_go, fail_code = Signal(), Signal(8)

        def respond(length, payload_kind):
            m.d.comb += [resp_go.eq(1), resp_bytes.eq(length), resp_kind.eq(payload_kind)]
            m.next = "SEND"

        def fail(code):
            m.d.comb += [fail_go.eq(1), fail_code.eq(code)]
            m.next = "SEND"

        with m.FSM():
            with m.State("IDLE"):
                m.d.sync += [i.eq(0), ptr.eq(0), hdr.eq(0)]
                with m.If(frame_pending):
                    m.next = "HEADER"
            with m.State("HEADER"):
                # ptr runs one ahead of i: the byte at i is on br.data
                with m.If(ptr != 0):
                    m.d.sync += hdr.as_value().word_select(i, 8).eq(br.data)
                    m.d.sync += i.eq(i + 1)
                m.d.sync += ptr.eq(ptr + 1)
                with m.If((i == 8) | (ptr == frame_len)):
                    m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(frame_ovf):
                    fail(ErrorCode.OVERFLOW)
                with m.Elif(frame_len < HEADER_BYTES + CRC_BYTES):
                    fail(ErrorCode.BAD_LENGTH)
                with m.Elif(~frame_crc_ok):
                    fail(ErrorCode.BAD_CRC)
                with m.Elif(plen != frame_len - HEADER_BYTES - CRC_BYTES):
                    fail(ErrorCode.BAD_LENGTH)
                with m.Else():
                    m.d.sync += self.frames_ok.eq(self.frames_ok + 1)
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                m.d.sync += reg_addr.eq(arg_addr)
                with m.If(mutating & last_seq_valid & (seq == last_seq)):
                    # the host re-sent a write or RUN whose answer it lost: it was applied once
                    # (only successes are remembered), so acknowledge without applying it again
                    m.d.sync += self.frames_dup.eq(self.frames_dup + 1)
                    respond(C(0, 16), K_NONE)
                with m.Else():
                    with m.Switch(op):
                        with m.Case(Op.ECHO):
                            respond(plen, K_ECHO)
                        with m.Case(Op.STATUS):
                            with m.If(plen != 0):
                                fail(ErrorCode.BAD_LENGTH)
                            with m.Else():
                                respond(C(8, 16), K_STATUS)
                        with m.Case(Op.READ_REG):
                            with m.If((plen != 4) | (arg_count == 0) | (arg_count > max_payload // 4)):
                                fail(ErrorCode.BAD_LENGTH)
                            with m.Else():
                                m.d.sync += n.eq(arg_count)
                                m.next = "VAL_REG"
                        with m.Case(Op.WRITE_REG):
                            with m.If((plen < 6) | (plen[:2] != 2)):
                                fail(ErrorCode.BAD_LENGTH)
                            with m.Else():
                                m.d.sync += n.eq((plen - 2) >> 2)
                                m.next = "VAL_REG"
                        with m.Case(Op.READ_MEM):
                            with m.If(plen != 5):
                                fail(ErrorCode.BAD_LENGTH)
                            with m.Elif(~sp_ok | ~sp_read | (mem_count_arg == 0)
                                        | (mem_addr_arg + mem_count_arg > sp_depth)):
                                fail(ErrorCode.BAD_ADDRESS)
                            with m.Elif(sp_count_bytes > max_payload):
                                fail(ErrorCode.BAD_LENGTH)
                            with m.Elif(any_busy):
                                fail(ErrorCode.BUSY)
                            with m.Else():
                                m.d.sync += [n.eq(mem_count_arg), mem_addr.eq(mem_addr_arg)]
                                respond(sp_count_bytes, K_MEM)
                        with m.Case(Op.WRITE_MEM):
                            # length first: a payload too short for space and address is
                            # BAD_LENGTH whatever byte (a CRC byte, if it is empty) sits where the
                            # space would be (sp_wb is 0 for a space that does not exist)
                            with m.If(plen < 3 + sp_wb):
                                fail(ErrorCode.BAD_LENGTH)
                            with m.Elif(~sp_ok):
                                fail(ErrorCode.BAD_ADDRESS)
                            with m.Else():
                                m.d.sync += [n.eq(0), resp_len.eq(plen - 3)]
                                m.next = "VAL_WMEM"
                        with m.Case(Op.RUN):
                            with m.If(plen != 1):
                                fail(ErrorCode.BAD_LENGTH)
                            with m.Elif(arg_space >= len(RunUnit)):
                                fail(ErrorCode.BAD_ADDRESS)
                            with m.Elif(self.busy.bit_select(arg_space[:unit_bits], 1)):
                                fail(ErrorCode.BUSY)
                            with m.Else():
                                m.d.comb += self.run.bit_select(arg_space[:unit_bits], 1).eq(1)
                                respond(C(0, 16), K_NONE)
                        with m.Default():
                            fail(ErrorCode.BAD_OPCODE)

            # -- registers: validate every address first, then act -------------------------
            with m.State("VAL_REG"):
                bad = ~self.regs.hit | ((op == Op.WRITE_REG) & ~self.regs.writable)
                with m.If(bad):
                    fail(ErrorCode.BAD_ADDRESS)
                with m.Elif(n == 1):
                    m.d.sync += reg_addr.eq(arg_addr)
                    with m.If(op == Op.READ_REG):
                        m.d.sync += n.eq(arg_count)
                        respond(arg_count << 2, K_REG)
                    with m.Else():
                        m.d.sync += [n.eq((plen - 2) >> 2), ptr.eq(HEADER_BYTES + 2), k.eq(0)]
                        m.next = "WREG_WAIT"
                with m.Else():
                    m.d.sync += [reg_addr.eq(reg_addr + 1), n.eq(n - 1)]
            with m.State("WREG_WAIT"):
                m.next = "WREG_TAKE"
            with m.State("WREG_TAKE"):
                m.d.sync += [in_sr.word_select(k[:2], 8).eq(br.data), ptr.eq(ptr + 1), k.eq(k + 1)]
                with m.If(k == 3):
                    m.next = "WREG_WRITE"
                with m.Else():
                    m.next = "WREG_WAIT"
            with m.State("WREG_WRITE"):
                m.d.comb += [self.regs.w_en.eq(1), self.regs.w_data.eq(in_sr[:32])]
                m.d.sync += [reg_addr.eq(reg_addr + 1), n.eq(n - 1), k.eq(0)]
                with m.If(n == 1):
                    respond(C(0, 16), K_NONE)
                with m.Else():
                    m.next = "WREG_WAIT"

            # -- memory writes: count whole words, check range, then write -----------------
            with m.State("VAL_WMEM"):
                with m.If(resp_len == 0):
                    with m.If(~sp_ok | (mem_addr_arg + n > sp_depth)):
                        fail(ErrorCode.BAD_ADDRESS)
                    with m.Elif(any_busy):
                        fail(ErrorCode.BUSY)
                    with m.Else():
                        m.d.sync += [mem_addr.eq(mem_addr_arg), ptr.eq(HEADER_BYTES + 3), k.eq(0), in_sr.eq(0)]
                        m.next = "WMEM_WAIT"
                with m.Elif(resp_len < sp_wb):
                    fail(ErrorCode.BAD_LENGTH)
                with m.Else():
                    m.d.sync += [resp_len.eq(resp_len - sp_wb), n.eq(n + 1)]
            with m.State("WMEM_WAIT"):
                m.next = "WMEM_TAKE"
            with m.State("WMEM_TAKE"):
                m.d.sync += [in_sr.word_select(k, 8).eq(br.data), ptr.eq(ptr + 1), k.eq(k + 1)]
                with m.If(k == sp_wb - 1):
                    m.next = "WMEM_WRITE"
                with m.Else():
                    m.next = "WMEM_WAIT"
            with m.State("WMEM_WRITE"):
                m.d.comb += [self.mem.we.eq(1), self.mem.w_data.eq(in_sr)]
                with m.If(self.mem.ack):
                    m.d.sync += [mem_addr.eq(mem_addr + 1), n.eq(n - 1), k.eq(0), in_sr.eq(0)]
                    with m.If(n == 1):
                        respond(C(0, 16), K_NONE)
                    with m.Else():
                        m.next = "WMEM_WAIT"

            # -- response: shift out_sr, refill by payload kind ----------------------------
            with m.State("SEND"):
                with m.If(left == 0):
                    m.d.comb += frame_done.eq(1)
                    m.next = "IDLE"
                with m.Elif(out_cnt == 0):
                    m.next = "FILL"
                with m.Else():
                    m.d.comb += framer.i.valid.eq(1)
                    with m.If(framer.i.ready):
                        m.d.sync += [out_sr.eq(out_sr >> 8), out_cnt.eq(out_cnt - 1), left.eq(left - 1)]
            with m.State("FILL"):
                with m.Switch(kind):
                    with m.Case(K_ECHO):
                        m.d.sync += [out_sr.eq(br.data), out_cnt.eq(1), ptr.eq(ptr + 1)]
                        m.next = "SEND"
                    with m.Case(K_REG):
                        m.d.sync += [out_sr.eq(self.regs.r_data), out_cnt.eq(4), reg_addr.eq(reg_addr + 1)]
                        m.next = "SEND"
                    with m.Case(K_STATUS):
                        m.d.sync += [out_sr.eq(Cat(self.status, self.cycles)), out_cnt.eq(8)]
                        m.next = "SEND"
                    with m.Case(K_ERR):
                        m.d.sync += [out_sr.eq(Cat(err, op)), out_cnt.eq(2)]
                        m.next = "SEND"
                    with m.Case(K_MEM):
                        m.next = "RMEM"
                    with m.Default():
                        m.next = "SEND"
            with m.State("RMEM"):
                m.d.comb += self.mem.re.eq(1)
                with m.If(self.mem.ack):
                    m.d.sync += [out_sr.eq(self.mem.r_data), out_cnt.eq(sp_wb), mem_addr.eq(mem_addr + 1)]
                    m.next = "SEND"

        with m.If(resp_go):
            m.d.sync += [out_sr.eq(Cat(seq, op | RESPONSE_BIT, resp_bytes[:16])), out_cnt.eq(4),
                         left.eq(4 + resp_bytes), kind.eq(resp_kind), ptr.eq(HEADER_BYTES),
                         last_seq.eq(seq), last_seq_valid.eq(1)]
        with m.If(fail_go):
            m.d.sync += [err.eq(fail_code), out_sr.eq(Cat(seq, C(Op.ERROR, 8), C(2, 16))), out_cnt.eq(4),
                         left.eq(6), kind.eq(K_ERR), self.frames_bad.eq(self.frames_bad + 1)]
        return m
