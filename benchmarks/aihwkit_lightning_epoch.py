#!/usr/bin/env python3
"""Time one hardware-aware training epoch with IBM's aihwkit-lightning (CPU, pure-torch path).

Standalone: does NOT import cimstack. Run it with the interpreter of a venv that has
``torch`` and ``aihwkit-lightning`` (and scikit-learn for the data), e.g.::

    python3 -m venv build/venv-aihwkit-lightning
    build/venv-aihwkit-lightning/bin/pip install torch==2.13.0 aihwkit-lightning scikit-learn
    build/venv-aihwkit-lightning/bin/python benchmarks/aihwkit_lightning_epoch.py \
        --models mlp,cnn --repeats 3 --json build/bench/aihwkit_lightning.json

Data: sklearn 8x8 digits, X/16 as float32, 80/20 split (seed 0), batch 64, Adam lr 1e-2,
one thread. Per model: convert_to_analog, one untimed warm-up epoch, then ``repeats`` epochs
each timed separately with time.perf_counter; test accuracy (eval mode) after the last one.

RPU config (TorchInferenceRPUConfig), see build_rpu_config():
  forward.inp_res = 2**8-2              8-bit DAC, signed, full scale = learned input range
  pre_post.input_range.enable = True, learn_input_range = True
              (init_from_data = 20 batches of running 3-std init, inside the warm-up epoch)
  forward.out_res = 2**8-2, out_bound   8-bit ADC, full scale = out_bound * IR * max|W|
  forward.out_noise = 0.04              sigma = 0.04 * max|W| * IR (training only)
  modifier.noise_type = ADD_NORMAL, std_dev = 0.02 (x max|W| of the layer, training only)
  clip.type = LAYER_GAUSSIAN_PER_CHANNEL, sigma = 3.0 (applied after every optimizer step
              by AnalogOptimizer's post-step hook)
If something is not supported on this machine the JSON gets an "error" entry instead of a crash.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="mlp,cnn", help="comma list of mlp,cnn")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per model")
    p.add_argument("--json", default=None, help="write results to this JSON file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--inp-bits", type=int, default=8)
    p.add_argument("--out-bits", type=int, default=8, help="<=0 disables output quantisation")
    p.add_argument("--out-bound", type=float, default=10.0,
                   help="ADC full scale in units of input_range*max|W| (needed for out_res)")
    p.add_argument("--out-noise", type=float, default=0.04)
    p.add_argument("--weight-noise", type=float, default=0.02)
    p.add_argument("--weight-noise-per-channel", action="store_true",
                   help="ADD_NORMAL_PER_CHANNEL (std x per-row max) instead of ADD_NORMAL")
    p.add_argument("--clip-sigma", type=float, default=3.0)
    p.add_argument("--ir-init-batches", type=int, default=20,
                   help="pre_post.input_range.init_from_data (library default 100); 20 < the "
                        "23 batches of one epoch, so the data-driven IR init ends inside the "
                        "untimed warm-up epoch and the timed epochs are steady state")
    p.add_argument("--digital-baseline", action="store_true",
                   help="also time the same epoch with the unconverted torch model")
    return p.parse_args(argv)


def build_rpu_config(args):
    from aihwkit_lightning.simulator.configs import TorchInferenceRPUConfig, WeightClipType, WeightNoiseInjectionType

    cfg = TorchInferenceRPUConfig()
    # DAC: 8-bit signed inputs, full scale = learned input range (IR)
    cfg.forward.inp_res = 2 ** args.inp_bits - 2 if args.inp_bits > 0 else -1
    cfg.pre_post.input_range.enable = True
    cfg.pre_post.input_range.learn_input_range = True
    cfg.pre_post.input_range.init_value = 3.0
    cfg.pre_post.input_range.init_from_data = args.ir_init_batches  # running 3-std init
    cfg.pre_post.input_range.init_std_alpha = 3.0
    cfg.pre_post.input_range.decay = 0.001
    cfg.pre_post.input_range.input_min_percentage = 0.95
    # ADC: out_res needs out_bound > 0 and input ranges enabled
    if args.out_bits > 0:
        cfg.forward.out_res = 2 ** args.out_bits - 2
        cfg.forward.out_bound = args.out_bound
    # output noise: sigma = out_noise * max|W| * IR, training only
    cfg.forward.out_noise = args.out_noise
    cfg.forward.out_noise_per_channel = False
    # additive Gaussian weight noise during training
    cfg.modifier.noise_type = (WeightNoiseInjectionType.ADD_NORMAL_PER_CHANNEL
                               if args.weight_noise_per_channel
                               else WeightNoiseInjectionType.ADD_NORMAL)
    cfg.modifier.std_dev = args.weight_noise
    # per-output-channel clipping at clip_sigma * std (after each optimizer step)
    cfg.clip.type = WeightClipType.LAYER_GAUSSIAN_PER_CHANNEL
    cfg.clip.sigma = args.clip_sigma
    return cfg


def rpu_summary(cfg):
    f, ir = cfg.forward, cfg.pre_post.input_range
    return {
        "class": type(cfg).__name__,
        "forward.inp_res": f.inp_res, "forward.out_res": f.out_res,
        "forward.out_bound": f.out_bound, "forward.out_noise": f.out_noise,
        "forward.out_noise_per_channel": f.out_noise_per_channel,
        "pre_post.input_range.enable": ir.enable,
        "pre_post.input_range.learn_input_range": ir.learn_input_range,
        "pre_post.input_range.init_value": ir.init_value,
        "pre_post.input_range.init_from_data": ir.init_from_data,
        "pre_post.input_range.init_std_alpha": ir.init_std_alpha,
        "pre_post.input_range.decay": ir.decay,
        "pre_post.input_range.input_min_percentage": ir.input_min_percentage,
        "pre_post.input_range.fast_mode": ir.fast_mode,
        "pre_post.input_range.dynamic": ir.dynamic,
        "modifier.noise_type": cfg.modifier.noise_type.name,
        "modifier.std_dev": cfg.modifier.std_dev,
        "modifier.quantization_type": cfg.modifier.quantization_type.name,
        "clip.type": cfg.clip.type.name, "clip.sigma": cfg.clip.sigma,
        "mapping.max_input_size": cfg.mapping.max_input_size,
        "str": str(cfg),
    }


def load_data(seed):
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=seed)
    return (torch.from_numpy(xtr), torch.from_numpy(ytr),
            torch.from_numpy(xte), torch.from_numpy(yte))


def make_model(name):
    from torch import nn
    if name == "mlp":
        return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    raise ValueError(f"unknown model {name!r}")


def shape_inputs(name, x):
    return x if name == "mlp" else x.view(-1, 1, 8, 8)


def run_epoch(model, opt, xtr, ytr, batch, gen):
    import torch
    import torch.nn.functional as F
    model.train()
    perm = torch.randperm(xtr.shape[0], generator=gen)
    n = 0
    for i in range(0, xtr.shape[0], batch):
        idx = perm[i:i + batch]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
        loss.backward()
        opt.step()
        n += 1
    return n, float(loss.detach())


def accuracy(model, x, y):
    import torch
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def time_model(name, args, cfg, data, analog=True):
    import torch
    from torch.optim import Adam

    xtr, ytr, xte, yte = data
    xtr, xte = shape_inputs(name, xtr), shape_inputs(name, xte)
    torch.manual_seed(args.seed)
    model = make_model(name)
    if analog:
        from aihwkit_lightning.nn.conversion import convert_to_analog
        from aihwkit_lightning.optim import AnalogOptimizer
        model = convert_to_analog(model, cfg)
        opt = AnalogOptimizer(Adam, model.analog_layers, model.parameters(), lr=args.lr)
        layers = [f"{n}:{type(m).__name__}" for n, m in model.named_analog_layers()]
    else:
        opt = Adam(model.parameters(), lr=args.lr)
        layers = []
    gen = torch.Generator().manual_seed(args.seed)
    batches, _ = run_epoch(model, opt, xtr, ytr, args.batch, gen)  # untimed warm-up
    times, losses = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        batches, last_loss = run_epoch(model, opt, xtr, ytr, args.batch, gen)
        times.append(time.perf_counter() - t0)
        losses.append(last_loss)
    res = {
        "epoch_seconds": times,
        "mean": statistics.fmean(times),
        "std": statistics.stdev(times) if len(times) > 1 else 0.0,
        "batches": batches,
        "samples": int(xtr.shape[0]),
        "test_samples": int(xte.shape[0]),
        "last_batch_loss": losses[-1],
        "test_accuracy_after": accuracy(model, xte, yte),
        "train_accuracy_after": accuracy(model, xtr, ytr),
        "epochs_trained": 1 + args.repeats,
    }
    if analog:
        res["analog_layers"] = layers
        res["input_ranges"] = {n: [round(float(v), 4) for v in m.input_range.detach()]
                               for n, m in model.named_analog_layers()
                               if getattr(m, "input_range", None) is not None}
    return res


def main(argv=None):
    args = parse_args(argv)
    out = {"aihwkit_lightning_version": None, "torch_version": None,
           "threads": args.threads, "python": platform.python_version(),
           "machine": platform.machine(), "models": {}, "rpu_config": None,
           "settings": {"batch": args.batch, "lr": args.lr, "optimizer": "Adam",
                        "seed": args.seed, "repeats": args.repeats, "warmup_epochs": 1,
                        "data": "sklearn load_digits, X/16 float32, 80/20 split"}}
    try:
        import torch
        out["torch_version"] = torch.__version__
        torch.set_num_threads(args.threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        out["threads"] = torch.get_num_threads()
        import contextlib

        import aihwkit_lightning
        out["aihwkit_lightning_version"] = aihwkit_lightning.__version__
        # the library prints "Could not import triton_utils..." on stdout at import time:
        # keep stdout pure JSON
        with contextlib.redirect_stdout(sys.stderr):
            import aihwkit_lightning.nn
            import aihwkit_lightning.nn.conversion
            import aihwkit_lightning.optim
        from aihwkit_lightning.nn.modules import linear as _lin
        out["triton_path"] = bool(getattr(_lin, "TRITON_AVAIL", False))
        out["kernel_path"] = "triton" if out["triton_path"] else "pytorch (TorchLinear)"
        cfg = build_rpu_config(args)
        out["rpu_config"] = rpu_summary(cfg)
        data = load_data(args.seed)
    except Exception as exc:  # pylint: disable=broad-except
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc()
        _emit(out, args)
        return 1

    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        try:
            out["models"][name] = time_model(name, args, cfg, data, analog=True)
        except Exception as exc:  # pylint: disable=broad-except
            out["models"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                   "traceback": traceback.format_exc()}
        if args.digital_baseline:
            try:
                out["models"][name]["digital_baseline"] = time_model(
                    name, args, cfg, data, analog=False)
            except Exception as exc:  # pylint: disable=broad-except
                out["models"][name]["digital_baseline"] = {"error": f"{type(exc).__name__}: {exc}"}
        r = out["models"][name]
        if "error" in r:
            print(f"{name}: ERROR {r['error']}", file=sys.stderr)
        else:
            print(f"{name}: epoch {r['mean']*1e3:.1f} +- {r['std']*1e3:.1f} ms "
                  f"({r['batches']} batches, {r['samples']} samples), "
                  f"test acc {r['test_accuracy_after']:.4f}", file=sys.stderr)
    _emit(out, args)
    return 1 if any("error" in r for r in out["models"].values()) else 0


def _emit(out, args):
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        import os
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
