"""Hardware-parameter tuning and IR drop: the figures of issue 6.

    python benchmarks/bench_tuning.py [--only irdrop|tuning] [--instances 5] [--out build/bench/tuning.json]

``irdrop``
    Square arrays of 64 to 512 rows with 1 ohm word- and bit-line segments (CoMN's setting)
    and two conductance distributions: uniform in 0.1-10 µS (CoMN's test) and weight-like
    (4-bit weights ~ N(0, 2) on 0.1-10 µS cells, most near g_min). For 64 random input
    vectors (0-0.1 V) it reports the relative VMM error against ideal wires: raw, after the
    best single gain (what a calibration can fix), and after the weight-mapping correction
    (programmed conductances from the fast model, currents from the exact solver, gain
    undone); the fast model's error against the exact solver; and the times of the exact
    solver (factorisation + 64 solves, and the full transfer matrix up to 256), the fast
    model and the correction.
``tuning``
    The digits MLP, CNN and LSTM on the ``opencimtc-576x128`` preset (4-bit weights, 2-bit
    input digits, 4-bit ADC). Per model: accuracy on the emulator with the preset's registers,
    with the best single ADC gain for the whole chip, after stage 1 (emulator-in-the-loop,
    genetic and coordinate searchers), and after stage 2 (device-in-the-loop refinement on
    the golden model, the bit-exact twin of the simulated SoC, whose refinement through the
    socket is tested in ``make test``); every accuracy is the mean over ``--instances``
    emulator chips (seeds); per-layer NMSE before and after each stage; evaluations and time.
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
from cimstack.backends import EmulatorBackend, GoldenBackend
from cimstack.chip.config import preset
from cimstack.physics.irdrop import NodalSolver, compensate, fast_transfer
from cimstack.tuning import Tuner
from cimstack.zoo import models

R_WIRE = 1.0
G_MIN, G_MAX = 0.1, 10.0


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def conductances(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "uniform":
        return rng.uniform(G_MIN, G_MAX, (n, n))
    w = np.clip(np.round(rng.normal(0, 2.0, (n, n))), -7, 7)
    return G_MIN + np.abs(w) / 7 * (G_MAX - G_MIN)


def bench_irdrop(sizes=(64, 128, 256, 512)) -> list[dict]:
    rows = []
    for kind in ("uniform", "weights"):
        for n in sizes:
            rng = np.random.default_rng(n)
            g = conductances(kind, n, rng)
            v = rng.uniform(0, 0.1, (64, n))
            ideal = v @ g
            t0 = time.perf_counter()
            exact = NodalSolver(g, R_WIRE, R_WIRE).currents(v)
            t_exact = time.perf_counter() - t0
            t_transfer = None
            if n <= 256:
                t0 = time.perf_counter()
                NodalSolver(g, R_WIRE, R_WIRE).transfer()
                t_transfer = time.perf_counter() - t0
            t0 = time.perf_counter()
            t_fast_m = fast_transfer(torch.tensor(g), R_WIRE, R_WIRE).numpy()
            t_fast = time.perf_counter() - t0
            t0 = time.perf_counter()
            corr = compensate(g, R_WIRE, R_WIRE, g_max=G_MAX, g_min=G_MIN)
            t_comp = time.perf_counter() - t0
            corrected = NodalSolver(corr.g, R_WIRE, R_WIRE).currents(v) / corr.gain
            fit = float((exact * ideal).sum() / (exact * exact).sum())
            row = {"conductances": kind, "size": n, "ideal_wire_error": rel(exact, ideal),
                   "gain_fitted_error": rel(exact * fit, ideal), "compensated_error": rel(corrected, ideal),
                   "compensation_gain": corr.gain, "compensation_iterations": corr.iterations,
                   "fast_model_error": rel(v @ t_fast_m, exact), "exact_solve_64_s": t_exact,
                   "exact_transfer_s": t_transfer, "fast_model_s": t_fast, "compensation_s": t_comp}
            rows.append(row)
            print(f"IR drop {kind:8s} {n:4d}: ideal wires {100 * row['ideal_wire_error']:6.2f} %, gain-fitted "
                  f"{100 * row['gain_fitted_error']:6.2f} %, corrected {100 * row['compensated_error']:6.3f} % "
                  f"(gain {corr.gain:.3f}); fast model {100 * row['fast_model_error']:.3f} %; exact "
                  f"{t_exact:.2f} s, fast {1e3 * t_fast:.1f} ms, correction {t_comp:.2f} s", flush=True)
    return rows


def mean_accuracy(model, split, cfg, settings, instances: int) -> dict:
    accs = []
    for k in range(instances):
        dep = cimstack.compile(model, cfg, example=split.x_train[:256], settings=settings, seed=cfg.seed + k)
        dep.program(EmulatorBackend(cfg))
        accs.append(dep.accuracy(split.x_test, split.y_test))
    return {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "instances": instances}


def bench_tuning(names=("mlp", "cnn", "lstm"), instances: int = 5) -> list[dict]:
    cfg = preset("opencimtc-576x128")
    out = []
    for name in names:
        model, split, _ = models.train_digits(name, seed=0)
        dep = cimstack.compile(model, cfg, example=split.x_train[:256])
        fp = float((dep.reference(split.x_test).argmax(1) == split.y_test).double().mean())
        tuner = Tuner(dep, split.x_train[:256])
        res = {"model": name, "fp": fp, "preset": mean_accuracy(model, split, cfg, None, instances)}
        t0 = time.perf_counter()
        gain, glob = tuner.global_gain()
        res["global_gain"] = dict(mean_accuracy(model, split, cfg, glob, instances), gain=gain,
                                  seconds=time.perf_counter() - t0)
        stage1 = {}
        for searcher in ("genetic", "coordinate"):
            stage1[searcher] = rep = tuner.tune(searcher)
            print(rep.table(), flush=True)
            res[searcher] = dict(rep.as_dict(), accuracy=mean_accuracy(model, split, cfg, rep.settings, instances))
        # stage 2 from the genetic result, on the bit-exact twin of the SoC
        tuned = cimstack.compile(model, cfg, example=split.x_train[:256], settings=stage1["genetic"].settings)
        tuned.program(GoldenBackend(cfg))
        rep2 = tuner.refine(tuned, radius=1, sweeps=2)
        print(rep2.table(), flush=True)
        res["device_refined"] = dict(rep2.as_dict(), accuracy=mean_accuracy(model, split, cfg, rep2.settings, instances))
        print(f"{name}: FP {100 * fp:.2f}; preset {100 * res['preset']['mean']:.2f}; one gain ({gain}) "
              f"{100 * res['global_gain']['mean']:.2f}; genetic {100 * res['genetic']['accuracy']['mean']:.2f}; "
              f"coordinate {100 * res['coordinate']['accuracy']['mean']:.2f}; refined on device "
              f"{100 * res['device_refined']['accuracy']['mean']:.2f}", flush=True)
        out.append(res)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=("irdrop", "tuning"))
    ap.add_argument("--instances", type=int, default=5)
    ap.add_argument("--models", default="mlp,cnn,lstm")
    ap.add_argument("--out", default="build/bench/tuning.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = {"machine": platform.platform(), "torch": torch.__version__, "wire_ohm": R_WIRE}
    if args.only in (None, "irdrop"):
        result["irdrop"] = bench_irdrop()
    if args.only in (None, "tuning"):
        result["tuning"] = bench_tuning(tuple(args.models.split(",")), args.instances)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
