"""One crossbar tile: DAC controller, crossbar macro, ADC controller, shift-accumulator and
post-processing, plus the cell-update path that write-verify drives.

Every block elaborates from a :class:`~cimstack.chip.config.ChipConfig`; the arithmetic is exactly
that of :class:`cimstack.golden.GoldenTile` (its docstring is the specification).

Data path of one VMM (``x`` beats in, ``y`` beats out)::

    x ─► DacController ─digits─► CrossbarMacro ─lane sums─► AdcController ─codes─►
         ShiftAccumulator ─columns─► PostProcessor ─► y
"""
from __future__ import annotations

from typing import cast

from amaranth import *
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from cimstack.chip import prng as ref_prng
from cimstack.chip.bitfields import index_bits
from cimstack.chip.config import NOISE_FRAC_BITS, ChipConfig
from cimstack.chip.datapath import memory_word_bits
from cimstack.chip.enums import InputEncoding, Polarity, Stuck
from cimstack.rtl.arith import clamp, const_mul, round_shift
from cimstack.rtl.prng import irwin_hall, reseed_value, xorshift32_next

__all__ = ["CimTile", "DacController", "CrossbarMacro", "AdcController", "ShiftAccumulator",
           "PostProcessor", "Layouts"]


def effective(stuck: Value, value: Value, top: int) -> Value:
    """What a read of a cell sees: ``top`` if it is stuck at the top (:attr:`Stuck.AT_MAX`; the
    unused flag value 3 too: bit 1 decides), 0 if stuck at 0, else ``value``."""
    return Mux(stuck >= Stuck.AT_MAX, top, Mux(stuck == Stuck.AT_0, 0, value))


class Layouts:
    """The stream payload layouts of a tile, derived from one config."""

    def __init__(self, cfg: ChipConfig):
        dp, a = cfg.datapath, cfg.array
        self.cfg = cfg
        self.lanes = a.mac_lanes
        # a crossbar memory word: per lane and cell (lane * cells_per_unit + cell), its state and flag
        self.entry = data.StructLayout({"state": dp.state_bits, "stuck": Stuck})
        self.entry_bits = self.entry.size
        self.word = data.ArrayLayout(self.entry, a.mac_lanes * dp.cells_per_unit)
        self.word_bits = memory_word_bits(cfg)
        assert self.word.size == self.word_bits
        self.depth = dp.groups * a.rows
        self.addr_bits = index_bits(max(self.depth, a.cols))
        self.row_bits = index_bits(a.rows)
        self.group_bits = index_bits(dp.groups)
        self.max_pulses = max(md.pulses for md in dp.modes.values())
        self.pulse_bits = index_bits(self.max_pulses)
        self.col_bits = index_bits(a.cols)
        self.digit_bits = max(2, max(max(-md.digit_min, md.digit_max) for md in dp.modes.values()).bit_length() + 1)
        # a word of the TILE<t>_POST space: a column's post-processing parameters
        self.post_word = data.StructLayout({"bias": signed(cfg.post.bias_bits), "scale": cfg.post.scale_bits})
        self.post_word_bits = self.post_word.size

        self.load = data.StructLayout({
            "data": max(self.word_bits, self.post_word_bits),
            "addr": self.addr_bits,
            "target": 1,                       # 0: crossbar word, 1: post-processing (bias, scale)
        })
        self.digit = data.StructLayout({
            "digit": signed(self.digit_bits), "row": self.row_bits, "pulse": self.pulse_bits,
            "group": self.group_bits, "last_row": 1, "last_pulse": 1,
        })
        self.sums = data.StructLayout({
            "sums": data.ArrayLayout(signed(dp.sum_bits), a.mac_lanes),
            "pulse": self.pulse_bits, "group": self.group_bits, "last_pulse": 1,
        })
        self.codes = data.StructLayout({
            "codes": data.ArrayLayout(signed(cfg.adc.bits), a.mac_lanes),
            "pulse": self.pulse_bits, "group": self.group_bits, "last_pulse": 1,
        })
        self.column = data.StructLayout({"value": signed(dp.acc_bits), "col": self.col_bits})
        self.output = data.StructLayout({"value": signed(cfg.post.out_bits), "col": self.col_bits})
        self.pulse = data.StructLayout({
            "row": self.row_bits, "group": self.group_bits, "lane": index_bits(a.mac_lanes),
            "cell": 1, "polarity": Polarity, "amplitude": 8,
            "read": 1,                         # 1: no pulse, return the cell's effective state
        })


class DacController(wiring.Component):
    """Buffers one input vector and expands it into signed pulse digits, row by row.

    Beat order: group, then pulse, then row (the crossbar re-reads the inputs once per group).
    ``mode`` (an :class:`~cimstack.chip.enums.InputEncoding`) must hold for the whole VMM.
    """

    def __init__(self, cfg: ChipConfig):
        self.cfg, self.lay = cfg, Layouts(cfg)
        super().__init__({
            "x": In(stream.Signature(signed(cfg.input.bits))),
            "digits": Out(stream.Signature(self.lay.digit)),
            "mode": In(InputEncoding),
            "running": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, dp, lay = self.cfg, self.cfg.datapath, self.lay
        rows, bits = cfg.array.rows, cfg.input.bits
        # block RAM even when small: as flip-flops, each bit would take a logic cell of its own
        m.submodules.buf = buf = memory.Memory(shape=signed(bits), depth=rows, init=[],
                                               attrs={"ram_style": "block"})
        wr, rd = buf.write_port(), buf.read_port()

        load_row = Signal(range(rows))
        g = Signal(range(max(2, dp.groups)))
        p = Signal(range(max(2, lay.max_pulses)))
        n_pulses = Signal(range(lay.max_pulses + 1))
        with m.Switch(self.mode):
            for md in dp.modes.values():
                with m.Case(md.code):
                    m.d.comb += n_pulses.eq(md.pulses)
        r = Signal(range(max(2, rows)))
        out_valid = Signal()
        meta = Signal(lay.digit)

        m.d.comb += [
            self.x.ready.eq(~self.running),
            wr.addr.eq(load_row), wr.data.eq(self.x.payload), wr.en.eq(self.x.valid & self.x.ready),
        ]
        with m.If(self.x.valid & self.x.ready):
            with m.If(load_row == rows - 1):
                m.d.sync += [load_row.eq(0), self.running.eq(1), g.eq(0), p.eq(0), r.eq(0)]
            with m.Else():
                m.d.sync += load_row.eq(load_row + 1)

        advance = ~out_valid | self.digits.ready
        m.d.comb += [rd.en.eq(advance), rd.addr.eq(r)]
        last_row, last_pulse, last_group = r == rows - 1, p == n_pulses - 1, g == dp.groups - 1
        with m.If(advance):
            m.d.sync += out_valid.eq(self.running)
            with m.If(self.running):
                m.d.sync += [meta.row.eq(r), meta.pulse.eq(p), meta.group.eq(g),
                             meta.last_row.eq(last_row), meta.last_pulse.eq(last_pulse)]
                with m.If(~last_row):
                    m.d.sync += r.eq(r + 1)
                with m.Else():
                    m.d.sync += r.eq(0)
                    with m.If(~last_pulse):
                        m.d.sync += p.eq(p + 1)
                    with m.Else():
                        m.d.sync += p.eq(0)
                        with m.If(~last_group):
                            m.d.sync += g.eq(g + 1)
                        with m.Else():
                            m.d.sync += [g.eq(0), self.running.eq(0)]

        # digit of the buffered input for the latched pulse
        xv = rd.data
        digit = Signal(signed(lay.digit_bits))
        with m.Switch(self.mode):
            for md in dp.modes.values():
                with m.Case(md.code):
                    if md.code == InputEncoding.UNARY:
                        mag = Mux(xv < 0, -xv, xv)
                        m.d.comb += digit.eq(Mux(mag > meta.pulse, Mux(xv < 0, -1, 1), 0))
                    else:
                        db = md.pulse_shift
                        shifted = xv >> (meta.pulse * db)                 # arithmetic: xv is signed
                        with m.If(meta.last_pulse):
                            m.d.comb += digit.eq(shifted)
                        with m.Else():
                            m.d.comb += digit.eq(shifted.as_unsigned()[:db])
        m.d.comb += [self.digits.valid.eq(out_valid), self.digits.payload.eq(meta),
                     self.digits.payload.digit.eq(digit)]
        return m


class CrossbarMacro(wiring.Component):
    """Conductance states in block RAM and ``mac_lanes`` multiply-accumulate lanes.

    A memory word holds, for one row and one group of lanes, every cell's state and stuck flag
    (layout of :meth:`cimstack.golden.GoldenTile.memory_image`). A VMM streams digits in; the
    lanes accumulate ``digit * (code+ - code-)`` over the rows and emit one lane-sum vector
    per (group, pulse). When no VMM runs, ``load`` writes words and ``pulse`` applies a
    programming pulse to one cell (read-modify-write, soft-bounds step plus PRNG noise).
    """

    def __init__(self, cfg: ChipConfig, tile: int = 0):
        self.cfg, self.tile, self.lay = cfg, tile, Layouts(cfg)
        lay = self.lay
        super().__init__({
            "digits": In(stream.Signature(lay.digit)),
            "sums": Out(stream.Signature(lay.sums)),
            "load": In(stream.Signature(data.StructLayout({"data": lay.word_bits, "addr": lay.addr_bits}))),
            "pulse": In(stream.Signature(lay.pulse)),
            "pulse_done": Out(stream.Signature(cfg.datapath.state_bits)),
            "vmm_busy": In(1),
            "reseed": In(1),
            "seed_key": In(32),
        })

    def _lane_diff(self, m: Module, word: data.View, lane: int) -> Value:
        dp = self.cfg.datapath
        frac = self.cfg.cell.frac_bits
        codes = []
        for c in range(dp.cells_per_unit):
            entry = word[lane * dp.cells_per_unit + c]
            # an unsigned field of the view: a Value (View's fields are typed Value | ValueCastable)
            codes.append(effective(entry.stuck, cast(Value, entry.state)[frac:], dp.code_max))
        neg = codes[1] if dp.cells_per_unit == 2 else dp.ref_code
        diff = Signal(signed(self.cfg.cell.cell_bits + 2), name=f"diff{lane}")
        m.d.comb += diff.eq(codes[0] - neg)
        return diff

    def elaborate(self, platform):
        m = Module()
        cfg, dp, lay = self.cfg, self.cfg.datapath, self.lay
        rows, lanes = cfg.array.rows, cfg.array.mac_lanes
        m.submodules.mem = mem = memory.Memory(shape=lay.word_bits, depth=lay.depth, init=[])
        wr, rd = mem.write_port(), mem.read_port()

        # ---- VMM: two-stage pipeline (address, then multiply-accumulate) ---------------
        s1_valid = Signal()
        s1 = Signal(lay.digit)
        acc = [Signal(signed(dp.sum_bits), name=f"acc{l}") for l in range(lanes)]
        out_valid = Signal()
        out = Signal(lay.sums)
        m.d.comb += [self.sums.valid.eq(out_valid), self.sums.payload.eq(out)]
        with m.If(self.sums.ready):
            m.d.sync += out_valid.eq(0)

        # a VMM and a cell update never share the read port: a VMM that starts while an update
        # is under way (the host may RUN a VMM during write-verify) waits for it to finish
        rmw_idle = Signal()
        m.d.comb += self.digits.ready.eq(~out_valid & ~(s1_valid & s1.last_row) & rmw_idle)
        take = self.digits.valid & self.digits.ready
        vmm_addr = self.digits.payload.group * rows + self.digits.payload.row
        m.d.sync += [s1_valid.eq(take), s1.eq(self.digits.payload)]

        with m.If(s1_valid):
            for l in range(lanes):
                total = acc[l] + s1.digit * self._lane_diff(m, data.View(lay.word, rd.data), l)
                with m.If(s1.last_row):
                    m.d.sync += [out.sums[l].eq(total), acc[l].eq(0)]
                with m.Else():
                    m.d.sync += acc[l].eq(total)
            with m.If(s1.last_row):
                m.d.sync += [out_valid.eq(1), out.pulse.eq(s1.pulse), out.group.eq(s1.group),
                             out.last_pulse.eq(s1.last_pulse)]

        # ---- cell update: read, compute, write -----------------------------------------
        gs = (1 << dp.state_bits) - 1
        upd_seed = ref_prng.seed_state(cfg.seed, ref_prng.update_stream(self.tile))
        upd_rng = Signal(32, init=upd_seed)
        req = Signal(lay.pulse)
        upd_addr = Signal(lay.addr_bits)
        done_valid = Signal()
        done_state = Signal(dp.state_bits)
        m.d.comb += [self.pulse_done.valid.eq(done_valid), self.pulse_done.payload.eq(done_state)]
        with m.If(self.pulse_done.ready):
            m.d.sync += done_valid.eq(0)

        with m.If(self.reseed):
            m.d.sync += upd_rng.eq(reseed_value(self.seed_key, ref_prng.update_stream(self.tile)))

        # the selected cell's entry in the word just read
        cells = dp.cells_per_unit
        index = req.lane * cells + req.cell if cells == 2 else req.lane
        entry = data.View(lay.word, rd.data)[index]
        state, stuck = entry.state, entry.stuck
        nxt = xorshift32_next(upd_rng)
        dist = Mux(req.polarity == Polarity.RESET, state + 1, gs + 1 - state)
        step = round_shift(const_mul(req.amplitude * dist, dp.pulse_step_q), dp.state_bits + 4)
        # the pulse model spans three cycles (UPDATE, NOISE, MOVE): the step is registered, then
        # the noise product, so no cycle holds more than one multiplier chain; the word read
        # stays on the read port, which is paused until WRITE
        word_r = rd.data
        # widths from the largest step (any amplitude the request can carry) and the largest
        # noise on it, so the adders are as wide as the values they can hold
        amp_max = (1 << len(req.amplitude)) - 1
        step_max = (amp_max * (gs + 1) * dp.pulse_step_q + (1 << (dp.state_bits + 3))) >> (dp.state_bits + 4)
        noise_max = (step_max * 510 * dp.c2c_noise_q + (1 << (NOISE_FRAC_BITS - 1))) >> NOISE_FRAC_BITS
        step_r = Signal(range(step_max + 1))
        z_r = Signal(signed(11))
        noise_r = Signal(range(-noise_max, noise_max + 1))
        entry_r = data.View(lay.word, word_r)[index]
        state_r, stuck_r = entry_r.state, entry_r.stuck
        noisy = Signal(range(-noise_max, step_max + noise_max + 1))
        m.d.comb += noisy.eq(step_r + noise_r)
        moved = Mux(req.polarity == Polarity.RESET, state_r - noisy, state_r + noisy)
        new_state = Signal(dp.state_bits)
        m.d.comb += new_state.eq(Mux(stuck_r != Stuck.NONE, state_r, clamp(moved, 0, gs)))

        load_take = self.load.valid & self.load.ready
        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += self.pulse.ready.eq(~self.vmm_busy & ~done_valid)
                with m.If(self.pulse.valid & self.pulse.ready):
                    m.d.sync += [req.eq(self.pulse.payload),
                                 upd_addr.eq(self.pulse.payload.group * rows + self.pulse.payload.row)]
                    m.next = "READ"
            with m.State("READ"):
                m.next = "UPDATE"
            with m.State("UPDATE"):
                with m.If(req.read):
                    # effective state as a VMM would see it: stuck cells read as 0 or full scale
                    m.d.sync += [done_valid.eq(1),
                                 done_state.eq(effective(stuck, state, gs))]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [upd_rng.eq(nxt), step_r.eq(step), z_r.eq(irwin_hall(nxt))]
                    m.next = "NOISE"
            with m.State("NOISE"):
                m.d.sync += noise_r.eq(round_shift(const_mul(step_r * z_r, dp.c2c_noise_q), NOISE_FRAC_BITS))
                m.next = "MOVE"
            with m.State("MOVE"):
                m.d.sync += done_state.eq(new_state)
                m.next = "WRITE"
            with m.State("WRITE"):
                # the word read, with the moved cell's state patched in
                patched = data.View(lay.word, wr.data)[index]
                m.d.comb += [wr.en.eq(1), wr.addr.eq(upd_addr), wr.data.eq(word_r),
                             patched.state.eq(done_state), patched.stuck.eq(stuck_r)]
                m.d.sync += done_valid.eq(1)
                m.next = "IDLE"

        m.d.comb += [
            rmw_idle.eq(fsm.ongoing("IDLE")),
            self.load.ready.eq(~self.vmm_busy & ~fsm.ongoing("WRITE")),
            rd.addr.eq(Mux(rmw_idle, vmm_addr, upd_addr)),
            rd.en.eq(~(fsm.ongoing("UPDATE") | fsm.ongoing("NOISE") | fsm.ongoing("MOVE"))),
        ]
        with m.If(load_take):
            m.d.comb += [wr.en.eq(1), wr.addr.eq(self.load.payload.addr), wr.data.eq(self.load.payload.data)]
        return m


class AdcController(wiring.Component):
    """Per-lane read noise and analog-to-digital conversion with ``adc_share`` lanes per ADC.

    ``mac_lanes / adc_share`` converters each serve ``adc_share`` lanes, one per cycle; each
    lane owns an xorshift32 generator stepped once per conversion, so the noise a lane sees
    does not depend on the sharing (which only sets the conversion time).
    """

    def __init__(self, cfg: ChipConfig, tile: int = 0):
        self.cfg, self.tile, self.lay = cfg, tile, Layouts(cfg)
        super().__init__({
            "sums": In(stream.Signature(self.lay.sums)),
            "codes": Out(stream.Signature(self.lay.codes)),
            "gain": In(8),
            "offset": In(signed(cfg.adc.bits)),
            "reseed": In(1),
            "seed_key": In(32),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, dp = self.cfg, self.cfg.datapath
        lanes, share = cfg.array.mac_lanes, cfg.array.adc_share
        n_adc = lanes // share
        rngs = [Signal(32, name=f"rng{l}",
                       init=ref_prng.seed_state(cfg.seed, ref_prng.read_lane_stream(self.tile, l)))
                for l in range(lanes)]
        held = Signal(self.lay.sums)
        out = Signal(self.lay.codes)
        busy, out_valid = Signal(), Signal()
        # two-stage converter: stage A adds lane k's read noise, stage B (next cycle) applies
        # gain, offset and clamping to it; k runs one past the last lane to drain stage B
        k = Signal(range(share + 1))
        kb = Signal(range(max(2, share)))        # the lane index stage B is converting
        stage_b = Signal()

        m.d.comb += [self.sums.ready.eq(~busy & ~out_valid),
                     self.codes.valid.eq(out_valid), self.codes.payload.eq(out)]
        with m.If(self.codes.ready):
            m.d.sync += out_valid.eq(0)
        with m.If(self.sums.valid & self.sums.ready):
            m.d.sync += [held.eq(self.sums.payload), busy.eq(1), k.eq(0), stage_b.eq(0)]

        with m.If(busy):
            for a in range(n_adc):
                # one converter per ADC: the lane it serves this cycle is selected first
                lanes_a = range(a * share, (a + 1) * share)
                rng = Signal(32, name=f"adc{a}_rng")
                analog_in = Signal(signed(dp.sum_bits), name=f"adc{a}_sum")
                with m.Switch(k):
                    for j, lane in enumerate(lanes_a):
                        with m.Case(j):
                            m.d.comb += [rng.eq(rngs[lane]), analog_in.eq(held.sums[lane])]
                nxt = xorshift32_next(rng)
                noise = round_shift(const_mul(irwin_hall(nxt), dp.read_noise_q), NOISE_FRAC_BITS)
                analog = Signal(signed(dp.sum_bits + 2), name=f"adc{a}_analog")
                m.d.sync += analog.eq(analog_in + noise)
                code = Signal(signed(cfg.adc.bits), name=f"adc{a}_code")
                m.d.comb += code.eq(clamp(round_shift(analog * self.gain, cfg.adc.gain_shift) + self.offset,
                                           dp.adc_min, dp.adc_max))
                with m.Switch(k):
                    for j, lane in enumerate(lanes_a):
                        with m.Case(j):
                            m.d.sync += rngs[lane].eq(nxt)
                with m.If(stage_b):
                    with m.Switch(kb):
                        for j, lane in enumerate(lanes_a):
                            with m.Case(j):
                                m.d.sync += out.codes[lane].eq(code)
            m.d.sync += [stage_b.eq(k < share), kb.eq(k)]
            with m.If(k == share):
                m.d.sync += [busy.eq(0), out_valid.eq(1), out.pulse.eq(held.pulse),
                             out.group.eq(held.group), out.last_pulse.eq(held.last_pulse)]
            with m.Else():
                m.d.sync += k.eq(k + 1)

        with m.If(self.reseed):
            for l, rng in enumerate(rngs):
                m.d.sync += rng.eq(reseed_value(self.seed_key, ref_prng.read_lane_stream(self.tile, l)))
        return m


class ShiftAccumulator(wiring.Component):
    """Shift-adds ADC codes over input pulses, then over weight slices, into column values."""

    def __init__(self, cfg: ChipConfig):
        self.cfg, self.lay = cfg, Layouts(cfg)
        super().__init__({
            "codes": In(stream.Signature(self.lay.codes)),
            "columns": Out(stream.Signature(self.lay.column)),
            "mode": In(InputEncoding),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, dp, lay = self.cfg, self.cfg.datapath, self.lay
        lanes, slices = cfg.array.mac_lanes, dp.slices
        per_group = lanes // slices
        acc = [Signal(signed(dp.acc_bits), name=f"acc{l}") for l in range(lanes)]
        cols = [Signal(signed(dp.acc_bits), name=f"col{c}") for c in range(per_group)]
        emitting = Signal()
        idx = Signal(range(max(2, per_group)))
        base = Signal(lay.col_bits)

        m.d.comb += self.codes.ready.eq(~emitting)
        with m.If(self.codes.valid & self.codes.ready):
            beat = self.codes.payload
            pulse_shift = Signal(range(max(2, max(md.pulse_shift for md in dp.modes.values()) + 1)))
            with m.Switch(self.mode):
                for md in dp.modes.values():
                    with m.Case(md.code):
                        m.d.comb += pulse_shift.eq(md.pulse_shift)
            shift = beat.pulse * pulse_shift
            totals = []
            for l in range(lanes):
                prev = Mux(beat.pulse == 0, 0, acc[l])
                total = Signal(signed(dp.acc_bits), name=f"total{l}")
                m.d.comb += total.eq(prev + (beat.codes[l] << shift))
                m.d.sync += acc[l].eq(total)
                totals.append(total)
            with m.If(beat.last_pulse):
                for c in range(per_group):
                    value = sum(totals[c * slices + s] << (s * cfg.cell.cell_bits) for s in range(slices))
                    m.d.sync += cols[c].eq(value)
                m.d.sync += [emitting.eq(1), idx.eq(0), base.eq(beat.group * per_group)]

        m.d.comb += [self.columns.valid.eq(emitting),
                     self.columns.payload.value.eq(Array(cols)[idx]),
                     self.columns.payload.col.eq(base + idx)]
        with m.If(self.columns.valid & self.columns.ready):
            with m.If(idx == per_group - 1):
                m.d.sync += emitting.eq(0)
            with m.Else():
                m.d.sync += idx.eq(idx + 1)
        return m


class PostProcessor(wiring.Component):
    """Per-column bias, scale and shift, optional ReLU, saturation to ``post.out_bits``."""

    def __init__(self, cfg: ChipConfig):
        self.cfg, self.lay = cfg, Layouts(cfg)
        super().__init__({
            "columns": In(stream.Signature(self.lay.column)),
            "y": Out(stream.Signature(self.lay.output)),
            "param_write": In(stream.Signature(data.StructLayout({
                "col": self.lay.col_bits, "bias": self.lay.post_word["bias"].shape,
                "scale": self.lay.post_word["scale"].shape}))),
            "relu": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, p = self.cfg, self.cfg.post
        layout = self.lay.post_word
        init = [{"bias": 0, "scale": 1}] * cfg.array.cols
        m.submodules.params = params = memory.Memory(shape=layout, depth=cfg.array.cols, init=init)
        wr = params.write_port()
        # a synchronous read port (block RAM on FPGAs): stage 1 holds the column while its
        # parameters are read, stage 2 computes; the read advances only with stage 1
        rd = params.read_port()
        m.d.comb += [self.param_write.ready.eq(1), wr.en.eq(self.param_write.valid),
                     wr.addr.eq(self.param_write.payload.col),
                     wr.data.bias.eq(self.param_write.payload.bias),
                     wr.data.scale.eq(self.param_write.payload.scale)]

        s1_valid = Signal()
        s1 = Signal(self.lay.column)
        out_valid = Signal()
        out = Signal(self.lay.output)
        s2_free = ~out_valid | self.y.ready
        advance = ~s1_valid | s2_free
        m.d.comb += [self.y.valid.eq(out_valid), self.y.payload.eq(out),
                     self.columns.ready.eq(advance),
                     rd.addr.eq(self.columns.payload.col), rd.en.eq(advance)]
        with m.If(self.y.ready):
            m.d.sync += out_valid.eq(0)
        with m.If(advance):
            m.d.sync += [s1_valid.eq(self.columns.valid), s1.eq(self.columns.payload)]
        with m.If(s1_valid & s2_free):
            v = round_shift((s1.value + rd.data.bias) * rd.data.scale, p.shift)
            v = Mux(self.relu & (v < 0), 0, v)
            lo, hi = -(1 << (p.out_bits - 1)), (1 << (p.out_bits - 1)) - 1
            m.d.sync += [out_valid.eq(1), out.col.eq(s1.col), out.value.eq(clamp(v, lo, hi))]
        return m


class CimTile(wiring.Component):
    """A complete tile: ``load`` weights and post-processing parameters, stream ``x`` (one
    beat per row) to start a VMM, read ``y`` (one beat per column, column order), apply
    ``pulse`` requests between VMMs. ``adc_gain``, ``adc_offset``, ``relu`` are run-time
    registers; ``reseed`` (a one-cycle strobe) restarts every generator from ``seed_key``
    (:func:`cimstack.chip.prng.seed_key` of the seed).
    ``mode`` selects the VMM's input mode (an :class:`~cimstack.chip.enums.InputEncoding`); it
    is sampled with every input beat, and the value with the last row holds for the VMM.
    """

    def __init__(self, cfg: ChipConfig, tile: int = 0):
        self.cfg, self.tile, self.lay = cfg, tile, Layouts(cfg)
        lay = self.lay
        super().__init__({
            "load": In(stream.Signature(lay.load)),
            "x": In(stream.Signature(signed(cfg.input.bits))),
            "y": Out(stream.Signature(lay.output)),
            "pulse": In(stream.Signature(lay.pulse)),
            "pulse_done": Out(stream.Signature(cfg.datapath.state_bits)),
            "adc_gain": In(8, init=cfg.adc.gain),
            "adc_offset": In(signed(cfg.adc.bits), init=cfg.adc.offset),
            "relu": In(1, init=int(cfg.post.relu)),
            "mode": In(InputEncoding, init=cfg.datapath.mode().code),
            "reseed": In(1),
            "seed_key": In(32),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        m.submodules.dac = dac = DacController(cfg)
        m.submodules.xbar = xbar = CrossbarMacro(cfg, self.tile)
        m.submodules.adc = adc = AdcController(cfg, self.tile)
        m.submodules.shacc = shacc = ShiftAccumulator(cfg)
        m.submodules.post = post = PostProcessor(cfg)

        # one VMM at a time: no new input while the previous one drains to y
        computing = Signal()
        m.d.comb += [dac.x.payload.eq(self.x.payload),
                     dac.x.valid.eq(self.x.valid & ~computing),
                     self.x.ready.eq(dac.x.ready & ~computing)]
        wiring.connect(m, dac.digits, xbar.digits)
        wiring.connect(m, xbar.sums, adc.sums)
        wiring.connect(m, adc.codes, shacc.codes)
        wiring.connect(m, shacc.columns, post.columns)
        wiring.connect(m, post.y, wiring.flipped(self.y))
        wiring.connect(m, wiring.flipped(self.pulse), xbar.pulse)
        wiring.connect(m, xbar.pulse_done, wiring.flipped(self.pulse_done))

        vmm_mode = Signal(InputEncoding, init=cfg.datapath.mode().code)
        with m.If(self.x.valid & self.x.ready):
            m.d.sync += vmm_mode.eq(self.mode)
        m.d.comb += [dac.mode.eq(vmm_mode), shacc.mode.eq(vmm_mode)]

        # busy from the first input beat until the last column leaves
        last_col = self.y.valid & self.y.ready & (self.y.payload.col == cfg.array.cols - 1)
        with m.If(self.x.valid & self.x.ready):
            m.d.sync += self.busy.eq(1)
        with m.Elif(last_col):
            m.d.sync += self.busy.eq(0)
        with m.If(dac.running):
            m.d.sync += computing.eq(1)
        with m.Elif(last_col):
            m.d.sync += computing.eq(0)

        # load: target 0 -> crossbar word, target 1 -> post-processing parameters
        post_word = data.View(self.lay.post_word, self.load.payload.data[:self.lay.post_word.size])
        m.d.comb += [
            xbar.vmm_busy.eq(self.busy),
            xbar.load.payload.data.eq(self.load.payload.data),
            xbar.load.payload.addr.eq(self.load.payload.addr),
            xbar.load.valid.eq(self.load.valid & (self.load.payload.target == 0)),
            post.param_write.payload.col.eq(self.load.payload.addr),
            post.param_write.payload.bias.eq(post_word.bias),
            post.param_write.payload.scale.eq(post_word.scale),
            post.param_write.valid.eq(self.load.valid & (self.load.payload.target == 1) & ~self.busy),
            self.load.ready.eq(Mux(self.load.payload.target == 0, xbar.load.ready, ~self.busy)),
            adc.gain.eq(self.adc_gain), adc.offset.eq(self.adc_offset), post.relu.eq(self.relu),
            xbar.reseed.eq(self.reseed), xbar.seed_key.eq(self.seed_key),
            adc.reseed.eq(self.reseed), adc.seed_key.eq(self.seed_key),
        ]
        return m
