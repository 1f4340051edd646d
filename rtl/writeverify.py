"""Write-verify controller: programs a list of cells by incremental-step pulses with noisy
verify reads, and gives the host single-cell reads and pulses.

The algorithm and its status codes are those of :meth:`cimstack.golden.GoldenSoC.write_verify`
(bit-exact, including the verify generator, stream :data:`cimstack.chip.prng.VERIFY_STREAM`).
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from cimstack.chip import prng as ref_prng
from cimstack.chip.config import NOISE_FRAC_BITS, ChipConfig
from cimstack.chip.enums import Polarity, WriteVerifyStatus
from cimstack.chip.prng import VERIFY_STREAM
from cimstack.chip.regmap import WV_JOB_FIELDS, WV_RESULT_FIELDS
from cimstack.rtl.arith import clamp, const_mul, round_shift
from cimstack.rtl.prng import irwin_hall, reseed_value, xorshift32_next
from cimstack.rtl.regs import field_layout
from cimstack.rtl.tile import Layouts

__all__ = ["WriteVerifyController", "JobLayout", "ResultLayout"]

#: a word of the WV_JOBS / WV_RESULTS memory spaces, as :mod:`cimstack.chip.regmap` declares it
JobLayout = field_layout(WV_JOB_FIELDS)
ResultLayout = field_layout(WV_RESULT_FIELDS)


class WriteVerifyController(wiring.Component):
    """Drives one tile's ``pulse`` port (``tile`` selects which) and reads its ``pulse_done``.

    Job list: ``job_addr`` -> ``job_data`` one cycle later (a synchronous memory port);
    results are written through ``res_addr``/``res_data``/``res_we``.
    """

    def __init__(self, cfg: ChipConfig):
        self.cfg, self.lay = cfg, Layouts(cfg)
        dp = cfg.datapath
        super().__init__({
            "start": In(1), "wv_tile": In(8), "count": In(16), "max_pulses": In(10),
            "amp_start": In(8), "amp_step": In(8), "amp_max": In(8),
            "busy": Out(1), "done_count": Out(16),
            "job_addr": Out(16), "job_data": In(JobLayout),
            "res_addr": Out(16), "res_data": Out(ResultLayout), "res_we": Out(1),
            "cell_op": In(1), "cell_tile": In(8), "cell_row": In(16), "cell_group": In(8),
            "cell_lane": In(8), "cell_cell": In(1), "cell_pulse": In(1), "cell_polarity": In(Polarity),
            "cell_amplitude": In(8),
            "cell_busy": Out(1), "cell_result": Out(signed(32)),
            "tile": Out(8),
            "pulse": Out(stream.Signature(self.lay.pulse)),
            "pulse_done": In(stream.Signature(dp.state_bits)),
            "reseed": In(1), "seed_key": In(32),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, dp = self.cfg, self.cfg.datapath
        amax = cfg.device.pulse_max_amplitude

        rng = Signal(32, init=ref_prng.seed_state(cfg.seed, VERIFY_STREAM))
        with m.If(self.reseed):
            m.d.sync += rng.eq(reseed_value(self.seed_key, VERIFY_STREAM))

        job = Signal(JobLayout)
        idx = Signal(16)
        count = Signal(16)
        budget = Signal(10)
        a_start, a_step, a_max = Signal(8), Signal(8), Signal(8)
        pulses = Signal(ResultLayout["pulses"].shape)
        amp = Signal(8)
        last = Signal(Polarity)            # the polarity of the job's last pulse, if it had one
        pulsed = Signal()
        # a verify read is a state plus bounded noise: size the read and error datapath to it
        # rather than to 32 bits (the results' error field saturates at 16 bits anyway)
        noise_max = (510 * dp.verify_noise_q + (1 << (NOISE_FRAC_BITS - 1))) >> NOISE_FRAC_BITS
        read_bits = ((1 << dp.state_bits) - 1 + noise_max).bit_length() + 1
        r = Signal(signed(read_bits))
        first = Signal(signed(read_bits))
        is_first = Signal()
        single = Signal()                  # a CELL_OP, not a job
        req = Signal(self.lay.pulse)

        m.d.comb += [self.job_addr.eq(idx), self.res_addr.eq(idx),
                     self.pulse.payload.eq(req)]

        # noisy verify read of the state in pulse_done
        nxt = xorshift32_next(rng)
        noise = round_shift(const_mul(irwin_hall(nxt), dp.verify_noise_q), NOISE_FRAC_BITS)
        read_value = Signal(signed(read_bits))
        m.d.comb += read_value.eq(self.pulse_done.payload + noise)

        err = Signal(signed(max(read_bits, len(job.target) + 1) + 1))
        m.d.comb += err.eq(r - job.target)
        abs_err = Mux(err < 0, -err, err)
        drift = Signal(signed(read_bits + 1))
        m.d.comb += drift.eq(r - first)
        moved = Mux(drift < 0, -drift, drift)
        pol = Mux(err < 0, Polarity.SET, Polarity.RESET)
        grown = Signal(9)
        m.d.comb += grown.eq(amp + a_step)
        next_amp = Mux(pulsed & (pol == last), Mux(grown > a_max, a_max, grown), a_start)

        def clamp_amp(v):
            return Mux(v < 1, 1, Mux(v > amax, amax, v))

        err_min, err_max = next(f for f in WV_RESULT_FIELDS if f.name == "error").bounds

        def finish(status):
            m.d.comb += [self.res_we.eq(1), self.res_data.status.eq(status),
                         self.res_data.pulses.eq(pulses),
                         self.res_data.error.eq(clamp(err, err_min, err_max))]
            m.d.sync += [idx.eq(idx + 1), self.done_count.eq(self.done_count + 1)]
            with m.If(idx + 1 == count):
                m.d.sync += self.busy.eq(0)
                m.next = "IDLE"
            with m.Else():
                m.next = "JOB_ADDR"

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [self.tile.eq(self.wv_tile), count.eq(self.count), idx.eq(0),
                                 self.done_count.eq(0), budget.eq(self.max_pulses),
                                 a_start.eq(self.amp_start), a_step.eq(self.amp_step),
                                 a_max.eq(self.amp_max), single.eq(0)]
                    with m.If(self.count != 0):
                        m.d.sync += self.busy.eq(1)
                        m.next = "JOB_ADDR"
                with m.Elif(self.cell_op):
                    m.d.sync += [self.tile.eq(self.cell_tile), self.cell_busy.eq(1), single.eq(1),
                                 req.row.eq(self.cell_row), req.group.eq(self.cell_group),
                                 req.lane.eq(self.cell_lane), req.cell.eq(self.cell_cell),
                                 req.read.eq(~self.cell_pulse), req.polarity.eq(self.cell_polarity),
                                 req.amplitude.eq(clamp_amp(self.cell_amplitude))]
                    m.next = "ISSUE"
            with m.State("JOB_ADDR"):
                m.next = "JOB_LOAD"
            with m.State("JOB_LOAD"):
                m.d.sync += [job.eq(self.job_data), pulses.eq(0), amp.eq(a_start), pulsed.eq(0),
                             is_first.eq(1),
                             req.row.eq(self.job_data.row), req.group.eq(self.job_data.group),
                             req.lane.eq(self.job_data.lane), req.cell.eq(self.job_data.cell),
                             req.read.eq(1), req.polarity.eq(Polarity.SET), req.amplitude.eq(1)]
                m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += self.pulse.valid.eq(1)
                with m.If(self.pulse.ready):
                    m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += self.pulse_done.ready.eq(1)
                with m.If(self.pulse_done.valid):
                    with m.If(req.read):
                        m.d.sync += [rng.eq(nxt), r.eq(read_value)]
                        with m.If(is_first):
                            m.d.sync += [first.eq(read_value), is_first.eq(0)]
                    with m.If(single):
                        m.d.sync += [self.cell_busy.eq(0),
                                     self.cell_result.eq(Mux(req.read, read_value, self.pulse_done.payload))]
                        m.next = "IDLE"
                    with m.Elif(req.read):
                        m.next = "EVAL"
                    with m.Else():
                        # the pulse is done: verify it
                        m.d.sync += [pulses.eq(pulses + 1), last.eq(req.polarity), pulsed.eq(1), req.read.eq(1)]
                        m.next = "ISSUE"
            with m.State("EVAL"):
                with m.If(abs_err <= job.tol):
                    finish(WriteVerifyStatus.CONVERGED)
                with m.Elif(pulses >= budget):
                    finish(Mux(moved <= job.tol, WriteVerifyStatus.STUCK, WriteVerifyStatus.FAILED))
                with m.Else():
                    m.d.sync += [amp.eq(next_amp), req.read.eq(0), req.polarity.eq(pol),
                                 req.amplitude.eq(clamp_amp(next_amp))]
                    m.next = "ISSUE"
        return m
