"""Reference networks and offline data sets: accuracy floors, fx traceability, IDX parsing."""
from __future__ import annotations

import gzip
import re
import struct

import numpy as np
import pytest
import torch
from torch import nn

from cimstack.zoo import datasets, models

# The contract: each reference network reaches this test accuracy with train_digits' defaults.
ACCURACY_FLOORS = {"mlp": 0.95, "cnn": 0.93, "gru": 0.90, "lstm": 0.90, "resnet": 0.93}


@pytest.fixture(scope="module")
def trained():
    """Each model trained once per session: name -> (model, split, stats)."""
    return {name: models.train_digits(name) for name in models.MODELS}


def test_every_model_has_a_floor():
    assert set(ACCURACY_FLOORS) == set(models.MODELS) == set(models.DEFAULTS)


@pytest.mark.parametrize("name", list(models.MODELS))
def test_model_reaches_its_accuracy_floor(trained, name):
    model, split, stats = trained[name]
    assert not model.training
    assert stats["epochs"] == models.DEFAULTS[name]["epochs"] and stats["seconds"] > 0
    assert stats["test_accuracy"] >= ACCURACY_FLOORS[name], stats
    assert stats["test_accuracy"] == models.accuracy(model, split.x_test, split.y_test)


@pytest.mark.parametrize("name", list(models.MODELS))
def test_model_traces_with_fx_and_matches(trained, name):
    model, split, _ = trained[name]
    gm = torch.fx.symbolic_trace(model)
    x = split.x_test[:32]
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))


@pytest.mark.parametrize("name", list(models.MODELS))
def test_weight_matrices_are_small(name):
    """Every weight, as a crossbar matrix (fan-in rows x output columns), fits 72 x 96."""
    cls, _ = models.MODELS[name]
    for module in cls().modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            rows, cols = module.weight[0].numel(), module.weight.shape[0]
        elif isinstance(module, (nn.GRU, nn.LSTM)):
            rows, cols = module.input_size + module.hidden_size, module.weight_ih_l0.shape[0]
            assert module.batch_first and module.num_layers == 1 and not module.bidirectional
        else:
            continue
        assert rows <= 72 and cols <= 96, (name, module)


@pytest.mark.parametrize("cls, shape, convs", [(models.LeNet5, (1, 28, 28), 2), (models.ResNet32, (3, 32, 32), 33)])
def test_benchmark_networks_build_trace_and_classify(cls, shape, convs):
    """LeNet-5 (28x28) and ResNet-32 (CIFAR-10 shapes: 33 convolutions) of the speed benchmark."""
    torch.manual_seed(0)
    model = cls().eval()
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == convs
    x = torch.rand(3, *shape)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (3, 10)
        assert torch.equal(torch.fx.symbolic_trace(model)(x), y)


def test_training_is_deterministic():
    split = datasets.digits("flat")
    weights = []
    for _ in range(2):
        torch.manual_seed(3)
        model = models.DigitsMLP()
        models.train(model, split, epochs=2, seed=3)
        weights.append(model.fc1.weight.detach().clone())
    assert torch.equal(*weights)


def test_accuracy_takes_logits_or_a_callable():
    x = torch.eye(4)
    y = torch.tensor([0, 1, 2, 0])
    assert models.accuracy(x, x, y) == 0.75
    assert models.accuracy(lambda t: t * 2, x, y) == 0.75


def test_train_digits_rejects_unknown_names():
    with pytest.raises(ValueError, match="mlp"):
        models.train_digits("transformer")


# --- data sets -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, dims", [("flat", (64,)), ("image", (1, 8, 8)), ("sequence", (8, 8))])
def test_digits_shapes_and_ranges(shape, dims):
    s = datasets.digits(shape)
    assert s.x_train.shape[1:] == s.x_test.shape[1:] == dims
    assert len(s.x_train) == len(s.y_train) and len(s.x_test) == len(s.y_test)
    assert len(s.y_train) + len(s.y_test) == 1797 and len(s.y_test) == 360
    assert s.x_train.dtype == s.x_test.dtype == torch.float32
    assert s.y_train.dtype == s.y_test.dtype == torch.int64
    assert s.x_train.min() == 0 and s.x_train.max() == 1
    assert shape in s.name


def test_digits_layouts_agree():
    flat, image, seq = (datasets.digits(s) for s in ("flat", "image", "sequence"))
    assert torch.equal(flat.x_train, image.x_train.flatten(1))
    assert torch.equal(flat.x_train, seq.x_train.flatten(1))
    assert torch.equal(flat.y_test, seq.y_test)


def test_digits_split_is_deterministic_per_seed():
    a, b, c = datasets.digits(seed=1), datasets.digits(seed=1), datasets.digits(seed=2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_test, c.y_test)


def test_digits_split_is_stratified():
    s = datasets.digits(test_fraction=0.1)
    train_counts = torch.bincount(s.y_train, minlength=10)
    test_counts = torch.bincount(s.y_test, minlength=10)
    assert (test_counts > 0).all()
    # every class's test share is within one sample of the requested fraction
    total = train_counts + test_counts
    assert ((test_counts - 0.1 * total).abs() <= 1).all()


@pytest.mark.parametrize("kwargs, word", [(dict(shape="square"), "shape"),
                                          (dict(test_fraction=0.0), "test_fraction"),
                                          (dict(test_fraction=1.0), "test_fraction"),
                                          (dict(test_fraction=-0.5), "test_fraction")])
def test_digits_rejects_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        datasets.digits(**kwargs)


# --- IDX files -------------------------------------------------------------------------------

def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    if magic is None:
        magic = 0x0800 | array.ndim
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


@pytest.fixture
def mnist_like():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (5, 3, 4), dtype=np.uint8), rng.integers(0, 10, 5, dtype=np.uint8)


def write(path, data: bytes, compress: bool = False):
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_load_idx_reads_images_and_labels(tmp_path, mnist_like, compress):
    images, labels = mnist_like
    ext = ".gz" if compress else ""
    x, y = datasets.load_idx(write(tmp_path / f"img-idx3-ubyte{ext}", idx_bytes(images), compress),
                             write(tmp_path / f"lbl-idx1-ubyte{ext}", idx_bytes(labels), compress))
    assert x.shape == (5, 3, 4) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x * 255, torch.from_numpy(images).float())
    assert torch.equal(y, torch.from_numpy(labels).long())


def bad_magic(images, labels):
    return idx_bytes(images, magic=0x00000801), idx_bytes(labels)


def truncated_images(images, labels):
    return idx_bytes(images)[:-1], idx_bytes(labels)


def truncated_header(images, labels):
    return idx_bytes(images), idx_bytes(labels)[:6]


def extra_label_bytes(images, labels):
    return idx_bytes(images), idx_bytes(labels) + b"\0"


def count_mismatch(images, labels):
    return idx_bytes(images), idx_bytes(labels[:-1])


@pytest.mark.parametrize("corrupt, culprit, message", [
    (bad_magic, "img", "magic"), (truncated_images, "img", "data bytes"),
    (truncated_header, "lbl", "header"), (extra_label_bytes, "lbl", "data bytes"),
    (count_mismatch, "img", "labels")])
def test_load_idx_rejects_corrupt_files(tmp_path, mnist_like, corrupt, culprit, message):
    img, lbl = corrupt(*mnist_like)
    paths = {"img": write(tmp_path / "img.idx", img), "lbl": write(tmp_path / "lbl.idx", lbl)}
    with pytest.raises(ValueError, match=message) as err:
        datasets.load_idx(paths["img"], paths["lbl"])
    assert str(paths[culprit]) in str(err.value)


@pytest.mark.parametrize("mangle", [lambda b: b, lambda b: gzip.compress(b)[:-10]],
                         ids=["not-gzip", "truncated-gzip"])
def test_load_idx_rejects_unreadable_gzip(tmp_path, mnist_like, mangle):
    images, labels = mnist_like
    img = write(tmp_path / "img.gz", mangle(idx_bytes(images)))
    with pytest.raises(ValueError, match=re.escape(str(img))):
        datasets.load_idx(img, write(tmp_path / "lbl", idx_bytes(labels)))
