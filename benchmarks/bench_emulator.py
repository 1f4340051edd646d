"""Emulator speed against aihwkit-lightning: inference images/s, HWA epoch time, peak memory, programming time.

    python benchmarks/bench_emulator.py [--quick] [--golden | --no-golden] [--out build/bench/emulator.json]

Same machine, same run, one thread on each side:

a. inference of the digits MLP (batch 360, the digits test split), LeNet-5 on 28x28 inputs
   (batch 16) and ResNet-32 with CIFAR-10 shapes (33 convolutions, 1x1 shortcuts; batch 2):
   cimstack compiled onto the default chip's datapath (8-bit bit-serial inputs, 8-bit weights
   in two slices on differential pairs, 8-bit ADC with noise), the MLP on the default chip
   (4 tiles of 64x64), LeNet-5 on as many 64x64 tiles as it needs, ResNet-32 on as many
   576x128 arrays as it needs; programmed by write-verify on the emulator, then
   ``Deployment.run`` timed. aihwkit-lightning (benchmarks/aihwkit_lightning_inference.py,
   in its own environment) runs the same weights on the same inputs with 8-bit inputs and
   outputs, and output and weight noise drawn on every forward, tiled by the array's rows.
   Each network and each side runs in a fresh process, which also gives its peak memory
   over the memory after the imports;
b. one hardware-aware training epoch of the digits MLP and CNN (bench_training.time_epoch
   here, benchmarks/aihwkit_lightning_epoch.py there);
c. write-verify programming of the whole ResNet-32 deployment on the emulator and (not with
   ``--quick`` unless ``--golden``) on the golden model.

Top-level keys: ``inference_ratio_{mlp,lenet,resnet32}`` (cimstack images/s over lightning's),
``training_speedup_{mlp,cnn}`` (lightning epoch seconds over cimstack's), ``memory_ratio_lenet``
(cimstack peak MB over import / lightning's), ``program_seconds_resnet32``. ``--quick`` times
fewer calls and epochs (under 3 minutes).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import _lightning
import torch
from _measure import peak_mb, rss_mb, throughput, time_calls
from bench_training import time_epoch
from torch.nn import functional as F

import cimstack
from cimstack.backends import EmulatorBackend, GoldenBackend
from cimstack.errors import PlacementError
from cimstack.zoo import datasets, models

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "bench" / "emulator"
NETS = ("mlp", "lenet", "resnet32")
BATCH = {"mlp": 360, "lenet": 16, "resnet32": 2}
#: the arrays each network runs on (the default chip's datapath; tiles: as many as it needs)
ARRAYS = {"mlp": {}, "lenet": {}, "resnet32": dict(rows=576, cols=128, mac_lanes=32, adc_share=8)}
#: (warm-up calls, timed calls at least, timed seconds at least) for --quick and the full run
TIMING = {True: (1, 1, 2.0), False: (2, 5, 10.0)}
EPOCHS = {True: 2, False: 5}
#: what the team aims at (reported beside the figures, not asserted)
TARGETS = {"inference_ratio_mlp": ">= 0.5", "inference_ratio_lenet": ">= 1.0", "inference_ratio_resnet32": ">= 1.0",
           "training_speedup_cnn": ">= 1.5", "training_speedup_mlp": ">= 1.0", "memory_ratio_lenet": "<= 2.0",
           "program_seconds_resnet32": "emulator < 1 s, golden < 10 s"}


def build(name: str) -> torch.nn.Module:
    """The network ``name`` with seeded random weights, in eval mode."""
    torch.manual_seed(0)
    model = {"mlp": models.DigitsMLP, "lenet": models.LeNet5, "resnet32": models.ResNet32}[name]()
    return model.eval()


def inputs(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration batch, timed batch) of realistic-looking inputs: the 8x8 digits, upsampled
    to 28x28 for LeNet-5, and to 32x32 in three tinted, normalised colour channels with a
    little noise (CIFAR-10 statistics) for ResNet-32."""
    split = datasets.digits("flat" if name == "mlp" else "image")
    calib, x = split.x_train[:256], split.x_test[:BATCH[name]]
    if name == "mlp":
        return calib, x
    calib = calib[:64]
    if name == "lenet":
        return tuple(F.interpolate(t, size=(28, 28), mode="bilinear", align_corners=False) for t in (calib, x))
    gen = torch.Generator().manual_seed(0)

    def cifar(t: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False)
        tint = 0.3 + 0.7 * torch.rand(len(t), 3, 1, 1, generator=gen)
        rgb = (up * tint + 0.1 * torch.rand(len(t), 3, 32, 32, generator=gen)).clamp(0, 1)
        return (rgb - 0.47) / 0.25
    return cifar(calib[:32]), cifar(x)


def chip(name: str, tiles: int | None = None) -> cimstack.ChipConfig:
    base = cimstack.preset("default")
    if name == "mlp":
        return base
    return base.replace(name=f"default-{name}", array=dict(ARRAYS[name], tiles=tiles or 48))


def compile_fitted(name: str, model: torch.nn.Module, calib: torch.Tensor):
    """The deployment of ``model`` on the smallest chip (of ``ARRAYS[name]``) that holds it:
    the skyline packing on the largest chip gives the count, then the usual ``auto`` placement."""
    if name == "mlp":
        return cimstack.compile(model, chip(name), example=calib)
    need = len(cimstack.compile(model, chip(name), example=calib, strategy="skyline").placement.tiles_used)
    for tiles in range(need, 49):
        try:
            return cimstack.compile(model, chip(name, tiles), example=calib)
        except PlacementError:
            continue
    raise PlacementError(f"{name} does not fit 48 tiles")


# -- one network on cimstack, in a fresh process (--worker) -------------------------------------
def worker(name: str, quick: bool, golden: bool, out: Path) -> None:
    torch.set_num_threads(1)
    memory = {"after_import_mb": rss_mb()}
    model = build(name)
    model.load_state_dict(torch.load(WORK / f"{name}.pt", weights_only=True))
    calib = torch.load(WORK / f"{name}_calib.pt", weights_only=True)
    x = torch.load(WORK / f"{name}_x.pt", weights_only=True)
    t0 = time.perf_counter()
    dep = compile_fitted(name, model, calib)
    compile_s = time.perf_counter() - t0
    be = EmulatorBackend(dep.cfg)
    t0 = time.perf_counter()
    rep = dep.program(be)
    program_s = time.perf_counter() - t0
    memory["after_setup_mb"] = rss_mb()
    times = time_calls(lambda: dep.run(x), *TIMING[quick])
    memory["peak_mb"] = peak_mb()
    memory["peak_over_import_mb"] = memory["peak_mb"] - memory["after_import_mb"]
    emu = be.tiles[0] if getattr(be, "tiles", None) else be
    res = dict(throughput(times, len(x)), memory=memory, warmup=TIMING[quick][0], compile_seconds=compile_s,
               config=dep.cfg.to_dict(),
               tiles=dep.cfg.array.tiles, tiles_used=len(dep.placement.tiles_used),
               analog_layers=len(dep.layers), blocks=sum(len(layer.blocks) for layer in dep.layers),
               emulator_dtype=str(getattr(emu, "dtype", "unknown")), threads=torch.get_num_threads(),
               program={"emulator": {"seconds": program_s, "cells": rep.cells}})
    if golden:
        t0 = time.perf_counter()
        grep = dep.program(GoldenBackend(dep.cfg))
        res["program"]["golden"] = {"seconds": time.perf_counter() - t0, "cells": grep.cells}
    out.write_text(json.dumps(res, indent=1))


def run_worker(name: str, quick: bool, golden: bool) -> dict:
    out = WORK / f"{name}_cimstack.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--worker", name, "--worker-out", str(out), "--golden" if golden else "--no-golden"]
    cmd += ["--quick"] * quick
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        return {"error": f"exit {proc.returncode}", "stderr": proc.stderr[-3000:]}
    return json.loads(out.read_text())


def run_lightning(name: str, quick: bool) -> dict:
    warmup, repeats, seconds = TIMING[quick]
    rows = chip(name).array.rows
    return _lightning.run("aihwkit_lightning_inference.py",
                          ["--model", name, "--dir", str(WORK), "--max-input-size", str(rows), "--warmup", str(warmup),
                           "--repeats", str(repeats), "--min-seconds", str(seconds)],
                          WORK / f"{name}_lightning.json")


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer timed calls and epochs; golden programming skipped")
    ap.add_argument("--golden", action=argparse.BooleanOptionalAction, default=None,
                    help="time ResNet-32 programming on the golden model (default: not with --quick)")
    ap.add_argument("--out", default=str(ROOT / "build" / "bench" / "emulator.json"))
    ap.add_argument("--worker", choices=NETS, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    golden = not args.quick if args.golden is None else args.golden
    if args.worker:
        worker(args.worker, args.quick, golden and args.worker == "resnet32", Path(args.worker_out))
        return
    start = time.perf_counter()
    torch.set_num_threads(1)
    WORK.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    res: dict = {"machine": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "quick": args.quick, "targets": TARGETS,
                 "timing": dict(zip(("warmup_calls", "min_calls", "min_seconds"), TIMING[args.quick])),
                 "chips": {}, "inference": {}}

    def save():
        res["wall_seconds"] = time.perf_counter() - start
        out.write_text(json.dumps(res, indent=1))

    for name in NETS:
        model = build(name)
        calib, x = inputs(name)
        torch.save(model.state_dict(), WORK / f"{name}.pt")
        torch.save(calib, WORK / f"{name}_calib.pt")
        torch.save(x, WORK / f"{name}_x.pt")
        ours, theirs = run_worker(name, args.quick, golden), run_lightning(name, args.quick)
        r = ratio(ours.get("images_per_second"), theirs.get("images_per_second"))
        mem = ratio(ours.get("memory", {}).get("peak_over_import_mb"), theirs.get("memory", {}).get("peak_over_import_mb"))
        res["inference"][name] = {"batch": len(x), "input_shape": list(x.shape[1:]), "cimstack": ours,
                                  "aihwkit_lightning": theirs, "ratio": r, "memory_ratio": mem}
        if "config" in ours:
            a = ours["config"]["array"]
            res["chips"][name] = (f"{ours['config']['name']}: {a['tiles']} tiles of {a['rows']}x{a['cols']}, "
                                  f"{a['mac_lanes']} MAC lanes, ADC per {a['adc_share']} units "
                                  f"({ours['tiles_used']} used, {ours['blocks']} blocks)")
        res[f"inference_ratio_{name}"] = r
        if name == "lenet":
            res["memory_ratio_lenet"] = mem
        print(f"{name}: cimstack {ours.get('images_per_second', float('nan')):.3g} img/s, aihwkit-lightning "
              f"{theirs.get('images_per_second', float('nan')):.3g} img/s"
              + "".join(f" [{side} failed: {d['error']}]" for side, d in (("cimstack", ours), ("lightning", theirs))
                        if "error" in d), flush=True)
        save()
    res["emulator_dtype"] = res["inference"]["mlp"]["cimstack"].get("emulator_dtype")
    prog = res["inference"]["resnet32"]["cimstack"].get("program", {})
    res["program_seconds_resnet32"] = {
        "emulator": prog.get("emulator", {}).get("seconds"),
        "golden": prog["golden"]["seconds"] if "golden" in prog else None,
        "golden_skipped": None if "golden" in prog else "skipped (--quick or --no-golden)",
        "cells": prog.get("emulator", {}).get("cells")}

    epochs = EPOCHS[args.quick]
    ours = {name: time_epoch(name, epochs) for name in ("mlp", "cnn")}
    theirs = _lightning.run("aihwkit_lightning_epoch.py", ["--models", "mlp,cnn", "--repeats", str(epochs)],
                            WORK / "epoch_lightning.json")
    res["training"] = {"epochs_timed": epochs, "cimstack": ours, "aihwkit_lightning": theirs}
    for name in ours:
        res[f"training_speedup_{name}"] = ratio(theirs.get("models", {}).get(name, {}).get("mean"), ours[name]["mean"])
    save()
    table(res)
    print(f"wrote {out} ({res['wall_seconds']:.0f} s)")
    failed = [f"{name} {side}" for name, r in res["inference"].items() for side in ("cimstack", "aihwkit_lightning")
              if "error" in r[side]] + ["aihwkit-lightning epoch"] * ("error" in theirs)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


def table(res: dict) -> None:
    def f(v, spec=".3g"):
        return "-" if v is None else format(v, spec)
    print(f"\n{'inference':<10s} {'batch':>5s} {'cimstack img/s':>15s} {'lightning img/s':>16s} {'ratio':>7s} "
          f"{'MB over import (c/l)':>21s}")
    for name, r in res["inference"].items():
        c, a = r["cimstack"], r["aihwkit_lightning"]
        mem = f"{f(c.get('memory', {}).get('peak_over_import_mb'), '.0f')}/" \
              f"{f(a.get('memory', {}).get('peak_over_import_mb'), '.0f')}"
        print(f"{name:<10s} {r['batch']:>5d} {f(c.get('images_per_second')):>15s} "
              f"{f(a.get('images_per_second')):>16s} {f(r['ratio']):>7s} {mem:>21s}")
    t = res["training"]
    print(f"\n{'HWA epoch':<10s} {'cimstack s':>11s} {'lightning s':>12s} {'speedup':>8s}")
    for name, c in t["cimstack"].items():
        a = t["aihwkit_lightning"].get("models", {}).get(name, {}).get("mean")
        print(f"{name:<10s} {c['mean']:>11.3f} {f(a):>12s} {f(res[f'training_speedup_{name}']):>8s}")
    p = res["program_seconds_resnet32"]
    print(f"\nResNet-32 write-verify ({f(p['cells'], 'd')} cells): emulator {f(p['emulator'])} s, "
          f"golden {f(p['golden']) + ' s' if p['golden'] is not None else p['golden_skipped']}")


if __name__ == "__main__":
    main()
