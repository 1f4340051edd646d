"""cocotb bench of the SoC: plays the host's side of the byte link.

The job (``job.json`` in $CIMSTACK_JOB_DIR, written by
:meth:`cimstack.sim.verilator.CocotbTop.run_job`) is a list of steps::

    {"send": "<hex wire bytes>", "frames": k, "timeout": cycles}   send, then wait for k
                                                                   response frames
    {"wait_idle": cycles}                                         wait until ``busy`` is low

plus ``phy`` ("stream" or "uart"), ``divisor`` (cycles per UART bit), ``rx_stall`` and
``tx_stall`` (probabilities of a stalled byte-stream cycle, stream phy only) and ``seed``.
``result.json`` lists per step the hex wire bytes received and the cycles taken, and the
wall time of the whole replay. The host
side (framing, golden comparison) stays in pytest, so the bench knows nothing of the protocol
beyond counting FLAG bytes.
"""
import json
import os
import random
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge, Timer

from cimstack.chip.protocol import FLAG


class Link:
    def __init__(self, dut, job: dict):
        self.dut, self.job = dut, job
        self.phy = job.get("phy", "stream")
        self.divisor = job.get("divisor", 8)
        self.rng = random.Random(job.get("seed", 0))
        self.received = bytearray()
        self.flags = 0
        self.cycle = 0

    async def clock_counter(self):
        while True:
            await RisingEdge(self.dut.clk)
            self.cycle += 1

    async def reset(self):
        dut = self.dut
        dut.rst.value = 1
        if self.phy == "stream":
            dut.rx__valid.value = 0
            dut.tx__ready.value = 1
        else:
            dut.uart_rx.value = 1
        for _ in range(4):
            await RisingEdge(dut.clk)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    def _got(self, b: int):
        self.received.append(b)
        if b == FLAG:
            self.flags += 1

    # -- byte stream phy -----------------------------------------------------------------
    async def send_stream(self, data: bytes):
        dut, stall = self.dut, self.job.get("rx_stall", 0.0)
        for b in data:
            while stall and self.rng.random() < stall:
                dut.rx__valid.value = 0
                await RisingEdge(dut.clk)
            dut.rx__payload.value = b
            dut.rx__valid.value = 1
            while True:
                await ReadOnly()
                ok = int(dut.rx__ready.value)
                await RisingEdge(dut.clk)
                if ok:
                    break
        dut.rx__valid.value = 0

    async def receive_stream(self):
        dut, stall = self.dut, self.job.get("tx_stall", 0.0)
        rng = random.Random(self.rng.random())
        while True:
            ready = int(not (stall and rng.random() < stall))
            dut.tx__ready.value = ready
            await ReadOnly()
            if ready and int(dut.tx__valid.value):
                self._got(int(dut.tx__payload.value))
            await RisingEdge(dut.clk)

    # -- bit-level UART model ----------------------------------------------------------------
    async def bit_time(self):
        for _ in range(self.divisor):
            await RisingEdge(self.dut.clk)

    async def send_uart(self, data: bytes):
        for b in data:
            bits = [0] + [(b >> i) & 1 for i in range(8)] + [1]
            for bit in bits:
                self.dut.uart_rx.value = bit
                await self.bit_time()

    async def receive_uart(self):
        dut, d = self.dut, self.divisor
        while True:
            await ReadOnly()
            if int(dut.uart_tx.value) == 0:            # start bit edge
                for _ in range(d // 2):
                    await RisingEdge(dut.clk)
                await ReadOnly()
                if int(dut.uart_tx.value) != 0:
                    raise AssertionError("UART start bit too short")
                b = 0
                for i in range(8):
                    for _ in range(d):
                        await RisingEdge(dut.clk)
                    await ReadOnly()
                    b |= int(dut.uart_tx.value) << i
                for _ in range(d):
                    await RisingEdge(dut.clk)
                await ReadOnly()
                if int(dut.uart_tx.value) != 1:
                    raise AssertionError("UART stop bit low (framing error from the SoC)")
                self._got(b)
            await RisingEdge(dut.clk)

    async def send(self, data: bytes):
        await (self.send_stream(data) if self.phy == "stream" else self.send_uart(data))

    def start_receiver(self):
        cocotb.start_soon(self.receive_stream() if self.phy == "stream" else self.receive_uart())


@cocotb.test()
async def run_job(dut):
    job_dir = Path(os.environ["CIMSTACK_JOB_DIR"])
    job = json.loads((job_dir / "job.json").read_text())
    link = Link(dut, job)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    await link.reset()
    cocotb.start_soon(link.clock_counter())
    link.start_receiver()

    out, cycles = [], []
    start = time.perf_counter()
    for step in job["steps"]:
        c0 = link.cycle
        if "send" in step:
            mark, flags0 = len(link.received), link.flags
            await link.send(bytes.fromhex(step["send"]))
            want = 2 * step.get("frames", 1)
            limit = link.cycle + step.get("timeout", 200_000)
            while link.flags - flags0 < want and link.cycle < limit:
                await RisingEdge(dut.clk)
            # let a trailing partial byte finish so the next step starts clean
            for _ in range(4 * link.divisor if link.phy == "uart" else 4):
                await RisingEdge(dut.clk)
            out.append(bytes(link.received[mark:]).hex())
        elif "wait_idle" in step:
            limit = link.cycle + step["wait_idle"]
            await RisingEdge(dut.clk)
            while link.cycle < limit:
                await ReadOnly()
                if not int(dut.busy.value):
                    break
                await RisingEdge(dut.clk)
            await RisingEdge(dut.clk)
            out.append(None)
        else:
            raise ValueError(f"unknown step {step}")
        cycles.append(link.cycle - c0)
    wall = time.perf_counter() - start
    await Timer(1, unit="ns")
    (job_dir / "result.json").write_text(json.dumps({"results": out, "cycles": cycles, "wall_s": wall}))
