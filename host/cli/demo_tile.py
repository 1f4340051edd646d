"""``python -m cimstack.cli.demo_tile``: one random tile, the same VMMs on three models of the chip.

Programs a random weight matrix into a tile of the chosen config, runs identical input
vectors through the physics emulator (PyTorch), the golden model (NumPy, bit-exact) and the
Verilated RTL (cocotb), and prints how they agree and how far each is from the ideal product.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cimstack.chip.config import load
from cimstack.golden.tile import GoldenTile
from cimstack.physics import TileEmulator
from cimstack.sim.jobs import make_job, vmm_op
from cimstack.sim.verilator import build_tile


def rel_rms(estimate: np.ndarray, ideal: np.ndarray) -> float:
    return float(np.sqrt(np.mean((estimate - ideal) ** 2)) / np.sqrt(np.mean(ideal.astype(float) ** 2)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cimstack.cli.demo_tile", description=__doc__)
    ap.add_argument("--preset", default="default", help="preset name or TOML file (default: default)")
    ap.add_argument("--vmms", type=int, default=50, help="number of input vectors (default 50)")
    ap.add_argument("--seed", type=int, default=2026, help="seed of weights and inputs")
    ap.add_argument("--out", default="build/demo", help="folder for the JSON summary")
    args = ap.parse_args(argv)

    cfg = load(args.preset)
    dp, a = cfg.datapath, cfg.array
    rng = np.random.default_rng(args.seed)
    print(f"cimstack demo: config {cfg.name}: tile {a.rows}x{a.cols}, {cfg.mapping.weight_bits}-bit "
          f"{cfg.mapping.scheme} weights in {dp.slices} slice(s) of {cfg.cell.cell_bits}-bit cells, "
          f"{cfg.input.bits}-bit {cfg.input.mode} inputs ({dp.pulses} pulses), {cfg.adc.bits}-bit ADC, "
          f"{a.mac_lanes} MAC lanes, seed {args.seed}")

    w = rng.integers(dp.weight_min, dp.weight_max + 1, (a.rows, a.cols))
    lo = -(1 << (cfg.input.bits - 1)) + (1 if cfg.input.mode == "unary" else 0)
    x = rng.integers(lo, 1 << (cfg.input.bits - 1), (args.vmms, a.rows))
    ideal = x @ w

    golden = GoldenTile(cfg)
    golden.program_weights(w)
    job = make_job(golden, [vmm_op(v) for v in x])       # snapshot before the golden run
    emu = TileEmulator(cfg)
    emu.load_golden(golden)
    scale = golden.adc_scale()
    y_golden = golden.vmm(x)

    y_emu = emu.vmm(torch.as_tensor(x), mode="datapath").numpy()
    phys = TileEmulator(cfg)
    phys.program_weights(w)                                # with programming noise and faults
    y_phys = phys.vmm(torch.as_tensor(x), mode="physical").numpy()

    print("building the tile RTL with Verilator ...", flush=True)
    sim = build_tile(cfg, "build/sim")
    t0 = time.perf_counter()
    result = sim.run_job(job, "demo")
    wall = time.perf_counter() - t0
    y_rtl = np.array(result["results"])
    cycles = np.array(result["cycles"])

    exact = int((y_rtl == y_golden).all(axis=1).sum())
    diff = y_emu - y_golden
    summary = {
        "config": cfg.name, "seed": args.seed, "vmms": args.vmms,
        "rtl_equals_golden_vectors": exact,
        "emulator_minus_golden_mean": float(diff.mean()), "emulator_minus_golden_std": float(diff.std()),
        "emulator_golden_correlation": float(np.corrcoef(y_emu.ravel(), y_golden.ravel())[0, 1]),
        "rel_rms_error_vs_ideal": {
            "golden": rel_rms(y_golden / scale, ideal), "rtl": rel_rms(y_rtl / scale, ideal),
            "emulator_datapath": rel_rms(y_emu / scale, ideal),
            "emulator_physical": rel_rms(y_phys / scale, ideal)},
        "verilator_build_s": sim.build_seconds, "cocotb_wall_s": wall,
        "cocotb_ms_per_vmm": 1e3 * result["wall_s"] / args.vmms,
        "cycles_per_vmm": float(cycles.mean()),
    }
    print()
    print(f"  RTL == golden, bit for bit:        {exact}/{args.vmms} vectors "
          f"({'all' if exact == args.vmms else 'MISMATCH'})")
    print(f"  emulator (datapath) - golden:      mean {summary['emulator_minus_golden_mean']:+.3f}, "
          f"std {summary['emulator_minus_golden_std']:.3f} output LSB, "
          f"correlation {summary['emulator_golden_correlation']:.5f}")
    print(f"  relative RMS error vs ideal x@W (after dividing by the ADC gain {scale:g}):")
    for name, err in summary["rel_rms_error_vs_ideal"].items():
        print(f"    {name:<20s} {100 * err:6.2f} %")
    print(f"  Verilator build {sim.build_seconds:.1f} s; {summary['cycles_per_vmm']:.0f} cycles per VMM; "
          f"cocotb {summary['cocotb_ms_per_vmm']:.1f} ms per VMM")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{cfg.name}.json").write_text(json.dumps(summary, indent=2))
    print(f"  summary written to {out / (cfg.name + '.json')}")
    return 0 if exact == args.vmms else 1


if __name__ == "__main__":
    raise SystemExit(main())
