"""cocotb bench of the Verilated tile: replays a JSON job and records what the RTL returns.

The job (written by :class:`cimstack.sim.verilator.CocotbTop`) holds the crossbar memory image,
post-processing parameters, run-time registers and a list of operations::

    {"memory": [int, ...], "post": [[bias, scale], ...], "adc_gain": g, "adc_offset": o,
     "relu": 0|1, "y_stall": probability of y.ready low per cycle (0: always ready),
     "ops": [{"op": "vmm", "x": [...]}, {"op": "pulse", "row":.., "group":.., "lane":..,
             "cell":.., "polarity":.., "amplitude":..}, {"op": "reseed", "seed": s},
             {"op": "regs", "adc_gain":.., "adc_offset":.., "relu":..}]}

The result (``result.json``) lists, per op, the y values (vmm) or the new state (pulse), and
the cycles each op took.
"""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import cocotb
from amaranth.hdl import Shape
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from cimstack.chip import prng
from cimstack.chip.config import ChipConfig
from cimstack.rtl.tile import Layouts


def pack(layout, values: dict) -> int:
    """Pack a dict of integers into the bits of an Amaranth StructLayout."""
    word = 0
    for name, field in layout:
        width = field.width
        word |= (int(values.get(name, 0)) & ((1 << width) - 1)) << field.offset
    return word


def unpack(layout, word: int) -> dict:
    out = {}
    for name, field in layout:
        v = (word >> field.offset) & ((1 << field.width) - 1)
        if Shape.cast(field.shape).signed and v >> (field.width - 1):
            v -= 1 << field.width
        out[name] = v
    return out


class TileDriver:
    def __init__(self, dut, cfg: ChipConfig):
        self.dut, self.cfg, self.lay = dut, cfg, Layouts(cfg)
        self.cycle = 0

    async def count_cycles(self):
        while True:
            await RisingEdge(self.dut.clk)
            self.cycle += 1

    async def reset(self):
        self.dut.rst.value = 1
        for name in ("load__valid", "x__valid", "pulse__valid", "reseed"):
            getattr(self.dut, name).value = 0
        self.dut.y__ready.value = 1
        self.dut.pulse_done__ready.value = 1
        for _ in range(3):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    async def send(self, port: str, payloads):
        """Drive a stream with back-to-back beats, honouring ready."""
        valid, ready = getattr(self.dut, f"{port}__valid"), getattr(self.dut, f"{port}__ready")
        payload = getattr(self.dut, f"{port}__payload")
        for value in payloads:
            payload.value = value
            valid.value = 1
            while True:
                await ReadOnly()
                accepted = int(ready.value)
                await RisingEdge(self.dut.clk)
                if accepted:
                    break
        valid.value = 0

    async def receive(self, port: str, count: int, layout=None) -> list:
        """Collect ``count`` beats from a stream whose ready is driven elsewhere."""
        valid, ready = getattr(self.dut, f"{port}__valid"), getattr(self.dut, f"{port}__ready")
        payload = getattr(self.dut, f"{port}__payload")
        out = []
        await ReadOnly()
        while len(out) < count:
            if int(valid.value) and int(ready.value):
                word = payload.value.to_unsigned()
                out.append(unpack(layout, word) if layout is not None else word)
                await RisingEdge(self.dut.clk)
                await ReadOnly()
            elif int(valid.value):
                await RisingEdge(self.dut.clk)
                await ReadOnly()
            else:
                await RisingEdge(valid)
                await ReadOnly()
        return out

    async def stall_y(self, probability: float, rng: random.Random):
        while True:
            self.dut.y__ready.value = int(rng.random() >= probability)
            await RisingEdge(self.dut.clk)

    async def vmm(self, x: list[int]) -> list[int]:
        bits = self.cfg.input.bits
        collector = cocotb.start_soon(self.receive("y", self.cfg.array.cols, self.lay.output))
        await self.send("x", [v & ((1 << bits) - 1) for v in x])
        beats = await collector
        cols = [b["col"] for b in beats]
        if cols != list(range(self.cfg.array.cols)):
            raise AssertionError(f"y beats came out in column order {cols}")
        await RisingEdge(self.dut.clk)
        return [b["value"] for b in beats]

    async def pulse(self, op: dict) -> int:
        collector = cocotb.start_soon(self.receive("pulse_done", 1))
        await self.send("pulse", [pack(self.lay.pulse, op)])
        (state,) = await collector
        await RisingEdge(self.dut.clk)
        return state


@cocotb.test()
async def run_job(dut):
    """Replay the job in $CIMSTACK_JOB_DIR and write result.json beside it."""
    job_dir = Path(os.environ["CIMSTACK_JOB_DIR"])
    cfg = ChipConfig.from_toml((job_dir / "config.toml").read_text())
    job = json.loads((job_dir / "job.json").read_text())
    drv = TileDriver(dut, cfg)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.adc_gain.value = job.get("adc_gain", cfg.adc.gain)
    dut.adc_offset.value = job.get("adc_offset", cfg.adc.offset) & ((1 << cfg.adc.bits) - 1)
    dut.relu.value = int(job.get("relu", cfg.post.relu))
    dut.seed_key.value = 0
    await drv.reset()
    cocotb.start_soon(drv.count_cycles())

    lay = drv.lay
    await drv.send("load", [pack(lay.load, {"data": w, "addr": a, "target": 0})
                            for a, w in enumerate(job.get("memory", []))])
    await drv.send("load", [pack(lay.load, {"data": pack(lay.post_word, {"bias": b, "scale": s}),
                                            "addr": col, "target": 1})
                            for col, (b, s) in enumerate(job.get("post", []))])
    if job.get("y_stall", 0):
        cocotb.start_soon(drv.stall_y(job["y_stall"], random.Random(job.get("stall_seed", 0))))

    results, cycles = [], []
    start = time.perf_counter()
    for op in job["ops"]:
        c0 = drv.cycle
        kind = op["op"]
        if kind == "vmm":
            dut.mode.value = cfg.datapath.mode(op.get("mode")).code
            results.append(await drv.vmm(op["x"]))
        elif kind == "pulse":
            results.append(await drv.pulse(op))
        elif kind == "reseed":
            dut.seed_key.value = prng.seed_key(op["seed"])
            dut.reseed.value = 1
            await RisingEdge(dut.clk)
            dut.reseed.value = 0
            await RisingEdge(dut.clk)
            results.append(None)
        elif kind == "regs":
            if "adc_gain" in op:
                dut.adc_gain.value = op["adc_gain"]
            if "adc_offset" in op:
                dut.adc_offset.value = op["adc_offset"] & ((1 << cfg.adc.bits) - 1)
            if "relu" in op:
                dut.relu.value = int(op["relu"])
            await RisingEdge(dut.clk)
            results.append(None)
        else:
            raise ValueError(f"unknown job op {kind!r}")
        cycles.append(drv.cycle - c0)
    wall = time.perf_counter() - start
    (job_dir / "result.json").write_text(json.dumps({"results": results, "cycles": cycles, "wall_s": wall}))
