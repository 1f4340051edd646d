"""Offline data sets for the reference networks: nothing here downloads anything.

``digits`` wraps scikit-learn's 8x8 handwritten digits, which ship inside the scikit-learn
wheel, so the examples and tests run on a machine without network access. ``load_idx`` reads
MNIST-format IDX files the user already has on disk (real MNIST, Fashion-MNIST, ...).
"""
from __future__ import annotations

import gzip
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from cimstack.errors import ConfigError

__all__ = ["Split", "digits", "load", "load_idx", "SHAPES"]

#: ``digits`` layouts: flat vectors for MLPs, 1-channel images for CNNs, row sequences for RNNs.
SHAPES = {"flat": (64,), "image": (1, 8, 8), "sequence": (8, 8)}

_IDX_IMAGES = 0x00000803     # unsigned bytes, 3 dimensions
_IDX_LABELS = 0x00000801     # unsigned bytes, 1 dimension


@dataclass(frozen=True)
class Split:
    """A train/test split: ``x`` float32, ``y`` int64 class indices."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str = ""

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.y_train, self.y_test]).max()) + 1


def digits(shape: str = "flat", test_fraction: float = 0.2, seed: int = 0) -> Split:
    """scikit-learn's 1797 8x8 digits, pixels scaled from 0..16 to [0, 1].

    The split is stratified and seeded so every class is in both halves and a given
    ``seed`` always gives the same tensors (accuracy figures are then reproducible).
    ``shape`` picks the layout the model wants: "flat" (N, 64), "image" (N, 1, 8, 8), or
    "sequence" (N, 8, 8), the 8 pixel rows as 8 time steps of 8 features.
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)}, got {shape!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    # scikit-learn takes about a second to import: only when the digits set is asked for
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.utils import Bunch

    data = cast(Bunch, load_digits())          # a Bunch without return_X_y (its annotation also allows the tuple)
    x = (data.data / 16.0).astype(np.float32).reshape(-1, *SHAPES[shape])
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y,
                                              random_state=seed)
    return Split(torch.from_numpy(np.ascontiguousarray(x_tr)), torch.from_numpy(y_tr),
                 torch.from_numpy(np.ascontiguousarray(x_te)), torch.from_numpy(y_te),
                 name=f"digits-{shape}")


def _read_idx(path: Path, magic: int) -> tuple[tuple[int, ...], np.ndarray]:
    """The dimensions and the uint8 payload of one IDX file, checked against its length."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:          # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read IDX file ({e})") from e
    ndim = magic & 0xFF                       # the magic's low byte counts the dimensions
    header = 4 + 4 * ndim
    if len(raw) >= 4 and (found := struct.unpack(">I", raw[:4])[0]) != magic:
        raise ValueError(f"{path}: bad magic number 0x{found:08x}, expected 0x{magic:08x}")
    if len(raw) < header:
        raise ValueError(f"{path}: truncated header ({len(raw)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != size:
        raise ValueError(f"{path}: dimensions {dims} need {size} data bytes, "
                         f"file has {len(raw) - header}")
    return dims, np.frombuffer(raw, dtype=np.uint8, offset=header)


def load_idx(images_path: str | Path, labels_path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels from a pair of MNIST-format IDX files (optionally ``.gz``).

    Returns x float32 in [0, 1] of shape (N, rows, cols) and y int64 of shape (N,). Every
    header field is checked because a truncated download otherwise turns into silently
    misaligned images or labels; problems raise ``ValueError`` naming the file.
    """
    images_path, labels_path = Path(images_path), Path(labels_path)
    (n, rows, cols), pixels = _read_idx(images_path, _IDX_IMAGES)
    (m,), labels = _read_idx(labels_path, _IDX_LABELS)
    if n != m:
        raise ValueError(f"{images_path} holds {n} images but {labels_path} holds {m} labels")
    x = torch.from_numpy(pixels.reshape(n, rows, cols).astype(np.float32) / 255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def load(spec: str | Path, seed: int = 0) -> Split:
    """A data set by name, as the command line gives it.

    ``digits-flat``, ``digits-image``, ``digits-sequence`` (``digits`` is ``digits-flat``), or
    the path of an ``.npz`` file with arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``
    (``x`` float, ``y`` integer class indices; the first axis is the sample).
    """
    spec = str(spec)
    if spec == "digits" or spec.startswith("digits-") and spec[7:] in SHAPES:
        return digits(spec[7:] or "flat", seed=seed)
    path = Path(spec)
    if path.suffix != ".npz":
        raise ConfigError(f"unknown data set {spec!r}: use digits-flat, digits-image, digits-sequence "
                          f"or an .npz file with x_train, y_train, x_test, y_test")
    if not path.is_file():
        raise ConfigError(f"data set file {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"{path}: not an .npz file (np.savez writes one)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as exc:
        raise ConfigError(f"{path}: missing array {exc}; an .npz data set needs x_train, y_train, x_test, y_test") from None
    except (OSError, ValueError, EOFError) as exc:
        raise ConfigError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if len(x) != len(y) or len(x) == 0:
            raise ConfigError(f"{path}: x_{part} has {len(x)} samples and y_{part} {len(y)}; they must match and not be empty")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise ConfigError(f"{path}: y_{part} must hold non-negative integer class indices, got {y.dtype}")
        if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
            raise ConfigError(f"{path}: x_{part} must be finite numbers")
    return Split(*(torch.from_numpy(np.ascontiguousarray(arrays[k]).astype(np.float32 if k[0] == "x" else np.int64))
                   for k in ("x_train", "y_train", "x_test", "y_test")), name=path.stem)
