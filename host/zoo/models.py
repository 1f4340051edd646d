"""Small reference networks for the 8x8 digits, and a deterministic trainer.

The networks are sized so their packed weights fit a chip of four 64x64 crossbar tiles (no
weight matrix over 72 rows x 96 columns, the recurrent cells' combined (input + hidden) x
gates matrix included), and they use only layers the cimstack compiler lowers: Linear,
Conv2d (groups=1), BatchNorm (folded into the preceding conv), ReLU, pooling, Flatten,
residual additions, and single-layer unidirectional batch-first GRU/LSTM. Every ``forward``
is free of data-dependent control flow so ``torch.fx.symbolic_trace`` captures it.

``LeNet5`` (28x28 inputs) and ``ResNet32`` (CIFAR-10 shapes) are the larger, standard
networks of the speed benchmark (benchmarks/bench_emulator.py); they are not in ``MODELS``
and need more, or larger, tiles than the four 64x64 of the default chip.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import trange

from cimstack.errors import ConfigError
from cimstack.zoo import datasets
from cimstack.zoo.datasets import Split

__all__ = ["DigitsMLP", "DigitsCNN", "DigitsGRU", "DigitsLSTM", "DigitsResNet", "ResidualBlock",
           "LeNet5", "ResNet32", "CifarBlock", "MODELS", "DEFAULTS", "build", "train", "accuracy", "train_digits"]


class DigitsMLP(nn.Module):
    """Linear(64, hidden) -> ReLU -> Linear(hidden, 10) on flat (N, 64) inputs."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class DigitsCNN(nn.Module):
    """Two 3x3 conv/BN/ReLU stages with a max-pool between, global average pool, linear head."""

    def __init__(self, channels: tuple[int, int] = (8, 16)) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class DigitsGRU(nn.Module):
    """A GRU over the 8 pixel rows of (N, 8, 8) inputs; the last step's state is classified."""

    def __init__(self, hidden: int = 24) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class DigitsLSTM(nn.Module):
    """An LSTM over the 8 pixel rows of (N, 8, 8) inputs; the last step's output is classified."""

    def __init__(self, hidden: int = 24) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class ResidualBlock(nn.Module):
    """``relu(x + bn2(conv2(relu(bn1(conv1(x))))))`` with bias-free 3x3 convolutions."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class DigitsResNet(nn.Module):
    """A conv/BN/ReLU stem, two residual blocks, global average pool and a linear head."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(ResidualBlock(width), ResidualBlock(width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.blocks(self.stem(x)))))


class LeNet5(nn.Module):
    """LeNet-5 on (N, 1, 28, 28) inputs: conv 1->6 5x5, ReLU, max-pool 2, conv 6->16 5x5,
    ReLU, max-pool 2, then fully connected 256 -> 120 -> 84 -> 10 with ReLUs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.classifier = nn.Sequential(
            nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class CifarBlock(nn.Module):
    """A ResNet basic block: two 3x3 conv/BN (the first with ``stride``), ReLU between, added
    to the input (through a 1x1 conv/BN shortcut where the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x) + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ResNet32(nn.Module):
    """ResNet-32 for CIFAR-10 shapes, (N, 3, 32, 32) inputs (He et al. 2016): a 3x3 conv/BN/ReLU
    stem of 16 channels, three stages of five basic blocks (16, 32, 64 channels; the second and
    third start with stride 2 and a 1x1 conv shortcut), global average pool, linear 64 -> 10:
    33 convolutions."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks: list[nn.Module] = []
        c_in = 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(5):
                blocks.append(CifarBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.blocks(self.stem(x)))))


#: name -> (model class, the ``datasets.digits`` shape it takes)
MODELS: dict[str, tuple[type[nn.Module], str]] = {
    "mlp": (DigitsMLP, "flat"),
    "cnn": (DigitsCNN, "image"),
    "gru": (DigitsGRU, "sequence"),
    "lstm": (DigitsLSTM, "sequence"),
    "resnet": (DigitsResNet, "image"),
}

#: per-model training defaults for ``train_digits``, measured to reach the accuracy floors in
#: tests/zoo/test_models.py within a few seconds on two CPU cores
DEFAULTS: dict[str, dict[str, int | float]] = {
    "mlp": dict(epochs=20, lr=1e-2),
    "cnn": dict(epochs=15, lr=2e-2),
    "gru": dict(epochs=20, lr=2e-2),
    "lstm": dict(epochs=20, lr=2e-2),
    "resnet": dict(epochs=10, lr=2e-2),
}


def accuracy(logits_or_fn: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
             x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``y`` predicted by ``logits_or_fn``: a logits tensor, or a model / function
    that is called on ``x`` under ``torch.no_grad()`` (so emulated forwards can be scored too)."""
    if callable(logits_or_fn):
        with torch.no_grad():
            logits = logits_or_fn(x)
    else:
        logits = logits_or_fn
    return (logits.argmax(-1) == y).float().mean().item()


def train(model: nn.Module, split: Split, epochs: int = 30, lr: float = 1e-2,
          batch_size: int = 64, seed: int = 0, weight_decay: float = 0.0,
          progress: bool = False, on_epoch: Callable[[int], None] | None = None,
          after_step: Callable[[], None] | None = None) -> dict[str, float]:
    """Adam on cross-entropy with the learning rate cosine-annealed from ``lr`` to zero.

    The annealing makes the final weights (the ones mapped onto the chip) a settled minimum
    rather than wherever the last large step landed. Deterministic for a given ``seed``
    (model init is the caller's; shuffling uses its own generator); leaves ``model`` in eval mode.
    ``on_epoch(epoch)`` runs before each epoch and ``after_step()`` after each optimiser step
    (the hardware-aware trainer's schedule and weight clipping).

    Returns {"train_accuracy", "test_accuracy", "epochs", "seconds"}.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(split.y_train)
    steps = epochs * -(-n // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    start = time.perf_counter()
    model.train()
    for epoch in trange(epochs, desc=f"train {split.name}".strip(), disable=not progress):
        if on_epoch is not None:
            on_epoch(epoch)
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            opt.zero_grad()
            F.cross_entropy(model(split.x_train[idx]), split.y_train[idx]).backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step()
    seconds = time.perf_counter() - start
    model.eval()
    return {"train_accuracy": accuracy(model, split.x_train, split.y_train),
            "test_accuracy": accuracy(model, split.x_test, split.y_test),
            "epochs": epochs, "seconds": seconds}


#: name -> the constructor argument ``build(name, width=...)`` sets
WIDTH_ARGS = {"mlp": "hidden", "cnn": "channels", "gru": "hidden", "lstm": "hidden", "resnet": "width"}


def build(name: str, width: int | None = None) -> nn.Module:
    """A fresh ``MODELS[name]``; ``width`` sets its size (hidden units, or channels: the CNN's
    two stages get ``width`` and ``2 * width``)."""
    if name not in MODELS:
        raise ConfigError(f"model {name!r} is not one of {', '.join(MODELS)}")
    if width is not None:
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 4096:
            raise ConfigError(f"model width must be an integer in 1..4096, got {width!r}")
        return MODELS[name][0](**{WIDTH_ARGS[name]: (width, 2 * width) if name == "cnn" else width})
    return MODELS[name][0]()


def train_digits(name: str, seed: int = 0,
                 epochs: int | None = None) -> tuple[nn.Module, Split, dict[str, float]]:
    """Build ``MODELS[name]`` (seeded), load its digits split and train it with ``DEFAULTS``."""
    if name not in MODELS:
        raise ValueError(f"name must be one of {sorted(MODELS)}, got {name!r}")
    cls, shape = MODELS[name]
    torch.manual_seed(seed)
    model = cls()
    split = datasets.digits(shape, seed=seed)
    cfg = DEFAULTS[name]
    stats = train(model, split, epochs=int(cfg["epochs"] if epochs is None else epochs),
                  lr=cfg["lr"], seed=seed)
    return model, split, stats
