"""Your own model, as ONNX, through the command line: export a small CNN trained here to an
ONNX file, then compile, place and evaluate it with ``cimstack`` (``--dataset`` says what
data it takes: an ONNX file does not).

    python examples/onnx_model.py [--out build/examples/onnx]
"""
import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from cimstack.zoo import datasets, models


class TinyCNN(nn.Module):
    """A model of the user's own: cimstack does not know this class."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def cimstack_command() -> list[str]:
    exe = Path(sys.executable).with_name("cimstack")
    return [str(exe)] if exe.exists() else [shutil.which("cimstack") or "cimstack"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/examples/onnx")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    split = datasets.digits("image")
    model = TinyCNN()
    stats = models.train(model, split, epochs=8, lr=2e-2)
    print(f"trained: {100 * stats['test_accuracy']:.1f} % test accuracy (floating point)")
    path = out / "tiny_cnn.onnx"
    torch.onnx.export(model, (split.x_train[:1],), str(path), dynamo=True)
    print(f"exported {path}")
    for step in (["compile", path, "--dataset", "digits-image"],
                 ["place", path, "--dataset", "digits-image", "--report", out / "place"],
                 ["eval", path, "--dataset", "digits-image", "--min-accuracy", "0.8", "--report", out / "eval"]):
        print(f"\n$ cimstack {' '.join(map(str, step))}", flush=True)
        subprocess.run(cimstack_command() + [str(s) for s in step], check=True)


if __name__ == "__main__":
    main()
