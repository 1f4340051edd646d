"""The sequencer: runs layer programs (:mod:`cimstack.chip.isa`) from instruction memory and is
the activation buffer's node on the mesh (node 0).

A VMM instruction sends each tile a CFG flit (where its outputs go), then the input vector as
ACT flits — multicast to every tile when they share it, unicast per tile for a row-split
layer — and waits until every output flit (OUT or ACC) has been written into the buffer.
POST, COPY and FILL work on the buffer directly. Bit-exact model:
:meth:`cimstack.golden.GoldenSoC.run_program`.
"""
from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from cimstack.chip.config import ChipConfig
from cimstack.chip.enums import FlitKind, InputEncoding
from cimstack.chip.isa import COPY, FILL, HALT, LOOP, OP_FIELD, OPCODES, POST, VMM
from cimstack.rtl.arith import clamp
from cimstack.rtl.noc import CfgValue, FlitLayout
from cimstack.rtl.regs import field_layout

__all__ = ["Sequencer"]


def instr_layout(op: str) -> data.Layout:
    """The 64-bit instruction word of ``op``: the opcode and the op's declared fields."""
    return field_layout((OP_FIELD, *OPCODES[op].fields), 64)


class Sequencer(wiring.Component):
    def __init__(self, cfg: ChipConfig):
        self.cfg = cfg
        nodes = cfg.array.tiles + 1
        layout = FlitLayout(nodes)
        super().__init__({
            "run_program": In(1), "run_vmm": In(1),
            "pc_start": In(12), "iters": In(16), "in_stride": In(16), "out_stride": In(16),
            "vmm_tile": In(8), "vmm_src": In(16), "vmm_dst": In(16), "vmm_acc": In(1),
            "vmm_mode": In(2),                 # the VMM instruction's mode field: 0 the config's
            "busy": Out(1), "program": Out(1), "error": Out(1),
            "pc": Out(12), "iteration": Out(16), "executed": Out(32), "vmm_cycles": Out(32),
            "program_cycles": Out(32),
            "instr_addr": Out(12), "instr_data": In(64),
            "rd_addr": Out(16), "rd_data": In(32),
            "acc_addr": Out(16), "acc_data": In(32),
            "wr_addr": Out(16), "wr_data": Out(32), "wr_en": Out(1),
            "inject": Out(stream.Signature(layout)),
            "eject": In(stream.Signature(layout)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        rows, cols, ib = cfg.array.rows, cfg.array.cols, cfg.input.bits
        ins = Signal(64)
        op = data.View(field_layout((OP_FIELD,), 64), ins).op

        # ---- ejection: outputs into the buffer (store, or read-add-write) --------------------
        received = Signal(16)
        e = self.eject.payload
        e_we, e_addr, e_data = Signal(), Signal(16), Signal(32)
        m.d.comb += [self.acc_addr.eq(e.index), e_addr.eq(e.index)]
        with m.FSM(name="eject_fsm"):
            with m.State("TAKE"):
                with m.If(self.eject.valid & (e.kind != FlitKind.ACC)):
                    m.d.comb += [self.eject.ready.eq(1), e_we.eq(1), e_data.eq(e.value)]
                    m.d.sync += received.eq(received + 1)
                with m.Elif(self.eject.valid):
                    m.next = "ADD"                    # acc_data shows buffer[index] next cycle
            with m.State("ADD"):
                m.d.comb += [self.eject.ready.eq(1), e_we.eq(1), e_data.eq(self.acc_data + e.value)]
                m.d.sync += received.eq(received + 1)
                m.next = "TAKE"

        # ---- main program ---------------------------------------------------------------------
        s_we, s_addr, s_data = Signal(), Signal(16), Signal(32)
        m.d.comb += [self.wr_en.eq(e_we | s_we), self.wr_addr.eq(Mux(e_we, e_addr, s_addr)),
                     self.wr_data.eq(Mux(e_we, e_data, s_data))]
        m.d.comb += self.instr_addr.eq(self.pc)
        single = Signal()
        i = Signal(16)            # element within the current op
        k = Signal(6)             # tile within a VMM
        vmm_count = Signal(32)
        with m.If(self.busy & (op == VMM)):
            m.d.sync += vmm_count.eq(vmm_count + 1)
        with m.If(self.program):
            m.d.sync += self.program_cycles.eq(self.program_cycles + 1)

        vmm_i = data.View(instr_layout("VMM"), ins)
        tile0, count = vmm_i.tile, vmm_i.count
        v_src, v_dst = vmm_i.src, vmm_i.dst
        acc, split_rows, split_cols = vmm_i.acc, vmm_i.split_rows, vmm_i.split_cols
        # the input mode: field 0 is the config's own, n > 0 the encoding n - 1 (isa.mode_field)
        mode = Signal(InputEncoding)
        m.d.comb += mode.eq(Mux(vmm_i.mode == 0, cfg.datapath.mode().code, vmm_i.mode - 1))
        # an input word clamped to the mode's range: the signed ib-bit range, whose most
        # negative value unary lacks (its digits are symmetric)
        in_min, in_max = -(1 << (ib - 1)), (1 << (ib - 1)) - 1
        x_sat, x_in = Signal(signed(ib)), Signal(signed(ib))
        m.d.comb += [x_sat.eq(clamp(self.rd_data.as_signed(), in_min, in_max)), x_in.eq(x_sat)]
        cfg_value = Signal(CfgValue)      # a CFG flit's value: how the tiles treat this VMM
        m.d.comb += [cfg_value.accumulate.eq(acc), cfg_value.mode.eq(mode)]
        if InputEncoding.UNARY.config_name in cfg.datapath.modes:
            with m.If((mode == InputEncoding.UNARY) & (x_sat == in_min)):
                m.d.comb += x_in.eq(in_min + 1)
        post_i, copy_i = data.View(instr_layout("POST"), ins), data.View(instr_layout("COPY"), ins)
        fill_i, loop_i = data.View(instr_layout("FILL"), ins), data.View(instr_layout("LOOP"), ins)
        assert all(post_i.shape()[n] == copy_i.shape()[n] for n in ("src", "dst", "n"))
        p_src, p_dst, p_n = post_i.src, post_i.dst, post_i.n          # COPY's are the same bits
        mul, shift, relu = post_i.mul, post_i.shift, post_i.relu
        src_iter, dst_iter = copy_i.src_iter, copy_i.dst_iter
        f_dst, f_n, f_value = fill_i.dst, fill_i.n, fill_i.value
        target = loop_i.target

        node_k = (tile0 + k + 1)[:6]
        all_tiles = Cat(C(0, 1), *[(t >= tile0) & (t < tile0 + count) for t in range(cfg.array.tiles)])
        in_addr = Signal(16)
        m.d.comb += in_addr.eq(v_src + Mux(split_rows, k * rows, 0) + i)
        copy_src = Signal(16)
        copy_dst = Signal(16)
        is_copy = op == COPY           # POST keeps its multiplier where COPY has the iter flags
        # iteration * stride, kept as running sums so no multiplier is needed
        src_offset, dst_offset = Signal(16), Signal(16)
        m.d.comb += [copy_src.eq(p_src + Mux(is_copy & src_iter, src_offset, 0) + i),
                     copy_dst.eq(p_dst + Mux(is_copy & dst_iter, dst_offset, 0) + i)]

        # POST's rounding shift, one bit per cycle in RW_SHIFT (a barrel shifter would be the
        # sequencer's largest block): round_shift(x, s) = (x >> s) + bit s-1 of x, so the
        # product shifts right while the bit it last shifted out is kept
        product = Signal(signed(41))        # registered in RW_MUL: the multiplier gets its own cycle
        to_shift = Signal(5)
        round_bit = Signal()
        shifted = Signal(signed(42))
        m.d.comb += shifted.eq(product + round_bit)
        posted = Mux(relu & (shifted < 0), 0, shifted)
        posted_sat = clamp(posted, -(1 << 31), (1 << 31) - 1)

        retire = Signal()          # the instruction is done: its registers update in one place below

        single_vmm = Signal(instr_layout("VMM"))      # RUN unit 0: one VMM on one tile
        m.d.comb += [single_vmm.op.eq(VMM), single_vmm.tile.eq(self.vmm_tile), single_vmm.count.eq(1),
                     single_vmm.src.eq(self.vmm_src), single_vmm.dst.eq(self.vmm_dst),
                     single_vmm.acc.eq(self.vmm_acc), single_vmm.mode.eq(self.vmm_mode)]

        def next_instruction():
            m.d.comb += retire.eq(1)
            with m.If(single):
                m.next = "IDLE"
            with m.Else():
                m.next = "FETCH"

        with m.FSM(name="main_fsm"):
            with m.State("IDLE"):
                with m.If(self.run_program):
                    m.d.sync += [self.pc.eq(self.pc_start), self.iteration.eq(0), self.busy.eq(1),
                                 src_offset.eq(0), dst_offset.eq(0),
                                 self.program.eq(1), self.error.eq(0), self.executed.eq(0), single.eq(0),
                                 self.program_cycles.eq(0)]
                    m.next = "FETCH"
                with m.Elif(self.run_vmm):
                    # a one-instruction program from the VMM_* registers
                    m.d.sync += [ins.eq(single_vmm), self.busy.eq(1), single.eq(1), i.eq(0), k.eq(0),
                                 vmm_count.eq(0), received.eq(0)]
                    m.next = "VMM_CFG"
            with m.State("FETCH"):
                m.next = "DECODE"
            with m.State("DECODE"):
                m.d.sync += [ins.eq(self.instr_data), i.eq(0), k.eq(0), vmm_count.eq(0), received.eq(0)]
                m.next = "EXEC"
            with m.State("EXEC"):
                with m.Switch(op):
                    with m.Case(HALT):
                        m.d.sync += [self.busy.eq(0), self.program.eq(0), self.executed.eq(self.executed + 1)]
                        m.next = "IDLE"
                    with m.Case(VMM):
                        m.next = "VMM_CFG"
                    with m.Case(POST, COPY):
                        m.next = "RW_READ"
                    with m.Case(FILL):
                        m.next = "FILL"
                    with m.Case(LOOP):
                        m.d.sync += [self.iteration.eq(self.iteration + 1), self.executed.eq(self.executed + 1),
                                     src_offset.eq(src_offset + self.in_stride),
                                     dst_offset.eq(dst_offset + self.out_stride)]
                        with m.If(self.iteration + 1 < self.iters):
                            m.d.sync += self.pc.eq(target)
                        with m.Else():
                            m.d.sync += self.pc.eq(self.pc + 1)
                        m.next = "FETCH"
                    with m.Default():
                        m.d.sync += [self.busy.eq(0), self.program.eq(0), self.error.eq(1)]
                        m.next = "IDLE"

            # -- VMM: configure each tile, send the inputs, collect every output -----------------
            with m.State("VMM_CFG"):
                m.d.comb += [self.inject.valid.eq(1), self.inject.payload.dest.eq(C(1, 1) << node_k),
                             self.inject.payload.kind.eq(FlitKind.CFG),
                             self.inject.payload.index.eq(v_dst + Mux(split_cols, k * cols, 0)),
                             self.inject.payload.value.eq(cfg_value)]
                with m.If(self.inject.ready):
                    with m.If(k == count - 1):
                        m.d.sync += k.eq(0)
                        m.next = "VMM_READ"
                    with m.Else():
                        m.d.sync += k.eq(k + 1)
            with m.State("VMM_READ"):
                m.d.comb += self.rd_addr.eq(in_addr)
                m.next = "VMM_SEND"
            with m.State("VMM_SEND"):
                m.d.comb += [self.rd_addr.eq(in_addr), self.inject.valid.eq(1),
                             self.inject.payload.dest.eq(Mux(split_rows, C(1, 1) << node_k, all_tiles)),
                             self.inject.payload.kind.eq(FlitKind.ACT), self.inject.payload.index.eq(i),
                             self.inject.payload.value.eq(x_in)]
                with m.If(self.inject.ready):
                    with m.If(i == rows - 1):
                        m.d.sync += i.eq(0)
                        with m.If(split_rows & (k != count - 1)):
                            m.d.sync += k.eq(k + 1)
                            m.next = "VMM_READ"
                        with m.Else():
                            m.next = "VMM_WAIT"
                    with m.Else():
                        m.d.sync += i.eq(i + 1)
                        m.next = "VMM_READ"
            with m.State("VMM_WAIT"):
                with m.If(received == count * cols):
                    m.d.sync += self.vmm_cycles.eq(vmm_count)
                    next_instruction()

            # -- POST and COPY: read, transform, write, one word at a time -----------------------
            with m.State("RW_READ"):
                m.d.comb += self.rd_addr.eq(copy_src)
                m.next = "RW_MUL"
                with m.If(op != POST):
                    m.next = "RW_WRITE"
            with m.State("RW_MUL"):
                m.d.comb += self.rd_addr.eq(copy_src)
                m.d.sync += [product.eq(self.rd_data.as_signed() * mul), to_shift.eq(shift), round_bit.eq(0)]
                m.next = "RW_SHIFT"
            with m.State("RW_SHIFT"):
                m.d.comb += self.rd_addr.eq(copy_src)
                with m.If(to_shift != 0):
                    m.d.sync += [product.eq(product >> 1), round_bit.eq(product[0]), to_shift.eq(to_shift - 1)]
                with m.Else():
                    m.next = "RW_WRITE"
            with m.State("RW_WRITE"):
                m.d.comb += [self.rd_addr.eq(copy_src), s_we.eq(1), s_addr.eq(copy_dst),
                             s_data.eq(Mux(op == POST, posted_sat, self.rd_data))]
                with m.If(i == p_n - 1):
                    next_instruction()
                with m.Else():
                    m.d.sync += i.eq(i + 1)
                    m.next = "RW_READ"
            with m.State("FILL"):
                m.d.comb += [s_we.eq(1), s_addr.eq(f_dst + i), s_data.eq(f_value)]
                with m.If(i == f_n - 1):
                    next_instruction()
                with m.Else():
                    m.d.sync += i.eq(i + 1)
        with m.If(retire):
            m.d.sync += [self.pc.eq(self.pc + 1), i.eq(0), k.eq(0), self.executed.eq(self.executed + 1)]
            with m.If(single):
                m.d.sync += [self.busy.eq(0), single.eq(0)]
        return m
