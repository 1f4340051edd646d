"""The RTL's arithmetic helpers against Python integers, in Amaranth's simulator."""
import random

import pytest
from amaranth import Module, Shape, Signal, signed
from amaranth.sim import Simulator

from cimstack.rtl.arith import clamp, const_mul


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
