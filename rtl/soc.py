"""The SoC top: tiles, activation buffer, VMM engine, write-verify controller, register file
and host bridge, behind a UART (boards) or a byte stream (the simulation server).

Host-visible behaviour is :class:`cimstack.golden.GoldenSoC` plus the register map of
:mod:`cimstack.regmap` and the protocol of :mod:`cimstack.protocol`.
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from cimstack.config import ChipConfig
from cimstack.errors import ConfigError
from cimstack.regmap import register_map

from .bridge import RUN_UNITS, HostBridge
from .regs import RegisterFile, port_name
from .tile import CimTile, _clamp
from .uart import UartRx, UartTx, uart_divisor
from .writeverify import JobLayout, ResultLayout, WriteVerifyController

__all__ = ["CimSoC", "VmmEngine"]


class VmmEngine(wiring.Component):
    """Runs one VMM: streams act[src .. src+rows) (clamped to the input range) into the
    selected tile and writes (or adds, wrapping) its cols outputs to act[dst ..)."""

    def __init__(self, cfg: ChipConfig):
        self.cfg = cfg
        super().__init__({
            "start": In(1), "sel_tile": In(8), "src": In(16), "dst": In(16), "accumulate": In(1),
            "busy": Out(1), "tile": Out(8), "cycles": Out(32),
            "x": Out(stream.Signature(signed(cfg.input.bits))),
            "y": In(stream.Signature(signed(cfg.post.out_bits))),
            "rd_addr": Out(16), "rd_data": In(32),
            "wr_addr": Out(16), "wr_data": Out(32), "wr_en": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        rows, cols, ib = cfg.array.rows, cfg.array.cols, cfg.input.bits
        src, dst, acc = Signal(16), Signal(16), Signal()
        i = Signal(16)
        count = Signal(32)
        with m.If(self.busy):
            m.d.sync += count.eq(count + 1)
        m.d.comb += [self.x.payload.eq(_clamp(self.rd_data.as_signed(), -(1 << (ib - 1)), (1 << (ib - 1)) - 1)),
                     self.wr_addr.eq(dst + i), self.wr_data.eq(Mux(acc, self.rd_data + self.y.payload, self.y.payload))]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [src.eq(self.src), dst.eq(self.dst), acc.eq(self.accumulate),
                                 self.tile.eq(self.sel_tile), i.eq(0), self.busy.eq(1)]
                    m.next = "X_WAIT"
            with m.State("X_WAIT"):
                m.d.comb += self.rd_addr.eq(src + i)
                m.next = "X_SEND"
            with m.State("X_SEND"):
                m.d.comb += [self.rd_addr.eq(src + i), self.x.valid.eq(1)]
                with m.If(self.x.ready):
                    with m.If(i == rows - 1):
                        m.d.sync += i.eq(0)
                        m.next = "Y_WAIT"
                    with m.Else():
                        m.d.sync += i.eq(i + 1)
                        m.next = "X_WAIT"
            with m.State("Y_WAIT"):
                m.d.comb += self.rd_addr.eq(dst + i)
                m.next = "Y_TAKE"
            with m.State("Y_TAKE"):
                m.d.comb += [self.rd_addr.eq(dst + i), self.y.ready.eq(1)]
                with m.If(self.y.valid):
                    m.d.comb += self.wr_en.eq(1)
                    with m.If(i == cols - 1):
                        m.d.sync += [self.busy.eq(0), self.cycles.eq(count + 1), count.eq(0)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += i.eq(i + 1)
                        m.next = "Y_WAIT"
        return m


class CimSoC(wiring.Component):
    """The whole chip. ``phy="uart"``: ports ``uart_rx``/``uart_tx`` at ``clock.uart_baud``;
    ``phy="stream"``: byte streams ``rx``/``tx`` (the simulation server's socket). ``busy`` is
    high while any unit runs or the bridge holds a frame (the server sleeps when it is low)."""

    def __init__(self, cfg: ChipConfig, phy: str = "uart"):
        if phy not in ("uart", "stream"):
            raise ConfigError(f"phy must be 'uart' or 'stream', got {phy!r}")
        self.cfg, self.phy = cfg, phy
        self.regmap = register_map(cfg)
        members = {"busy": Out(1)}
        if phy == "uart":
            members |= {"uart_rx": In(1, init=1), "uart_tx": Out(1, init=1)}
        else:
            members |= {"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8))}
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        cfg, regmap = self.cfg, self.regmap
        a = cfg.array
        m.submodules.regs = regs = RegisterFile(regmap)
        m.submodules.bridge = bridge = HostBridge(cfg, regmap)
        m.submodules.vmm = vmm = VmmEngine(cfg)
        m.submodules.wv = wv = WriteVerifyController(cfg)
        tiles = []
        for t in range(a.tiles):
            tile = CimTile(cfg, t)
            m.submodules[f"tile{t}"] = tile
            tiles.append(tile)

        def reg(name):
            return getattr(regs, port_name(name))

        # ---- physical layer -------------------------------------------------------------
        if self.phy == "uart":
            div = uart_divisor(cfg.clock.clock_hz, cfg.clock.uart_baud)
            m.submodules.uart_rx = urx = UartRx(div)
            m.submodules.uart_tx = utx = UartTx(div)
            m.d.comb += [urx.rx.eq(self.uart_rx), self.uart_tx.eq(utx.tx)]
            wiring.connect(m, urx.o, bridge.rx)
            wiring.connect(m, bridge.tx, utx.i)
        else:
            wiring.connect(m, wiring.flipped(self.rx), bridge.rx)
            wiring.connect(m, bridge.tx, wiring.flipped(self.tx))

        # ---- registers <-> bridge, status ---------------------------------------------------
        regs_bus(m, regs, bridge)
        cycles = Signal(32)
        m.d.sync += cycles.eq(cycles + 1)
        status = Cat(vmm.busy, wv.busy, wv.cell_busy)
        m.d.comb += [
            reg("STATUS").eq(status), reg("CYCLES").eq(cycles),
            reg("LINK_FRAMES").eq(bridge.frames_ok), reg("LINK_ERRORS").eq(bridge.frames_bad),
            reg("WV_DONE").eq(wv.done_count), reg("VMM_CYCLES").eq(vmm.cycles), reg("CELL_RESULT").eq(wv.cell_result),
            bridge.status.eq(status), bridge.cycles.eq(cycles),
            bridge.busy.eq(Cat(vmm.busy, wv.busy | wv.cell_busy)),
            self.busy.eq(vmm.busy | wv.busy | wv.cell_busy | bridge.active),
        ]
        assert RUN_UNITS == ("vmm", "wv")

        # ---- activation buffer ----------------------------------------------------------------
        m.submodules.act = act = memory.Memory(shape=32, depth=cfg.soc.act_words, init=[])
        act_w, act_r_eng, act_r_host = act.write_port(), act.read_port(), act.read_port()
        m.d.comb += [act_r_eng.addr.eq(vmm.rd_addr), vmm.rd_data.eq(act_r_eng.data)]

        # ---- write-verify job and result memories ------------------------------------------
        m.submodules.wv_jobs = jobs = memory.Memory(shape=JobLayout, depth=cfg.soc.wv_jobs, init=[])
        m.submodules.wv_results = results = memory.Memory(shape=ResultLayout, depth=cfg.soc.wv_jobs, init=[])
        jobs_w, jobs_r_wv, jobs_r_host = jobs.write_port(), jobs.read_port(), jobs.read_port()
        res_w, res_r_host = results.write_port(), results.read_port()
        m.d.comb += [jobs_r_wv.addr.eq(wv.job_addr), wv.job_data.eq(jobs_r_wv.data)]

        # ---- VMM engine -----------------------------------------------------------------------
        m.d.comb += [vmm.start.eq(bridge.run[0]), vmm.sel_tile.eq(reg("VMM_TILE")[:8]),
                     vmm.src.eq(reg("VMM_SRC")[:16]), vmm.dst.eq(reg("VMM_DST")[:16]),
                     vmm.accumulate.eq(reg("VMM_FLAGS")[0])]
        for t, tile in enumerate(tiles):
            sel = vmm.tile == t
            m.d.comb += [tile.x.payload.eq(vmm.x.payload), tile.x.valid.eq(vmm.x.valid & sel),
                         tile.y.ready.eq(vmm.y.ready & sel)]
            with m.If(sel):
                m.d.comb += [vmm.x.ready.eq(tile.x.ready), vmm.y.valid.eq(tile.y.valid),
                             vmm.y.payload.eq(tile.y.payload.value)]

        # ---- write-verify controller ---------------------------------------------------------
        amp = reg("WV_AMP")
        cell_addr, cell_unit, cell_op = reg("CELL_ADDR"), reg("CELL_UNIT"), reg("CELL_OP")
        m.d.comb += [
            wv.start.eq(bridge.run[1]), wv.wv_tile.eq(reg("WV_TILE")[:8]), wv.count.eq(reg("WV_COUNT")[:16]),
            wv.max_pulses.eq(reg("WV_MAX_PULSES")[:10]),
            wv.amp_start.eq(amp[0:8]), wv.amp_step.eq(amp[8:16]), wv.amp_max.eq(amp[16:24]),
            wv.cell_op.eq(getattr(regs, "cell_op_w")), wv.cell_tile.eq(cell_addr[0:8]),
            wv.cell_row.eq(cell_addr[8:24]), wv.cell_cell.eq(cell_addr[24]),
            wv.cell_group.eq(cell_unit[0:8]), wv.cell_lane.eq(cell_unit[8:16]),
            wv.cell_pulse.eq(cell_op[0]), wv.cell_polarity.eq(cell_op[1]), wv.cell_amplitude.eq(cell_op[8:16]),
            wv.reseed.eq(getattr(regs, "control_w") & reg("CONTROL")[0]), wv.seed.eq(reg("SEED")),
        ]
        for t, tile in enumerate(tiles):
            sel = wv.tile == t
            m.d.comb += [tile.pulse.payload.eq(wv.pulse.payload), tile.pulse.valid.eq(wv.pulse.valid & sel),
                         tile.pulse_done.ready.eq(wv.pulse_done.ready & sel)]
            with m.If(sel):
                m.d.comb += [wv.pulse.ready.eq(tile.pulse.ready), wv.pulse_done.valid.eq(tile.pulse_done.valid),
                             wv.pulse_done.payload.eq(tile.pulse_done.payload)]

        # ---- per-tile registers -----------------------------------------------------------
        for t, tile in enumerate(tiles):
            m.d.comb += [
                tile.adc_gain.eq(reg(f"TILE{t}_ADC_GAIN")[:8]),
                tile.adc_offset.eq(reg(f"TILE{t}_ADC_OFFSET")[:cfg.adc.bits]),
                tile.relu.eq(reg(f"TILE{t}_RELU")[0]),
                tile.reseed.eq(getattr(regs, "control_w") & reg("CONTROL")[0]), tile.seed.eq(reg("SEED")),
            ]

        # ---- memory bus: the bridge's bulk reads and writes ------------------------------
        mem = bridge.mem
        rd_wait = Signal()          # synchronous reads: ack in the second cycle of re
        m.d.sync += rd_wait.eq(mem.re & ~mem.ack)
        m.d.comb += [act_r_host.addr.eq(mem.addr), jobs_r_host.addr.eq(mem.addr), res_r_host.addr.eq(mem.addr)]
        # the engines own their write ports while running; the bridge refuses memory ops then
        host_act_we, host_res_we = Signal(), Signal()
        with m.If(vmm.busy):
            m.d.comb += [act_w.addr.eq(vmm.wr_addr), act_w.data.eq(vmm.wr_data), act_w.en.eq(vmm.wr_en)]
        with m.Else():
            m.d.comb += [act_w.addr.eq(mem.addr), act_w.data.eq(mem.w_data[:32]), act_w.en.eq(host_act_we)]
        with m.If(wv.busy):
            m.d.comb += [res_w.addr.eq(wv.res_addr), res_w.data.eq(wv.res_data), res_w.en.eq(wv.res_we)]
        with m.Else():
            m.d.comb += [res_w.addr.eq(mem.addr), res_w.data.eq(mem.w_data[:32]), res_w.en.eq(host_res_we)]
        m.d.comb += [jobs_w.addr.eq(mem.addr), jobs_w.data.eq(mem.w_data[:64])]

        post_bits = cfg.post.bias_bits + cfg.post.scale_bits
        with m.Switch(mem.space):
            for space in regmap.spaces:
                with m.Case(space.space):
                    if space.name == "ACT":
                        m.d.comb += [host_act_we.eq(mem.we), mem.r_data.eq(act_r_host.data)]
                    elif space.name == "WV_JOBS":
                        m.d.comb += [jobs_w.en.eq(mem.we), mem.r_data.eq(jobs_r_host.data)]
                    elif space.name == "WV_RESULTS":
                        m.d.comb += [host_res_we.eq(mem.we), mem.r_data.eq(res_r_host.data)]
                    if space.tile is None:
                        m.d.comb += mem.ack.eq(mem.we | (mem.re & rd_wait))
                    else:
                        tile = tiles[space.tile]
                        target = 0 if space.name.endswith("_XBAR") else 1
                        bits = space.word_bits if target == 0 else post_bits
                        m.d.comb += [tile.load.valid.eq(mem.we), tile.load.payload.addr.eq(mem.addr),
                                     tile.load.payload.target.eq(target),
                                     tile.load.payload.data.eq(mem.w_data[:bits]),
                                     mem.ack.eq(mem.we & tile.load.ready)]
        return m


def regs_bus(m: Module, regs: RegisterFile, bridge: HostBridge) -> None:
    """Wire the bridge's register-bus port to the register file."""
    m.d.comb += [regs.addr.eq(bridge.regs.addr), regs.w_data.eq(bridge.regs.w_data),
                 regs.w_en.eq(bridge.regs.w_en), bridge.regs.r_data.eq(regs.r_data),
                 bridge.regs.hit.eq(regs.hit), bridge.regs.writable.eq(regs.writable)]
