"""``make demo``: the digits MLP from training to the simulated chip.

Trains the reference MLP on scikit-learn's 8x8 digits, compiles it for a chip config,
places it on the arrays, starts the Verilated SoC behind the simulation server, programs the
weights with the on-chip write-verify controller over the link and runs the whole test split
on the chip. Prints the placement, the programming statistics and the accuracy of the
floating-point model, the emulator, the golden model and the simulated chip, and checks that
the chip's outputs equal the golden model's bit for bit. Writes a JSON summary under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import cimstack
from cimstack.backends import DeviceBackend, EmulatorBackend, GoldenBackend
from cimstack.chip.config import load
from cimstack.zoo import models


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cimstack.cli.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default", help="preset name or TOML file (default: default)")
    ap.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    ap.add_argument("--samples", type=int, default=0, help="test samples to run on the chip (default: all)")
    ap.add_argument("--out", default="build/demo", help="folder for the JSON summary")
    args = ap.parse_args(argv)

    cfg = load(args.preset)
    t0 = time.perf_counter()
    print(f"cimstack demo: the digits MLP on {cfg.name} ({cfg.array.tiles} arrays of "
          f"{cfg.array.rows}x{cfg.array.cols}, {cfg.mapping.weight_bits}-bit weights, {cfg.input.bits}-bit inputs)")
    model, split, stats = models.train_digits("mlp", seed=args.seed)
    print(f"trained in {stats['seconds']:.1f} s: floating-point test accuracy {100 * stats['test_accuracy']:.2f} %")

    dep = cimstack.compile(model, cfg, example=split.x_train[:256])
    print(dep.summary())
    print(dep.placement.report())
    for t in dep.placement.tiles_used:
        print(f"tile {t}:\n{dep.placement.tile_map(t)}")

    x, y = split.x_test, split.y_test
    if args.samples:
        x, y = x[:args.samples], y[:args.samples]
    result = {"config": cfg.name, "seed": args.seed, "samples": len(x), "fp_accuracy": stats["test_accuracy"],
              "placement": {"strategy": dep.placement.strategy, "tiles": dep.placement.tiles_used,
                            "utilisation": dep.placement.utilisation(), "cost": dep.placement.cost}}

    emulator = EmulatorBackend(cfg)
    dep.program(emulator)
    result["emulator_accuracy"] = dep.accuracy(x, y)
    golden = GoldenBackend(cfg)
    dep.program(golden)
    y_golden = dep.run(x)
    result["golden_accuracy"] = float((y_golden.argmax(1) == y).double().mean())

    from cimstack.sim.server import SimServer
    print("starting the simulated SoC (the first run builds it with Verilator, a few minutes) ...", flush=True)
    with SimServer(cfg) as server:
        chip = DeviceBackend(server.url, cfg)
        report = dep.program(chip, progress=True)
        print(report.table())
        t1 = time.perf_counter()
        y_chip = dep.run(x)
        run_s = time.perf_counter() - t1
        chip.close()
    cycles = server.stats.get("cycles", 0)
    exact = bool(torch.equal(y_chip, y_golden))
    result.update(programming=report.as_dict(), chip_accuracy=float((y_chip.argmax(1) == y).double().mean()),
                  chip_equals_golden=exact, chip_run_seconds=run_s, simulated_cycles=cycles,
                  total_seconds=time.perf_counter() - t0)
    print(f"\naccuracy on {len(x)} test digits:")
    for name, key in (("floating point", "fp_accuracy"), ("emulator (physics)", "emulator_accuracy"),
                      ("golden model", "golden_accuracy"), ("simulated SoC (RTL)", "chip_accuracy")):
        print(f"  {name:<22s} {100 * result[key]:6.2f} %")
    print(f"  chip outputs == golden model, bit for bit: {'yes' if exact else 'NO'}")
    print(f"  inference on the simulated chip: {run_s:.1f} s wall, {cycles} cycles simulated in this session")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"mlp-{cfg.name}.json").write_text(json.dumps(result, indent=2))
    print(f"summary written to {out / f'mlp-{cfg.name}.json'}")
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
