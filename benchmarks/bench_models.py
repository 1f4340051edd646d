"""Models on every backend: accuracy (floating point, quantised, emulator, golden, RTL
simulation), placement and write-verify statistics, and emulator write-verify speed.

    python benchmarks/bench_models.py [--preset default] [--repeats 5] [--out build/bench/models.json]

For each digits model (MLP, CNN, GRU, LSTM, ResNet): train (seeded), compile for the chip,
program with write-verify and measure test accuracy on

* ``fp``        the floating-point model (the CIM IR with exact VMMs),
* ``quantised`` quantised weights and inputs, ideal VMMs (no ADC, no noise),
* ``emulator``  the physics emulator, mean and std over ``--repeats`` chip instances (seeds),
* ``golden``    the bit-exact model, whole test split,
* ``rtl``       the Verilated SoC through the simulation server on the first ``--rtl-samples``
                test digits (the MLP on the whole split), checked bit for bit against golden.

Also times host-side write-verify of a 150x150 array on the emulator and the golden model
(aihwkit's users report 43 minutes for realistic programming of that size on CPU).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import cimstack
from cimstack.backends import DeviceBackend, EmulatorBackend, GoldenBackend
from cimstack.chip.config import load
from cimstack.zoo import models

RTL_SAMPLES = {"mlp": 0, "cnn": 30, "gru": 60, "lstm": 60, "resnet": 8}     # 0: the whole test split


def accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
    return float((out.argmax(1) == y).double().mean())


def bench_model(name: str, cfg, repeats: int, rtl: bool, rtl_samples: int | None, server=None) -> dict:
    model, split, stats = models.train_digits(name, seed=0)
    x, y = split.x_test, split.y_test
    dep = cimstack.compile(model, cfg, example=split.x_train[:256])
    res = {"model": name, "train_seconds": stats["seconds"], "fp": accuracy(dep.reference(x), y),
           "quantised": accuracy(dep.quantised(x), y),
           "placement": {"strategy": dep.placement.strategy, "tiles": dep.placement.tiles_used,
                         "utilisation": dep.placement.utilisation(), "cost": dep.placement.cost,
                         "blocks": sum(len(layer.blocks) for layer in dep.layers)},
           "weight_error": {layer.name: layer.weight_error() for layer in dep.layers}}
    emu = []
    t0 = time.perf_counter()
    for r in range(repeats):
        d = cimstack.compile(model, cfg, example=split.x_train[:256], seed=cfg.seed + r)
        d.program(EmulatorBackend(cfg))
        emu.append(d.accuracy(x, y))
    res["emulator"] = {"mean": float(np.mean(emu)), "std": float(np.std(emu)), "repeats": repeats,
                       "seconds_per_run": (time.perf_counter() - t0) / repeats}
    golden = GoldenBackend(cfg)
    report = dep.program(golden)
    t0 = time.perf_counter()
    y_gold = dep.run(x)
    res["golden"] = accuracy(y_gold, y)
    res["golden_run_seconds"] = time.perf_counter() - t0
    res["programming_golden"] = report.as_dict()
    if rtl:
        n = rtl_samples if rtl_samples is not None else RTL_SAMPLES[name]
        n = len(x) if n == 0 else n
        with DeviceBackend(server.url, cfg) as chip:
            chip_report = dep.program(chip)
            t0 = time.perf_counter()
            y_chip = dep.run(x[:n])
            wall = time.perf_counter() - t0
        # the same run on golden: the noise generators must see the same sequence of VMMs
        dep.program(golden)
        y_gold_n = dep.run(x[:n])
        res["rtl"] = {"samples": n, "accuracy": accuracy(y_chip, y[:n]), "golden_same_samples": accuracy(y_gold_n, y[:n]),
                      "equals_golden": bool(torch.equal(y_chip, y_gold_n)), "run_seconds": wall,
                      "programming_seconds": chip_report.seconds,
                      "programming_equals_golden": [s.pulses for s in chip_report.layers] == [s.pulses for s in report.layers]}
    return res


def bench_write_verify_speed(cfg_base) -> dict:
    """Host-side write-verify of a 150x150 array of random weights."""
    cfg = cfg_base.replace(name="wv-150", array=dict(tiles=1, rows=150, cols=150, mac_lanes=20, adc_share=4))
    torch.manual_seed(0)
    layer = torch.nn.Linear(150, 150, bias=False)
    dep = cimstack.compile(layer, cfg, example=torch.randn(8, 150))
    out = {"cells": None}
    for be in (EmulatorBackend(cfg), GoldenBackend(cfg)):
        t0 = time.perf_counter()
        rep = dep.program(be)
        out[be.name] = {"seconds": time.perf_counter() - t0, "pulses_per_cell": rep.layers[0].pulses_per_cell,
                        "converged": rep.layers[0].converged, "max_pulses": rep.layers[0].max_pulses}
        out["cells"] = rep.cells
    out["golden_over_emulator_time"] = out["golden"]["seconds"] / out["emulator"]["seconds"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--models", default=",".join(models.MODELS), help="comma-separated model names")
    ap.add_argument("--repeats", type=int, default=5, help="emulator chip instances per model")
    ap.add_argument("--rtl-samples", type=int, default=None, help="test digits on the RTL per model (0: all)")
    ap.add_argument("--no-rtl", action="store_true", help="skip the Verilated SoC")
    ap.add_argument("--out", default="build/bench/models.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load(args.preset)
    result = {"config": cfg.name, "python": sys.version.split()[0], "torch": torch.__version__,
              "machine": platform.machine(), "models": []}
    server = None
    if not args.no_rtl:
        from cimstack.sim.server import SimServer
        print(f"building / starting the simulation server for {cfg.name} ...", flush=True)
        server = SimServer(cfg)
    try:
        for name in args.models.split(","):
            t0 = time.perf_counter()
            r = bench_model(name, cfg, args.repeats, not args.no_rtl, args.rtl_samples, server)
            r["seconds"] = time.perf_counter() - t0
            result["models"].append(r)
            rtl = r.get("rtl")
            print(f"{name:<7s} fp {100 * r['fp']:5.1f}  quantised {100 * r['quantised']:5.1f}  emulator "
                  f"{100 * r['emulator']['mean']:5.1f} +- {100 * r['emulator']['std']:.1f}  golden {100 * r['golden']:5.1f}"
                  + (f"  rtl {100 * rtl['accuracy']:5.1f} on {rtl['samples']} (golden {100 * rtl['golden_same_samples']:5.1f},"
                     f" bit-exact {rtl['equals_golden']})" if rtl else "")
                  + f"  [{r['placement']['strategy']}, {len(r['placement']['tiles'])} arrays, {r['seconds']:.0f} s]",
                  flush=True)
    finally:
        if server is not None:
            server.stop()
            result["server_stats"] = server.stats
    result["write_verify_150x150"] = bench_write_verify_speed(cfg)
    wv = result["write_verify_150x150"]
    print(f"write-verify of a 150x150 array ({wv['cells']} cells): emulator {wv['emulator']['seconds']:.2f} s, "
          f"golden {wv['golden']['seconds']:.2f} s ({wv['golden_over_emulator_time']:.0f}x), "
          f"{wv['emulator']['pulses_per_cell']:.2f} pulses per cell")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
