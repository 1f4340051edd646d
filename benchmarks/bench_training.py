"""Training for the chip: hardware-aware training against naive deployment, drift, mixed
precision, and one HWA epoch timed against aihwkit-lightning.

    python benchmarks/bench_training.py [--repeats 20] [--conv-repeats 5] [--out build/bench/training.json]

a. digits MLP under the ``default`` and ``pcm-joshi2020`` presets: floating point, naive
   deployment (the FP model compiled as is) and hardware-aware training (HWA fine-tune of the
   same FP model), each programmed by write-verify on ``--repeats`` emulated chip instances
   and read at 0 s, 1 h, 1 day and 1 year after programming (``t - t0``; global drift
   compensation on);
b. mixed-precision training of the MLP (chi accumulator) against the same network in float
   and against the naive variant without chi; pulses per weight per epoch;
c. the small CNN and the residual network, naive against HWA, on ``--conv-repeats`` chips;
d. speed: one HWA training epoch of the MLP and of the CNN here, and in aihwkit-lightning
   on the closest configuration it has (benchmarks/aihwkit_lightning_epoch.py, run in its own
   virtual environment, build/venv-aihwkit-lightning, created when missing: _lightning.py), same machine,
   same run, one thread each.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import _lightning
import numpy as np
import torch

import cimstack
from cimstack.backends import EmulatorBackend
from cimstack.training import MixedPrecisionMLP, Nonidealities, convert, train_hwa
from cimstack.zoo import datasets, models

ROOT = Path(__file__).resolve().parent.parent
DRIFT = {"0 s": 0.0, "1 h": 3600.0, "1 day": 86400.0, "1 year": 3.15576e7}
HWA = {"mlp": dict(epochs=10, lr=5e-3), "cnn": dict(epochs=20, lr=1e-2), "resnet": dict(epochs=10, lr=1e-2)}


def stats(v) -> dict:
    return {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v), "values": [float(a) for a in v]}


def chip_accuracies(model, split, cfg, seeds, times=None) -> dict:
    """Accuracy over chip instances (seeds), at each read time (s after programming)."""
    dep = cimstack.compile(model, cfg, example=split.x_train[:256])
    times = times or {"0 s": 0.0}
    out = {k: [] for k in times}
    for s in seeds:
        dep.seed = s
        be = EmulatorBackend(cfg, drift_compensation=True)
        dep.program(be)
        for label, dt in times.items():
            be.t = cfg.device.drift_t0_s + dt
            out[label].append(dep.accuracy(split.x_test, split.y_test))
    return {k: stats(v) for k, v in out.items()}


def bench_drift(preset: str, repeats: int) -> dict:
    cfg = cimstack.preset(preset)
    model, split, st = models.train_digits("mlp", seed=0)
    drifts = cfg.device.model == "pcm" or cfg.device.drift_nu > 0
    ni = Nonidealities(drift_t=(cfg.device.drift_t0_s, cfg.device.drift_t0_s + DRIFT["1 year"]) if drifts else None)
    hwa = copy.deepcopy(model)
    t0 = time.perf_counter()
    hs = train_hwa(hwa, split, cfg, nonidealities=ni, **HWA["mlp"])
    seeds = range(repeats)
    return {"preset": preset, "fp": st["test_accuracy"], "hwa_train_seconds": time.perf_counter() - t0,
            "hwa_settings": dict(HWA["mlp"], drift_t=ni.drift_t), "hwa_model_estimate": hs["test_accuracy"],
            "naive": chip_accuracies(model, split, cfg, seeds, DRIFT),
            "hwa": chip_accuracies(hwa, split, cfg, seeds, DRIFT)}


def bench_mixed_precision(epochs: int) -> dict:
    cfg = cimstack.preset("default")
    split = datasets.digits("flat")
    fp = MixedPrecisionMLP.float_baseline(split, epochs=epochs, lr=0.1)
    res = {"epochs": epochs, "lr": 0.1, "batch_size": 16, "sizes": [64, 32, 10], "fp": fp}
    for name, acc in (("chi", True), ("no_chi", False)):
        t0 = time.perf_counter()
        mp = MixedPrecisionMLP(EmulatorBackend(cfg), lr=0.1, accumulate=acc)
        s = mp.fit(split, epochs)
        res[name] = dict(s.as_dict(), seconds=time.perf_counter() - t0)
    res["gap_to_fp_points"] = 100 * (fp[-1] - res["chi"]["test_accuracy"][-1])
    return res


def bench_conv(name: str, repeats: int) -> dict:
    cfg = cimstack.preset("default")
    model, split, st = models.train_digits(name, seed=0)
    hwa = copy.deepcopy(model)
    t0 = time.perf_counter()
    train_hwa(hwa, split, cfg, **HWA[name])
    seconds = time.perf_counter() - t0
    seeds = range(repeats)
    naive = chip_accuracies(model, split, cfg, seeds)["0 s"]
    trained = chip_accuracies(hwa, split, cfg, seeds)["0 s"]
    return {"model": name, "fp": st["test_accuracy"], "naive": naive, "hwa": trained,
            "gain_points": 100 * (trained["mean"] - naive["mean"]), "hwa_settings": HWA[name], "hwa_train_seconds": seconds}


def time_epoch(name: str, repeats: int) -> dict:
    """One HWA epoch (all non-idealities on, after one warm-up epoch), one thread."""
    cls, shape = models.MODELS[name]
    split = datasets.digits(shape)
    torch.manual_seed(0)
    model = cls()
    convert(model, cimstack.preset("default"))
    models.train(model, split, epochs=1, lr=1e-2)                       # warm-up, ranges initialised
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        models.train(model, split, epochs=1, lr=1e-2, seed=r + 1)
        times.append(time.perf_counter() - t0)
    # models.train also scores train and test accuracy after the epoch: time that alone and remove it
    t0 = time.perf_counter()
    models.accuracy(model, split.x_train, split.y_train), models.accuracy(model, split.x_test, split.y_test)
    scoring = time.perf_counter() - t0
    epoch = [t - scoring for t in times]
    return {"epoch_seconds": epoch, "mean": float(np.mean(epoch)), "std": float(np.std(epoch))}


def bench_speed(repeats: int) -> dict:
    ours = {name: time_epoch(name, repeats) for name in ("mlp", "cnn")}
    res = {"cimstack": ours, "cimstack_settings": "default preset: 8-bit inputs, 8-bit weights in 2x4-bit slices on "
           "differential pairs, 8 bit-serial pulses each converted by the 8-bit ADC with 0.5 LSB noise, write-verify "
           "residual, read noise, learned input ranges, per-column weight scales, clipping"}
    res["aihwkit_lightning"] = alt = _lightning.run(
        "aihwkit_lightning_epoch.py", ["--models", "mlp,cnn", "--repeats", str(repeats)],
        ROOT / "build" / "bench" / "aihwkit_lightning.json")
    res["ratio_cimstack_over_aihwkit_lightning"] = {
        m: ours[m]["mean"] / alt["models"][m]["mean"] for m in ours if "mean" in alt.get("models", {}).get(m, {})}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20, help="chip instances for the MLP drift table")
    ap.add_argument("--conv-repeats", type=int, default=5, help="chip instances for the CNN and ResNet")
    ap.add_argument("--mp-epochs", type=int, default=30)
    ap.add_argument("--speed-repeats", type=int, default=3)
    ap.add_argument("--only", default="drift,mp,conv,speed", help="comma-separated parts to run")
    ap.add_argument("--out", default=str(ROOT / "build" / "bench" / "training.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    parts = set(args.only.split(","))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    res = {"machine": platform.platform(), "torch": torch.__version__, "threads": 1}

    def save():
        out.write_text(json.dumps(res, indent=1))

    if "drift" in parts:
        res["drift"] = [bench_drift(p, args.repeats) for p in ("default", "pcm-joshi2020")]
        for d in res["drift"]:
            print(f"{d['preset']}: FP {100 * d['fp']:.1f}")
            for k in DRIFT:
                print(f"  {k:>7s}: naive {100 * d['naive'][k]['mean']:.2f} ± {100 * d['naive'][k]['std']:.2f}   "
                      f"HWA {100 * d['hwa'][k]['mean']:.2f} ± {100 * d['hwa'][k]['std']:.2f}")
        save()
    if "mp" in parts:
        res["mixed_precision"] = m = bench_mixed_precision(args.mp_epochs)
        print(f"mixed precision: FP {100 * m['fp'][-1]:.2f}, chi {100 * m['chi']['test_accuracy'][-1]:.2f} "
              f"({m['chi']['pulses_per_weight_per_epoch']:.2f} pulses/weight/epoch), "
              f"no chi {100 * m['no_chi']['test_accuracy'][-1]:.2f}")
        save()
    if "conv" in parts:
        res["conv"] = [bench_conv(n, args.conv_repeats) for n in ("cnn", "resnet")]
        for c in res["conv"]:
            print(f"{c['model']}: FP {100 * c['fp']:.1f}, naive {100 * c['naive']['mean']:.2f} ± {100 * c['naive']['std']:.2f}, "
                  f"HWA {100 * c['hwa']['mean']:.2f} ± {100 * c['hwa']['std']:.2f} ({c['gain_points']:+.2f} points)")
        save()
    if "speed" in parts:
        res["speed"] = s = bench_speed(args.speed_repeats)
        print("HWA epoch:", {m: round(v["mean"], 3) for m, v in s["cimstack"].items()},
              "aihwkit-lightning:", {m: round(v.get("mean", float("nan")), 3)
                                     for m, v in s.get("aihwkit_lightning", {}).get("models", {}).items()},
              "ratio:", s.get("ratio_cimstack_over_aihwkit_lightning"))
        save()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
