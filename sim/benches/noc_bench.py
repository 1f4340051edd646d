"""cocotb bench of the mesh alone under random traffic.

Job: ``nodes``, ``flits`` (per source node, a list of ``[dest_mask, index, value]`` injected
in order, as OUT flits, with random gaps of ``gap`` probability), ``stall`` (probability an eject port is
not ready in a cycle), ``seed``. Result: per node, the flits ejected in arrival order as
``[dest_mask, kind, index, value]``, and the cycles taken.
"""
import json
import os
import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from cimstack.chip.enums import FlitKind
from cimstack.rtl.noc import FlitLayout


def pack(layout, values: dict) -> int:
    word = 0
    for name, field in layout:
        word |= (int(values.get(name, 0)) & ((1 << field.width) - 1)) << field.offset
    return word


def unpack(layout, word: int) -> dict:
    return {name: (word >> f.offset) & ((1 << f.width) - 1) for name, f in layout}


@cocotb.test()
async def run_job(dut):
    job_dir = Path(os.environ["CIMSTACK_JOB_DIR"])
    job = json.loads((job_dir / "job.json").read_text())
    nodes, lay = job["nodes"], FlitLayout(job["nodes"])
    rng = random.Random(job.get("seed", 0))
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    def port(kind, n, sig):
        return getattr(dut, f"{kind}__{n}__{sig}")

    dut.rst.value = 1
    for n in range(nodes):
        port("inject", n, "valid").value = 0
        port("eject", n, "ready").value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    received = [[] for _ in range(nodes)]
    done = [False] * nodes
    cycle = [0]

    async def source(n, flits, r):
        for dest, index, value in flits:
            while r.random() < job.get("gap", 0.0):
                port("inject", n, "valid").value = 0
                await RisingEdge(dut.clk)
            port("inject", n, "payload").value = pack(lay, {"dest": dest, "kind": FlitKind.OUT, "index": index, "value": value})
            port("inject", n, "valid").value = 1
            while True:
                await ReadOnly()
                ok = int(port("inject", n, "ready").value)
                await RisingEdge(dut.clk)
                if ok:
                    break
        port("inject", n, "valid").value = 0
        done[n] = True

    async def sink(n, r):
        while True:
            ready = int(r.random() >= job.get("stall", 0.0))
            port("eject", n, "ready").value = ready
            await ReadOnly()
            if ready and int(port("eject", n, "valid").value):
                f = unpack(lay, int(port("eject", n, "payload").value))
                received[n].append([f["dest"], f["kind"], f["index"], f["value"]])
            await RisingEdge(dut.clk)

    for n in range(nodes):
        cocotb.start_soon(source(n, job["flits"][n], random.Random(rng.random())))
        cocotb.start_soon(sink(n, random.Random(rng.random())))
    expected = job["expected_total"]
    limit = job.get("timeout", 500_000)
    while sum(map(len, received)) < expected and cycle[0] < limit:
        await RisingEdge(dut.clk)
        cycle[0] += 1
    for _ in range(50):                      # anything extra (duplicates) would show up now
        await RisingEdge(dut.clk)
    (job_dir / "result.json").write_text(json.dumps({"received": received, "cycles": cycle[0],
                                                     "sources_done": all(done)}))
