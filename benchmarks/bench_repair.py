"""Stuck cells and spare lines (issue 9, programming failures); writes build/bench/repair.json.

The digits MLP on the default chip, programmed on the bit-exact golden model with noise-free
reads (so every difference comes from the faults), for stuck-cell rates from 0.1 % to 1 %
and 0, 2, 4 or 8 spare rows and columns per tile, over several chip instances. Per row: the
faulty cells write-verify found in use, the spare lines used, the faults left in use, the
test accuracy, and the programming time against the same chip without spares. The baseline
is the same model on a fault-free chip with the same spares (its accuracy is the ceiling).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import cimstack
from cimstack.backends import GoldenBackend
from cimstack.zoo import models

QUIET = dict(output_noise_lsb=0.0, read_noise_sigma=0.0)


def chip(stuck: float, spares: int) -> cimstack.ChipConfig:
    return cimstack.preset("default").replace(
        array=dict(spare_rows=spares, spare_cols=spares),
        device=dict(QUIET, stuck_at_0_rate=stuck / 2, stuck_at_gmax_rate=stuck / 2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", default="0.001,0.002,0.005,0.01", help="stuck-cell rates (half at 0, half at g_max)")
    p.add_argument("--spares", default="0,2,4,8", help="spare rows = spare columns per tile")
    p.add_argument("--chips", type=int, default=3, help="chip instances (seeds) per row")
    p.add_argument("--out", default="build/bench")
    args = p.parse_args()
    torch.set_num_threads(1)
    model, split, _ = models.train_digits("mlp", seed=0)
    x, y = split.x_test, split.y_test
    rows = []
    for spares in (int(s) for s in args.spares.split(",")):
        cfg = chip(0.0, spares)
        dep = cimstack.compile(model, cfg, example=split.x_train[:256])
        dep.program(GoldenBackend(cfg))
        ceiling = dep.accuracy(x, y)
        for rate in (float(r) for r in args.rates.split(",")):
            cfg = chip(rate, spares)
            dep = cimstack.compile(model, cfg, example=split.x_train[:256])
            found, used, left, acc, secs = [], [], [], [], []
            for seed in range(1, args.chips + 1):
                dep.seed = seed
                t0 = time.perf_counter()
                report = dep.program(GoldenBackend(cfg))
                secs.append(time.perf_counter() - t0)
                found.append(report.failed_cells)
                used.append(len(report.repairs))
                left.append(len(report.unrepaired))
                acc.append(dep.accuracy(x, y))
            row = {"stuck_rate": rate, "spares": spares, "chips": args.chips,
                   "faults_in_use": float(np.mean(found)), "spare_lines_used": float(np.mean(used)),
                   "faults_left_in_use": float(np.mean(left)), "accuracy": float(np.mean(acc)),
                   "accuracy_min": float(np.min(acc)), "fault_free_accuracy": ceiling,
                   "program_seconds": float(np.mean(secs))}
            rows.append(row)
            print(f"stuck {100 * rate:4.1f} %, {spares} spare rows+cols: {row['faults_in_use']:5.1f} faulty cells in use, "
                  f"{row['spare_lines_used']:4.1f} spares used, {row['faults_left_in_use']:5.1f} left, accuracy "
                  f"{100 * row['accuracy']:.1f} % (fault-free {100 * ceiling:.1f} %), {row['program_seconds']:.1f} s",
                  flush=True)
    base = {r["stuck_rate"]: r["program_seconds"] for r in rows if r["spares"] == 0}
    for r in rows:
        if r["stuck_rate"] in base:
            r["time_vs_no_spares"] = r["program_seconds"] / base[r["stuck_rate"]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"model": "digits mlp", "backend": "golden", "machine": platform.machine(),
              "python": platform.python_version(), "rows": rows}
    (out / "repair.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'repair.json'}")


if __name__ == "__main__":
    main()
