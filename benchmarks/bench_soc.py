"""SoC benchmarks over the simulation server (``make bench``); writes build/bench/soc.json.

Figures, for a preset (default: ``default``):
- simulated SoC cycles per second under the C++ harness, and, as a same-run baseline, the
  cocotb SoC bench replaying the same VMM workload on the small test SoC (ratio reported);
- clock cycles per VMM per tile (the VMM_CYCLES register), and per batch element of a
  2-layer network run as one sequencer program (SEQ_CYCLES);
- link efficiency (payload bytes / wire bytes) per traffic kind, and with 8N1 UART framing;
- write-verify pulses per cell programming a whole tile from RESET, checked bit-exact
  against the golden model.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from cimstack.chip.config import ChipConfig, load, preset
from cimstack.chip.datapath import weights_to_codes
from cimstack.chip.enums import WriteVerifyStatus
from cimstack.chip.protocol import Op, read_reg_payload, write_mem_payload, write_reg_payload
from cimstack.chip.regmap import register_map
from cimstack.golden.soc import GoldenSoC
from cimstack.golden.writeverify import WriteVerifyJob
from cimstack.link.client import Device
from cimstack.link.transport import Link, LinkStats
from cimstack.sim.script import Script
from cimstack.sim.server import SimServer
from cimstack.sim.verilator import build_soc

UART_8N1 = 8 / 10


def random_golden(cfg: ChipConfig, rng) -> GoldenSoC:
    model = GoldenSoC(cfg)
    dp, a = cfg.datapath, cfg.array
    for t in model.tiles:
        t.program_weights(rng.integers(dp.weight_min, dp.weight_max + 1, (a.rows, a.cols)))
    return model


def phase(link: Link, fn) -> dict:
    link.stats = LinkStats()
    t0 = time.perf_counter()
    fn()
    s = link.stats
    return {"wall_s": time.perf_counter() - t0, "requests": s.requests, "payload_bytes": s.payload_tx + s.payload_rx,
            "wire_bytes": s.wire_tx + s.wire_rx, "efficiency": s.efficiency, "efficiency_uart_8n1": s.efficiency * UART_8N1}


def vmm_workload(cfg: ChipConfig, rng, n: int) -> list[tuple[int, np.ndarray]]:
    lo, hi = -(1 << (cfg.input.bits - 1)), 1 << (cfg.input.bits - 1)
    return [(i % cfg.array.tiles, rng.integers(lo, hi, cfg.array.rows)) for i in range(n)]


def harness_run(cfg: ChipConfig, rng, n_vmm: int, wv_rows: int | None) -> dict:
    """Everything measured through the C++ harness for one config."""
    out: dict = {}
    model = random_golden(cfg, rng)
    a = cfg.array
    with SimServer(cfg) as srv:
        with Link(srv.url, timeout=30.0) as link:
            dev = Device(link, cfg)
            out["link_weights"] = phase(link, lambda: [dev.load_tile(t, model.tiles[t]) for t in range(a.tiles)])
            work = vmm_workload(cfg, rng, n_vmm)
            per_tile: dict[int, list[int]] = {}
            mismatches = 0

            def run_vmms():
                nonlocal mismatches
                for tile, x in work:
                    dev.write_act(0, x)
                    model.act[:a.rows] = x
                    dev.vmm(tile, 0, a.rows)
                    model.vmm(tile, 0, a.rows)
                    per_tile.setdefault(tile, []).append(dev.read("VMM_CYCLES"))
                    mismatches += int((dev.read_act(a.rows, a.cols) != model.act[a.rows:a.rows + a.cols]).sum())
            c0 = dev.read("CYCLES")
            out["link_vmm_traffic"] = phase(link, run_vmms)
            cycles = (dev.read("CYCLES") - c0) % (1 << 32)
            out["vmm"] = {"count": n_vmm, "mismatches_vs_golden": mismatches,
                          "cycles_per_vmm_per_tile": {str(t): float(np.mean(v)) for t, v in sorted(per_tile.items())},
                          "simulated_cycles": cycles,
                          "end_to_end_cycles_per_s": cycles / out["link_vmm_traffic"]["wall_s"]}
            if a.tiles >= 2:
                out["program"] = program_run(cfg, dev, model, rng)
            out["link_registers"] = phase(link, lambda: [dev.read("SCRATCH") for _ in range(50)])
            out["link_echo_1k"] = phase(link, lambda: [link.echo(bytes(rng.integers(0, 256, cfg.soc.max_payload, dtype=np.uint8)))
                                                       for _ in range(20)])
            if wv_rows:
                out["write_verify"] = write_verify_run(cfg, dev, model, rng, wv_rows)
    st = srv.stats
    out["harness"] = {**st, "cycles_per_s": st["cycles"] / st["active_wall_s"] if st.get("active_wall_s") else None}
    return out


def program_run(cfg: ChipConfig, dev: Device, model: GoldenSoC, rng) -> dict:
    """A 2-layer network (tile 0 then tile 1) over a batch (up to 16, as the buffer allows)
    as one on-chip program."""
    from cimstack.chip.isa import assemble
    a = cfg.array
    batch = max(1, min(16, (cfg.soc.act_words - 3 * a.rows) // (a.rows + a.cols)))
    base_out = batch * a.rows
    scratch = base_out + batch * a.cols
    program = [("COPY", dict(src=0, dst=scratch, n=a.rows, src_iter=1)),
               ("VMM", dict(tile=0, count=1, src=scratch, dst=scratch + a.rows)),
               ("POST", dict(src=scratch + a.rows, dst=scratch + a.rows, n=a.cols, mul=1, shift=4, relu=1)),
               ("VMM", dict(tile=1, count=1, src=scratch + a.rows, dst=scratch + 2 * a.rows)),
               ("COPY", dict(src=scratch + 2 * a.rows, dst=base_out, n=a.cols, dst_iter=1)),
               ("LOOP", dict(target=0)), ("HALT", {})]
    lo, hi = -(1 << (cfg.input.bits - 1)), 1 << (cfg.input.bits - 1)
    x = rng.integers(lo, hi, batch * a.rows)
    dev.write_act(0, x)
    model.act[:x.size] = x
    t0 = time.perf_counter()
    dev.run_program(program, iters=batch, in_stride=a.rows, out_stride=a.cols)
    wall = time.perf_counter() - t0
    model.run_program(assemble(program, cfg), iters=batch, in_stride=a.rows, out_stride=a.cols)
    got = dev.read_act(base_out, batch * a.cols)
    cycles = dev.read("SEQ_CYCLES")
    return {"batch": batch, "layers": 2, "cycles": cycles, "cycles_per_element": cycles / batch,
            "wall_s": wall, "bit_exact_vs_golden": bool((got == model.act[base_out:base_out + batch * a.cols]).all())}


def write_verify_run(cfg: ChipConfig, dev: Device, model: GoldenSoC, rng, rows: int) -> dict:
    """Program rows x all units x all cells of tile 0 from RESET to random weights' codes."""
    a, dp = cfg.array, cfg.datapath
    g = model.tiles[0]
    g.state[:] = 0
    g.stuck[:] = 0
    dev.load_tile(0, g)
    w = rng.integers(dp.weight_min, dp.weight_max + 1, (a.rows, a.cols))
    pos, neg = weights_to_codes(w, cfg)
    frac, lanes = cfg.cell.frac_bits, a.mac_lanes
    jobs = []
    for r in range(rows):
        for u in range(dp.units):
            for cell, codes in enumerate((pos, neg)[:dp.cells_per_unit]):
                jobs.append(WriteVerifyJob(r, u // lanes, u % lanes, cell,
                                           target=int(codes[r, u]) << frac | (1 << frac >> 1), tol=max(0, (1 << frac >> 1) - 1)))
    c0 = dev.read("CYCLES")
    t0 = time.perf_counter()
    results = dev.write_verify(0, jobs, max_pulses=100, amp_start=1, amp_step=1)
    wall = time.perf_counter() - t0
    cycles = (dev.read("CYCLES") - c0) % (1 << 32)
    expected = model.write_verify(0, jobs, 100, 1, 1, cfg.device.pulse_max_amplitude)
    pulses = np.array([r.pulses for r in results])
    return {"cells": len(jobs), "bit_exact_vs_golden": results == expected,
            "converged_fraction": float(np.mean([r.status == WriteVerifyStatus.CONVERGED for r in results])),
            "pulses_per_cell_mean": float(pulses.mean()), "pulses_per_cell_median": float(np.median(pulses)),
            "pulses_per_cell_p95": float(np.percentile(pulses, 95)), "pulses_per_cell_max": int(pulses.max()),
            "cycles": cycles, "cycles_per_cell": cycles / len(jobs), "wall_s": wall,
            "settings": {"max_pulses": 100, "amp_start": 1, "amp_step": 1,
                         "amp_max": cfg.device.pulse_max_amplitude, "target": "mid-code", "tol": max(0, (1 << frac >> 1) - 1)}}


def cocotb_baseline(cfg: ChipConfig, rng, n_vmm: int, build_root: Path) -> dict:
    """The same VMM workload replayed by the cocotb SoC bench (per-cycle Python)."""
    rm = register_map(cfg)
    top = build_soc(cfg, "stream", build_root)
    s = Script()
    a = cfg.array
    for tile, x in vmm_workload(cfg, rng, n_vmm):
        s.request(Op.WRITE_MEM, write_mem_payload(rm.space("ACT").space, 0, [int(v) for v in x], 4))
        s.request(Op.WRITE_REG, write_reg_payload(rm["VMM_TILE"].addr, [tile, 0, a.rows, 0]))
        s.request(Op.RUN, bytes([0]))
        s.wait_idle()
        s.request(Op.READ_REG, read_reg_payload(rm["VMM_CYCLES"].addr, 1))
    t0 = time.perf_counter()
    result = top.run_job(s.job(), "bench")
    cycles = sum(result["cycles"])
    return {"build_s": top.build_seconds, "cycles": cycles, "replay_wall_s": result["wall_s"],
            "process_wall_s": time.perf_counter() - t0, "cycles_per_s": cycles / result["wall_s"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="default")
    p.add_argument("--vmms", type=int, default=40)
    p.add_argument("--wv-rows", type=int, default=None, help="rows of tile 0 to write-verify (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="build/bench/soc.json")
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    cfg = load(args.preset)
    report: dict = {"benchmark": "soc", "preset": cfg.name, "config": cfg.to_dict(), "seed": args.seed,
                    "machine": {"python": sys.version.split()[0], "platform": platform.platform()}}
    print(f"[bench] C++ harness, {cfg.name}: loading tiles, {args.vmms} VMMs, write-verify ...", flush=True)
    report["main"] = harness_run(cfg, rng, args.vmms, args.wv_rows or cfg.array.rows)

    # same-run baseline: cocotb vs the C++ harness on the small test SoC, same workload
    small = preset("default").replace(
        name="bench-small", array=dict(tiles=2, rows=32, cols=16, mac_lanes=8, adc_share=2),
        cell=dict(cell_bits=3, frac_bits=3), mapping=dict(weight_bits=6), input=dict(bits=6, dac_bits=1),
        adc=dict(bits=8, gain=8, gain_shift=3), post=dict(out_bits=16, shift=1),
        soc=dict(act_words=512, wv_jobs=128, max_payload=256))
    print("[bench] baseline: cocotb vs C++ harness on a 2 x 32x16 SoC ...", flush=True)
    n_small = 20
    cc = cocotb_baseline(small, np.random.default_rng(args.seed), n_small, Path("build/bench/cocotb"))
    hs = harness_run(small, np.random.default_rng(args.seed), n_small, None)
    report["baseline_small_soc"] = {"cocotb": cc, "harness": hs["harness"], "vmm": hs["vmm"],
                                    "harness_over_cocotb_cycles_per_s": hs["harness"]["cycles_per_s"] / cc["cycles_per_s"]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    m = report["main"]
    print(f"[bench] harness {m['harness']['cycles_per_s']:.3g} simulated cycles/s ({cfg.name}); "
          f"cycles per VMM per tile {m['vmm']['cycles_per_vmm_per_tile']}; VMM mismatches vs golden {m['vmm']['mismatches_vs_golden']}")
    for k in ("link_weights", "link_vmm_traffic", "link_registers", "link_echo_1k"):
        print(f"[bench] {k}: efficiency {m[k]['efficiency']:.3f} (over 8N1 UART {m[k]['efficiency_uart_8n1']:.3f})")
    if "program" in m:
        pr = m["program"]
        print(f"[bench] on-chip 2-layer program: {pr['cycles_per_element']:.0f} cycles per batch element "
              f"(batch {pr['batch']}), bit-exact vs golden {pr['bit_exact_vs_golden']}")
    wv = m["write_verify"]
    print(f"[bench] write-verify {wv['cells']} cells: {wv['pulses_per_cell_mean']:.2f} pulses/cell mean "
          f"(median {wv['pulses_per_cell_median']}, p95 {wv['pulses_per_cell_p95']}, max {wv['pulses_per_cell_max']}), "
          f"converged {wv['converged_fraction']:.4f}, bit-exact vs golden {wv['bit_exact_vs_golden']}")
    b = report["baseline_small_soc"]
    print(f"[bench] small SoC: harness {b['harness']['cycles_per_s']:.3g} cycles/s vs cocotb {b['cocotb']['cycles_per_s']:.3g} "
          f"-> {b['harness_over_cocotb_cycles_per_s']:.0f}x")
    print(f"[bench] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
