"""RTL helpers and small units in Amaranth's simulator: the arithmetic helpers against Python
integers, the crossbar's update/VMM arbitration."""
import random

import numpy as np
import pytest
from amaranth import Module, Shape, Signal, signed
from amaranth.sim import Simulator

from cimstack.chip.config import preset
from cimstack.chip.enums import Polarity
from cimstack.golden.tile import GoldenTile
from cimstack.rtl.arith import clamp, const_mul
from cimstack.rtl.tile import CrossbarMacro


@pytest.mark.parametrize("shape", [8, signed(11)], ids=["unsigned", "signed"])
def test_const_mul_equals_the_product(shape):
    rng = random.Random(3)
    constants = [0, 1, 2, 3, 7, 44, 64, 222, 255, 0x5555, 0xFFFF] + [rng.randrange(1 << 16) for _ in range(20)]
    m = Module()
    v = Signal(shape)
    outs = [Signal(signed(48), name=f"p{k}") for k in constants]
    for k, o in zip(constants, outs):
        m.d.comb += o.eq(const_mul(v, k))
    lo, hi = (-(1 << 10), (1 << 10) - 1) if shape != 8 else (0, 255)
    values = [lo, hi, 0, 1, -1 if lo < 0 else 2] + [rng.randint(lo, hi) for _ in range(40)]

    async def bench(ctx):
        for x in values:
            ctx.set(v, x)
            for k, o in zip(constants, outs):
                assert ctx.get(o) == x * k, f"const_mul({x}, {k})"

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("shape,lo,hi", [
    (signed(12), -32, 31),          # the signed range of 6 bits: tested on the bits above
    (signed(12), 0, 63),            # the unsigned range of 6 bits, from a signed value
    (9, 0, 31),                     # the same from an unsigned value
    (signed(12), -5, 40),           # any other range: comparators
    (signed(6), -32, 31),           # already in range
], ids=["signed-range", "unsigned-range-signed", "unsigned-range", "other", "in-range"])
def test_clamp_equals_min_max(shape, lo, hi):
    m = Module()
    v = Signal(shape)
    out = Signal(signed(16))
    m.d.comb += out.eq(clamp(v, lo, hi))
    s = Shape.cast(shape)
    values = range(-(1 << (s.width - 1)), 1 << (s.width - 1)) if s.signed else range(1 << s.width)

    async def bench(ctx):
        for x in values:
            ctx.set(v, x)
            assert ctx.get(out) == min(max(x, lo), hi), f"clamp({x}, {lo}, {hi})"

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


def _crossbar_run(cfg, words, vmm_during_update: bool):
    """Apply one SET pulse to cell (row 0, lane 0), then run a VMM pass over every row: either
    after the pulse is done, or starting while the crossbar is still updating the cell. Returns
    the lane sums and the cell's state after both."""

    xbar = CrossbarMacro(cfg)
    rows = cfg.array.rows
    out = {}

    async def bench(ctx):
        for addr, word in enumerate(words):
            ctx.set(xbar.load.payload, {"data": word, "addr": addr})
            ctx.set(xbar.load.valid, 1)
            await ctx.tick().until(xbar.load.ready)
        ctx.set(xbar.load.valid, 0)
        ctx.set(xbar.pulse.payload, {"row": 0, "group": 0, "lane": 0, "cell": 0, "polarity": Polarity.SET,
                                     "amplitude": 3, "read": 0})
        ctx.set(xbar.pulse.valid, 1)
        await ctx.tick().until(xbar.pulse.ready)
        ctx.set(xbar.pulse.valid, 0)
        ctx.set(xbar.pulse_done.ready, 1)
        if not vmm_during_update:
            await ctx.tick().until(xbar.pulse_done.valid)
        ctx.set(xbar.vmm_busy, 1)
        ctx.set(xbar.sums.ready, 1)
        for r in range(rows):
            ctx.set(xbar.digits.payload, {"digit": 1, "row": r, "pulse": 0, "group": 0,
                                          "last_row": r == rows - 1, "last_pulse": 1})
            ctx.set(xbar.digits.valid, 1)
            await ctx.tick().until(xbar.digits.ready)
        ctx.set(xbar.digits.valid, 0)
        await ctx.tick().until(xbar.sums.valid)
        sums = [ctx.get(xbar.sums.payload.sums[l]) for l in range(cfg.array.mac_lanes)]
        for _ in range(8):
            await ctx.tick()
        ctx.set(xbar.vmm_busy, 0)
        ctx.set(xbar.pulse.payload, {"row": 0, "group": 0, "lane": 0, "cell": 0, "polarity": Polarity.SET,
                                     "amplitude": 0, "read": 1})
        ctx.set(xbar.pulse.valid, 1)
        await ctx.tick().until(xbar.pulse.ready)
        ctx.set(xbar.pulse.valid, 0)
        await ctx.tick().until(xbar.pulse_done.valid)
        out["sums"], out["state"] = sums, ctx.get(xbar.pulse_done.payload)

    sim = Simulator(xbar)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return out


def test_a_vmm_started_during_a_cell_update_waits_for_it():
    """The host may RUN a VMM while write-verify programs the same tile. On a short tile the
    VMM's first rows reach the crossbar while a cell update is still under way; they must
    wait for it, or the update reads the VMM's row instead of its own word (and writes it
    back over the cell's), and the VMM reads a paused port."""

    cfg = preset("ice40-tiny").replace(array=dict(rows=2, cols=2, mac_lanes=2, adc_share=2))
    tile = GoldenTile(cfg)
    tile.program_weights(np.array([[3, -2], [-5, 7]]))
    words = tile.memory_image()
    after = _crossbar_run(cfg, words, vmm_during_update=False)
    during = _crossbar_run(cfg, words, vmm_during_update=True)
    assert during == after
