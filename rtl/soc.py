"""The SoC top: tiles on a router mesh with the activation buffer, the sequencer, the
write-verify controller, the register file and the host bridge, behind a UART (boards) or a
byte stream (the simulation server)::

    host ─ UART/stream ─ HostBridge ─┬─ RegisterFile ── control of every unit
                                     └─ memory bus ─── ACT, INSTR, WV_*, tile loads
    Sequencer (node 0, owns ACT) ══ Mesh (XY routers) ══ TileInterface ─ CimTile (nodes 1..N)
    WriteVerifyController ── pulse ports of the tiles

Host-visible behaviour is :class:`cimstack.golden.GoldenSoC` plus the register map of
:mod:`cimstack.chip.regmap` and the protocol of :mod:`cimstack.chip.protocol`.
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from cimstack.chip.config import ChipConfig
from cimstack.chip.enums import RunUnit
from cimstack.chip.regmap import register_map
from cimstack.errors import ConfigError
from cimstack.rtl.bridge import HostBridge
from cimstack.rtl.noc import Mesh, TileInterface
from cimstack.rtl.regs import RegisterFile, port_name
from cimstack.rtl.sequencer import Sequencer
from cimstack.rtl.tile import CimTile, Layouts
from cimstack.rtl.uart import UartRx, UartTx, uart_divisor
from cimstack.rtl.writeverify import JobLayout, ResultLayout, WriteVerifyController

__all__ = ["CimSoC"]


class CimSoC(wiring.Component):
    """The whole chip. ``phy="uart"``: ports ``uart_rx``/``uart_tx`` at ``clock.uart_baud``;
    ``phy="stream"``: byte streams ``rx``/``tx`` (the simulation server's socket). ``busy`` is
    high while any unit runs or the bridge holds a frame (the server sleeps when it is low)."""

    def __init__(self, cfg: ChipConfig, phy: str = "uart"):
        if cfg.array.tiles > 63:
            raise ConfigError(f"array.tiles = {cfg.array.tiles}: the sequencer addresses at most 63 tiles")
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
        m.submodules.seq = seq = Sequencer(cfg)
        m.submodules.wv = wv = WriteVerifyController(cfg)
        m.submodules.mesh = mesh = Mesh(a.tiles + 1)
        wiring.connect(m, seq.inject, mesh.inject[0])
        wiring.connect(m, mesh.eject[0], seq.eject)
        tiles = []
        col_bits = Layouts(cfg).col_bits
        for t in range(a.tiles):
            tile = CimTile(cfg, t)
            ni = TileInterface(a.tiles + 1, cfg.input.bits, cfg.post.out_bits, col_bits)
            m.submodules[f"tile{t}"] = tile
            m.submodules[f"ni{t}"] = ni
            wiring.connect(m, mesh.eject[t + 1], ni.eject)
            wiring.connect(m, ni.inject, mesh.inject[t + 1])
            wiring.connect(m, ni.x, tile.x)
            m.d.comb += tile.mode.eq(ni.mode)
            wiring.connect(m, tile.y, ni.y)
            tiles.append(tile)

        def reg(name):
            """The register's port: a view whose fields are the declared ones."""
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
        status, seq_state = reg("STATUS"), reg("SEQ_STATE")
        unit_busy = {RunUnit.VMM: seq.busy, RunUnit.WRITE_VERIFY: wv.busy | wv.cell_busy, RunUnit.PROGRAM: seq.busy}
        m.d.comb += [
            status.vmm_busy.eq(seq.busy), status.wv_busy.eq(wv.busy), status.cell_busy.eq(wv.cell_busy),
            status.seq_busy.eq(seq.program),
            reg("CYCLES").value.eq(cycles),
            reg("LINK_FRAMES").value.eq(bridge.frames_ok), reg("LINK_ERRORS").value.eq(bridge.frames_bad),
            reg("LINK_DUPLICATES").count.eq(bridge.frames_dup),
            reg("WV_DONE").count.eq(wv.done_count), reg("VMM_CYCLES").value.eq(seq.vmm_cycles),
            reg("CELL_RESULT").value.eq(wv.cell_result),
            seq_state.pc.eq(seq.pc), seq_state.iteration.eq(seq.iteration), seq_state.error.eq(seq.error),
            reg("SEQ_EXECUTED").value.eq(seq.executed), reg("SEQ_CYCLES").value.eq(seq.program_cycles),
            bridge.status.eq(status), bridge.cycles.eq(cycles),
            bridge.busy.eq(Cat(unit_busy[u] for u in RunUnit)),
            self.busy.eq(seq.busy | wv.busy | wv.cell_busy | bridge.active),
        ]

        # ---- activation buffer: sequencer (main and accumulate reads, writes), host -----------
        # The host reads a memory only while every unit is idle (the bridge refuses memory
        # operations otherwise) and the engines read only while running, so each memory's
        # engine read port doubles as the host's: one block RAM copy fewer per memory.
        host_reads = bridge.mem.re
        m.submodules.act = act = memory.Memory(shape=32, depth=cfg.soc.act_words, init=[])
        act_w, act_r_host, act_r_acc = act.write_port(), act.read_port(), act.read_port()
        act_r_seq = act_r_host
        m.d.comb += [act_r_seq.addr.eq(Mux(host_reads, bridge.mem.addr, seq.rd_addr)),
                     seq.rd_data.eq(act_r_seq.data),
                     act_r_acc.addr.eq(seq.acc_addr), seq.acc_data.eq(act_r_acc.data)]

        # ---- sequencer program memory ---------------------------------------------------------
        m.submodules.instr = instr = memory.Memory(shape=64, depth=cfg.soc.instr_words, init=[])
        instr_w, instr_r_host = instr.write_port(), instr.read_port()
        m.d.comb += [instr_r_host.addr.eq(Mux(host_reads, bridge.mem.addr, seq.instr_addr)),
                     seq.instr_data.eq(instr_r_host.data),
                     instr_w.addr.eq(bridge.mem.addr), instr_w.data.eq(bridge.mem.w_data[:64])]

        # ---- write-verify job and result memories ------------------------------------------
        m.submodules.wv_jobs = jobs = memory.Memory(shape=JobLayout, depth=cfg.soc.wv_jobs, init=[])
        m.submodules.wv_results = results = memory.Memory(shape=ResultLayout, depth=cfg.soc.wv_jobs, init=[])
        jobs_w, jobs_r_host = jobs.write_port(), jobs.read_port()
        res_w, res_r_host = results.write_port(), results.read_port()
        m.d.comb += [jobs_r_host.addr.eq(Mux(host_reads, bridge.mem.addr, wv.job_addr)),
                     wv.job_data.eq(jobs_r_host.data)]

        # ---- sequencer -------------------------------------------------------------------------
        flags = reg("VMM_FLAGS")
        m.d.comb += [seq.run_vmm.eq(bridge.run[RunUnit.VMM]), seq.run_program.eq(bridge.run[RunUnit.PROGRAM]),
                     seq.vmm_tile.eq(reg("VMM_TILE").tile), seq.vmm_src.eq(reg("VMM_SRC").addr),
                     seq.vmm_dst.eq(reg("VMM_DST").addr), seq.vmm_acc.eq(flags.accumulate),
                     seq.vmm_mode.eq(flags.mode),
                     seq.pc_start.eq(reg("SEQ_PC").pc), seq.iters.eq(reg("SEQ_ITERS").iters),
                     seq.in_stride.eq(reg("SEQ_IN_STRIDE").stride), seq.out_stride.eq(reg("SEQ_OUT_STRIDE").stride)]

        # ---- write-verify controller ---------------------------------------------------------
        amp = reg("WV_AMP")
        cell_addr, cell_unit, cell_op = reg("CELL_ADDR"), reg("CELL_UNIT"), reg("CELL_OP")
        reseed = regs.control_w & reg("CONTROL").reseed
        m.d.comb += [
            wv.start.eq(bridge.run[RunUnit.WRITE_VERIFY]), wv.wv_tile.eq(reg("WV_TILE").tile),
            wv.count.eq(reg("WV_COUNT").count), wv.max_pulses.eq(reg("WV_MAX_PULSES").pulses),
            wv.amp_start.eq(amp.start), wv.amp_step.eq(amp.step), wv.amp_max.eq(amp.max),
            wv.cell_op.eq(regs.cell_op_w), wv.cell_tile.eq(cell_addr.tile),
            wv.cell_row.eq(cell_addr.row), wv.cell_cell.eq(cell_addr.cell),
            wv.cell_group.eq(cell_unit.group), wv.cell_lane.eq(cell_unit.lane),
            wv.cell_pulse.eq(cell_op.pulse), wv.cell_polarity.eq(cell_op.polarity),
            wv.cell_amplitude.eq(cell_op.amplitude),
            wv.reseed.eq(reseed), wv.seed_key.eq(reg("SEED_KEY").value),
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
                tile.adc_gain.eq(reg(f"TILE{t}_ADC_GAIN").gain),
                tile.adc_offset.eq(reg(f"TILE{t}_ADC_OFFSET").offset),
                tile.relu.eq(reg(f"TILE{t}_RELU").relu),
                tile.reseed.eq(reseed), tile.seed_key.eq(reg("SEED_KEY").value),
            ]

        # ---- memory bus: the bridge's bulk reads and writes ------------------------------
        mem = bridge.mem
        rd_wait = Signal()          # synchronous reads: ack in the second cycle of re
        m.d.sync += rd_wait.eq(mem.re & ~mem.ack)
        m.d.comb += res_r_host.addr.eq(mem.addr)
        # the engines own their write ports while running; the bridge refuses memory ops then
        host_act_we, host_res_we = Signal(), Signal()
        with m.If(seq.busy):
            m.d.comb += [act_w.addr.eq(seq.wr_addr), act_w.data.eq(seq.wr_data), act_w.en.eq(seq.wr_en)]
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
                    elif space.name == "INSTR":
                        m.d.comb += [instr_w.en.eq(mem.we), mem.r_data.eq(instr_r_host.data)]
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

