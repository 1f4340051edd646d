#!/usr/bin/env python3
"""Time inference of one network with IBM's aihwkit-lightning (CPU, pure-torch path), and its memory.

Standalone: does NOT import cimstack. benchmarks/bench_emulator.py runs it once per network,
each in a fresh process, with the interpreter of build/venv-aihwkit-lightning (_lightning.py):

    build/venv-aihwkit-lightning/bin/python benchmarks/aihwkit_lightning_inference.py \
        --model lenet --dir build/bench/emulator --max-input-size 64 --json out.json

The network is this file's copy of the cimstack zoo's (``mlp``: DigitsMLP, ``lenet``: LeNet5,
``resnet32``: ResNet32, same module names); its weights are the state_dict that
bench_emulator.py saved (``<dir>/<model>.pt``, checked key by key and shape by shape against
this copy), its inputs the saved calibration batch (``<model>_calib.pt``) and timed batch
(``<model>_x.pt``).

RPU config: aihwkit_lightning_epoch.py's build_rpu_config (8-bit inputs over an input range,
8-bit outputs with out_bound, output noise 0.04, additive weight noise 0.02 of max|W|) with the
input range initialised from the calibration batch (3 std, one batch) and
``mapping.max_input_size`` = the cimstack array's rows. aihwkit-lightning 2.1 applies output
noise and the weight-noise modifier only when a layer is in training mode
(torch_utils/torch_linear.py: ``if training and ...``), so the analog layers are put in train
mode and everything else (BatchNorm) in eval mode, and the forwards run under torch.no_grad():
fresh noise on every forward, as on the chip. After the calibration forward the input ranges
no longer change (init_from_data = 1). It has no output-side tiling (no max_output_size).

Memory: resident set after the imports, after the model is built and converted, and the peak
(VmHWM) after the timed forwards; ``peak_over_import_mb`` is the peak less the first.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import traceback

import torch
from _measure import peak_mb, rss_mb, throughput, time_calls
from aihwkit_lightning_epoch import build_rpu_config, rpu_summary
from aihwkit_lightning_epoch import parse_args as epoch_args
from torch import nn
from torch.nn import functional as F


# -- the networks: copies of cimstack.zoo.models (same module names, so the state_dicts match)
class DigitsMLP(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class LeNet5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.classifier = nn.Sequential(
            nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


class CifarBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return F.relu(self.shortcut(x) + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ResNet32(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks = []
        c_in = 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(5):
                blocks.append(CifarBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.blocks(self.stem(x)))))


MODELS = {"mlp": DigitsMLP, "lenet": LeNet5, "resnet32": ResNet32}


def load_weights(model: nn.Module, path: str) -> None:
    """Load the saved state_dict, failing loudly on any key or shape that differs."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    ours = model.state_dict()
    missing, extra = sorted(set(ours) - set(saved)), sorted(set(saved) - set(ours))
    shapes = [f"{k}: saved {tuple(saved[k].shape)}, here {tuple(ours[k].shape)}"
              for k in ours if k in saved and saved[k].shape != ours[k].shape]
    if missing or extra or shapes:
        raise SystemExit(f"{path} does not match this script's {type(model).__name__}: missing {missing}, "
                         f"unexpected {extra}, shapes {shapes}")
    model.load_state_dict(saved, strict=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    p.add_argument("--dir", required=True, help="where bench_emulator.py saved <model>.pt, _calib.pt, _x.pt")
    p.add_argument("--max-input-size", type=int, required=True, help="rows of the cimstack array")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed forwards, at least")
    p.add_argument("--min-seconds", type=float, default=2.0, help="timed forwards until this long, at least")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out: dict = {"model": args.model, "python": platform.python_version(), "machine": platform.machine()}
    try:
        torch.set_num_threads(args.threads)
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
        # the library prints "Could not import triton_utils..." on stdout at import time
        with contextlib.redirect_stdout(sys.stderr):
            import aihwkit_lightning
            from aihwkit_lightning.nn.conversion import convert_to_analog
        out.update(aihwkit_lightning_version=aihwkit_lightning.__version__, torch_version=torch.__version__,
                   threads=torch.get_num_threads())
        memory = {"after_import_mb": rss_mb()}

        torch.manual_seed(0)
        model = MODELS[args.model]()
        load_weights(model, os.path.join(args.dir, f"{args.model}.pt"))
        x_calib = torch.load(os.path.join(args.dir, f"{args.model}_calib.pt"), weights_only=True)
        x = torch.load(os.path.join(args.dir, f"{args.model}_x.pt"), weights_only=True)
        cfg = build_rpu_config(epoch_args(["--ir-init-batches", "1"]))
        cfg.mapping.max_input_size = args.max_input_size
        model = convert_to_analog(model, cfg)
        model.eval()
        analog = [m for _, m in model.named_analog_layers()]
        for m in analog:
            m.train()                                  # output and weight noise on every forward
        with torch.no_grad():
            model(x_calib)                             # input ranges from the calibration batch
            ranges = [float(m.input_range.max()) for m in analog]
            y1, y2 = model(x), model(x)
        memory["after_setup_mb"] = rss_mb()
        out["rpu_config"] = rpu_summary(cfg)
        out["analog_layers"] = len(analog)
        out["tiles_per_layer"] = [len(m.in_sizes) for m in analog]
        out["input_ranges_max"] = ranges
        out["noise_per_forward"] = not torch.equal(y1, y2)
        out["forward_mode"] = ("analog layers in train mode (noise applies only there in this version), "
                               "BatchNorm in eval mode, torch.no_grad()")

        def forward():
            with torch.no_grad():
                model(x)

        times = time_calls(forward, args.warmup, args.repeats, args.min_seconds)
        memory["peak_mb"] = peak_mb()
        memory["peak_over_import_mb"] = memory["peak_mb"] - memory["after_import_mb"]
        out.update(throughput(times, len(x)), memory=memory, warmup=args.warmup)
        status = 0
    except Exception as exc:                  # the JSON says what failed
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc()
        status = 1
    text = json.dumps(out, indent=1)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    else:
        print(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
