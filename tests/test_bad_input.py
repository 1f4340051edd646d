"""One table of bad input to the host API: malformed PyTorch and ONNX models, configs out of
range, broken TOML, tensors of the wrong shape, dtype or with NaN, models too large. Each must
raise the documented error class with a message naming the problem; nothing half-built is
left behind (every call here is pure: it either returns or raises)."""
import numpy as np
import pytest
import torch
from torch import nn

import cimstack
from cimstack.backends import GoldenBackend
from cimstack.chip.config import ChipConfig
from cimstack.errors import CompileError, ConfigError, InputRangeError, PlacementError
from cimstack.zoo import datasets

CFG = cimstack.preset("default")
X = datasets.digits().x_train[:32]


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return torch.sort(self.fc(x), dim=1).values


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        if x.sum() > 0:                       # control flow on data: fx cannot trace it
            return self.fc(x)
        return -self.fc(x)


def nan_weights():
    m = nn.Sequential(nn.Linear(64, 10))
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    return m


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def deployment():
    return cimstack.compile(mlp(), CFG, example=X)


def onnx_with(op: str, tmp_path):
    import onnx
    from onnx import TensorProto, helper
    node = helper.make_node(op, ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
    path = tmp_path / f"{op}.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return str(path)


CASES = [
    # models
    ("unsupported op", lambda p: cimstack.compile(Unsupported(), CFG, example=X), CompileError, r"node 'sort' \(function sort\) cannot be mapped onto the chip"),
    ("data-dependent control flow", lambda p: cimstack.compile(DataDependent(), CFG, example=X), CompileError,
     r"torch\.fx cannot trace DataDependent"),
    ("NaN weights", lambda p: cimstack.compile(nan_weights(), CFG, example=X), CompileError, r"NaN or infinite weights"),
    ("missing model file", lambda p: cimstack.compile("no-such.onnx", CFG, example=X), CompileError,
     r"ONNX file 'no-such\.onnx' does not exist"),
    ("not a model", lambda p: cimstack.compile(42, CFG, example=X), CompileError, r"int"),
    ("no analog layer", lambda p: cimstack.compile(nn.Sequential(nn.ReLU()), CFG, example=X), CompileError,
     r"no layer that maps onto the arrays"),
    ("example of the wrong shape", lambda p: cimstack.compile(mlp(), CFG, example=torch.zeros(4, 63)), CompileError,
     r"example inputs of shape \(4, 63\)"),
    ("no example", lambda p: cimstack.compile(mlp(), CFG), CompileError, r"needs example inputs"),
    ("model too large", lambda p: cimstack.compile(nn.Sequential(nn.Linear(64, 4096)), CFG, example=X), PlacementError,
     r"does not fit"),
    ("ONNX op the compiler lacks", lambda p: cimstack.compile(onnx_with("Sin", p), CFG, example=X), CompileError, r"Sin"),
    ("ONNX garbage", lambda p: cimstack.compile(_write(p / "g.onnx", b"\x00garbage"), CFG, example=X), CompileError,
     r"cannot read ONNX file .*g\.onnx"),
    # configs
    ("field out of range", lambda p: ChipConfig.from_dict({"array": {"tiles": 0}}), ConfigError,
     r"array\.tiles = 0 is out of range: allowed 1\.\.48"),
    ("field of the wrong type", lambda p: ChipConfig.from_dict({"adc": {"bits": "8"}}), ConfigError,
     r"adc\.bits must be an integer"),
    ("NaN in a float field", lambda p: ChipConfig.from_dict({"device": {"g_max_us": float("nan")}}), ConfigError,
     r"device\.g_max_us must be a number"),
    ("unknown key", lambda p: ChipConfig.from_dict({"array": {"tile": 2}}), ConfigError, r"unknown key\(s\) tile in \[array\]"),
    ("unknown section", lambda p: ChipConfig.from_dict({"arrays": {}}), ConfigError, r"unknown config key\(s\) arrays"),
    ("fields that do not fit together", lambda p: ChipConfig.from_dict({"array": {"mac_lanes": 3}}), ConfigError,
     r"array\.mac_lanes = 3 must divide"),
    ("broken TOML", lambda p: ChipConfig.from_toml("[array\ntiles = 2", "chip.toml"), ConfigError, r"chip\.toml: not valid TOML"),
    ("missing config file", lambda p: cimstack.load(p / "none.toml"), ConfigError, r"none\.toml is neither a preset"),
    # tensors
    ("inputs of the wrong shape", lambda p: deployment().reference(torch.zeros(2, 65)), InputRangeError,
     r"shape \(2, 65\).*samples of shape \(64,\)"),
    ("NaN inputs", lambda p: deployment().reference(torch.full((2, 64), float("nan"))), InputRangeError, r"NaN"),
    ("complex inputs", lambda p: deployment().reference(torch.zeros(2, 64, dtype=torch.complex64)), InputRangeError,
     r"complex"),
    ("string inputs", lambda p: deployment().reference(np.array([["a"] * 64])), InputRangeError, r"numbers"),
    ("run before program", lambda p: deployment().run(X), ConfigError, r"has not been programmed"),
    ("tile VMM with the wrong width", lambda p: GoldenBackend(CFG).vmm(0, np.zeros((2, 63), dtype=np.int64)),
     InputRangeError, r"shape \(2, 63\), the last axis must be the 64 rows"),
    ("tile VMM inputs out of range", lambda p: GoldenBackend(CFG).vmm(0, np.full((2, 64), 1000)), InputRangeError,
     r"span \[1000, 1000\], outside \[-128, 127\]"),
    ("tile that does not exist", lambda p: GoldenBackend(CFG).vmm(7, np.zeros((2, 64), dtype=np.int64)),
     InputRangeError, r"tile 7 outside 0\.\.3"),
]


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("what, call, error, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_names_the_problem(what, call, error, message, tmp_path):
    with pytest.raises(error, match=message):
        call(tmp_path)
