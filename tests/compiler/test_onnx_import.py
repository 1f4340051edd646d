"""ONNX import (cimstack.compiler.onnx): exported PyTorch models evaluate like the originals,
agree with the torch.fx importer, and unmappable graphs fail with a CompileError that names
the culprit."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from cimstack.compiler import from_onnx, from_torch
from cimstack.errors import CompileError


def export(model: nn.Module, x: torch.Tensor, path, **kw) -> onnx.ModelProto:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"], **kw)
    return onnx.load(str(path))


def check_matches(model: nn.Module, x: torch.Tensor, graph) -> None:
    """The IR evaluated in float64 equals the model run in float64 (the same float32 weights)."""
    ref = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        want = ref(x.double())
        got = graph.evaluate(x.double())
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def check_same_matrices(g_onnx, g_torch, rtol: float = 0.0) -> None:
    a, b = g_onnx.analog_nodes(), g_torch.analog_nodes()
    assert [n.op for n in a] == [n.op for n in b]
    for m, n in zip(a, b):
        np.testing.assert_allclose(m.matrix(), n.matrix(), rtol=rtol, atol=1e-12)
        np.testing.assert_allclose(m.bias(), n.bias(), rtol=rtol, atol=1e-12)


def randomise_bn(bn: nn.modules.batchnorm._BatchNorm) -> None:
    n = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(torch.rand(n) + 0.5)
        bn.bias.copy_(torch.randn(n))
        bn.running_mean.copy_(torch.randn(n))
        bn.running_var.copy_(torch.rand(n) + 0.5)


# -- models -----------------------------------------------------------------------------------

class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.features(x))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        y = torch.relu(self.conv2(y) + x)
        return torch.log_softmax(self.fc(y.view(y.size(0), -1)), dim=1)


class Seq(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn = cell(5, 7, batch_first=True)
        self.fc = nn.Linear(7, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class SeqFirstHidden(nn.Module):
    """Sequence-first input and h_n: no Transpose, the Y_h output of the ONNX node."""

    def __init__(self, cell):
        super().__init__()
        self.rnn = cell(5, 6)
        self.fc = nn.Linear(6, 2)
        self.lstm = cell is nn.LSTM

    def forward(self, x):
        _, h = self.rnn(x)
        if self.lstm:
            h = h[0]
        return self.fc(h[-1])


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 5, 3, padding=2, dilation=2)
        self.bn = nn.BatchNorm1d(5)
        self.pool = nn.AvgPool1d(2, padding=1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        y = self.pool(nn.functional.silu(self.bn(self.conv(x))))
        return torch.softmax(self.fc(torch.tanh(y.mean(-1))), dim=-1)


class Tokens(nn.Module):
    """A Linear on a 3-D input is exported as MatMul + Add."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.act = nn.LeakyReLU(0.2)
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        return self.b(self.act(self.a(x))).mean(1)


# -- round trips ------------------------------------------------------------------------------

def test_mlp(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 4), nn.Tanh())
    x = torch.randn(3, 6)
    export(model, x, tmp_path / "mlp.onnx")
    graph = from_onnx(tmp_path / "mlp.onnx")
    assert [n.op for n in graph.nodes] == ["linear", "relu", "linear", "sigmoid", "linear", "tanh"]
    assert graph.output == "y" and graph.input == "x"
    assert "Gemm" in graph.nodes[0].origin
    check_matches(model, x, graph)
    check_same_matrices(graph, from_torch(model))
    # the same model as a ModelProto and as bytes
    proto = onnx.load(str(tmp_path / "mlp.onnx"))
    for source in (proto, proto.SerializeToString(), str(tmp_path / "mlp.onnx")):
        check_same_matrices(from_onnx(source), graph)


def test_cnn_with_batchnorm_folded(tmp_path):
    torch.manual_seed(1)
    model = CNN()
    randomise_bn(model.features[1])
    randomise_bn(model.features[5])
    x = torch.randn(2, 2, 8, 8)
    # PRESERVE keeps the BatchNormalization nodes (EVAL would fuse them into the Conv in float32)
    proto = export(model, x, tmp_path / "cnn.onnx", training=torch.onnx.TrainingMode.PRESERVE)
    assert sum(n.op_type == "BatchNormalization" for n in proto.graph.node) == 2
    graph = from_onnx(tmp_path / "cnn.onnx")
    assert not any(n.op == "affine" for n in graph.nodes)
    assert [n.op for n in graph.analog_nodes()] == ["conv", "conv", "linear"]
    assert "BatchNormalization" in graph.analog_nodes()[0].origin
    check_matches(model, x, graph)
    # ONNX stores epsilon as float32: 1e-5 becomes 9.9999997e-06, hence the relative tolerance
    check_same_matrices(graph, from_torch(model), rtol=1e-9)


@pytest.mark.parametrize("dynamic", [False, True])
def test_residual_add(tmp_path, dynamic):
    """``y.view(y.size(0), -1)``: a constant [2, -1] for a fixed batch, Shape -> Gather -> Concat
    for a dynamic one; both keep the batch."""
    torch.manual_seed(2)
    model = Residual()
    x = torch.randn(2, 3, 6, 6)
    export(model, x, tmp_path / "res.onnx", **({"dynamic_axes": {"x": {0: "n"}}} if dynamic else {}))
    graph = from_onnx(tmp_path / "res.onnx")
    adds = [n for n in graph.nodes if n.op == "add"]
    assert len(adds) == 1 and graph.input in adds[0].inputs
    assert any(n.op == "flatten" for n in graph.nodes)
    check_matches(model, x, graph)
    check_matches(model, torch.randn(3, 3, 6, 6), graph)
    check_same_matrices(graph, from_torch(model))


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_rnn_batch_first(tmp_path, cell):
    torch.manual_seed(3)
    model = Seq(cell)
    x = torch.randn(2, 4, 5)
    proto = export(model, x, tmp_path / "rnn.onnx")
    assert any(n.op_type == "Transpose" for n in proto.graph.node)
    graph = from_onnx(proto)
    rnn = graph.analog_nodes()[0]
    assert rnn.op == cell.__name__.lower() and rnn.attrs["batch_first"] is True
    assert [n.op for n in graph.nodes] == [rnn.op, "select", "linear"]
    check_matches(model, x, graph)
    check_same_matrices(graph, from_torch(model))


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_rnn_sequence_first_h_n_dynamic_batch(tmp_path, cell):
    torch.manual_seed(4)
    model = SeqFirstHidden(cell)
    x = torch.randn(5, 2, 5)
    export(model, x, tmp_path / "rnn.onnx", dynamic_axes={"x": {1: "batch"}})
    graph = from_onnx(tmp_path / "rnn.onnx")
    assert graph.analog_nodes()[0].attrs["batch_first"] is False
    check_matches(model, x, graph)
    check_matches(model, torch.randn(5, 3, 5), graph)
    check_same_matrices(graph, from_torch(model))


def test_conv1d(tmp_path):
    torch.manual_seed(5)
    model = Conv1dNet()
    randomise_bn(model.bn)
    x = torch.randn(2, 3, 9)
    export(model, x, tmp_path / "c1.onnx")
    graph = from_onnx(tmp_path / "c1.onnx")
    conv = graph.analog_nodes()[0]
    assert conv.op == "conv" and conv.attrs["padding"] == (2,) and conv.attrs["dilation"] == (2,)
    assert {"silu", "avgpool", "mean", "softmax"} <= {n.op for n in graph.nodes}
    check_matches(model, x, graph)


class Assorted(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(3, 2, 1)
        self.gelu = nn.GELU(approximate="tanh")
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y = torch.cat([self.gelu(self.c1(x)), nn.functional.hardtanh(self.c2(x), -0.5, 0.5)], 1)
        y = nn.functional.adaptive_avg_pool2d(nn.functional.avg_pool2d(y, 2), 1).squeeze(-1).squeeze(-1)
        return torch.softmax(nn.functional.relu6(self.fc(nn.functional.dropout(y, 0.3, False))), -1)


def test_assorted_digital_ops(tmp_path):
    torch.manual_seed(7)
    model = Assorted()
    x = torch.randn(2, 3, 6, 6)
    export(model, x, tmp_path / "a.onnx", opset_version=20)      # Gelu is an ONNX op from opset 20
    graph = from_onnx(tmp_path / "a.onnx")
    assert {"gelu", "cat", "hardtanh", "avgpool", "global_avgpool", "select", "softmax"} <= {n.op for n in graph.nodes}
    check_matches(model, x, graph)


def test_matmul_add_bias_is_fused(tmp_path):
    torch.manual_seed(6)
    model = Tokens()
    x = torch.randn(2, 3, 4)
    proto = export(model, x, tmp_path / "tok.onnx")
    assert any(n.op_type == "MatMul" for n in proto.graph.node)
    graph = from_onnx(proto)
    assert [n.op for n in graph.nodes] == ["linear", "leaky_relu", "linear", "mean"]
    check_matches(model, x, graph)
    check_same_matrices(graph, from_torch(model))


# -- hand-built graphs ------------------------------------------------------------------------

def _array(v) -> np.ndarray:
    a = np.asarray(v)
    return a if a.dtype.kind in "iu" else a.astype(np.float32)


def make(nodes, x_shape, y_shape, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))],
        [numpy_helper.from_array(_array(v), name) for name, v in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def conv_model(**attrs) -> onnx.ModelProto:
    w = np.random.default_rng(0).normal(size=(4, 2 // attrs.get("group", 1), 3, 3))
    return make([helper.make_node("Conv", ["x", "w"], ["y"], name="Conv_3", kernel_shape=[3, 3], **attrs)],
                (1, 2, 6, 6), (1, 4, None, None), [("w", w)])


def test_hand_built_gemm_alpha_beta_trans():
    rng = np.random.default_rng(1)
    b, c = rng.normal(size=(3, 4)), rng.normal(size=(4,))
    model = make([helper.make_node("Gemm", ["x", "b", "c"], ["h"], alpha=0.5, beta=2.0),
                  helper.make_node("Clip", ["h", "lo", "hi"], ["y"])],
                 (2, 3), (2, 4), [("b", b), ("c", c), ("lo", -0.3), ("hi", 0.4)])
    graph = from_onnx(model)
    x = torch.randn(2, 3, dtype=torch.float64)
    want = (x @ torch.tensor(b.astype(np.float32), dtype=torch.float64) * 0.5
            + 2 * torch.tensor(c.astype(np.float32), dtype=torch.float64)).clamp(-0.3, 0.4)
    assert [n.op for n in graph.nodes] == ["linear", "hardtanh"]
    torch.testing.assert_close(graph.evaluate(x), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("model, words", [
    (make([helper.make_node("LpNormalization", ["x"], ["y"], name="norm")], (2, 3), (2, 3)),
     ["'norm'", "LpNormalization", "supported:"]),
    (make([helper.make_node("Einsum", ["x"], ["y"], equation="ij->ji")], (2, 3), (3, 2)),
     ["'Einsum_0'", "Einsum"]),
    (conv_model(group=2), ["'Conv_3'", "Conv with group=2"]),
    (conv_model(pads=[1, 1, 0, 0]), ["'Conv_3'", "asymmetric pads"]),
    (conv_model(auto_pad="SAME_UPPER"), ["'Conv_3'", "auto_pad=SAME_UPPER"]),
    (make([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["x", "r"], ["y"], name="mm")],
          (2, 4, 4), (2, 4, 4)), ["'mm'", "MatMul of two tensors"]),
    (make([helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], pads=[1, 1, 1, 1])],
          (1, 1, 4, 4), (1, 1, 3, 3)), ["'pool'", "count_include_pad=0"]),
    (make([helper.make_node("GRU", ["x", "w", "r"], ["", "y"], name="gru", hidden_size=2)],
          (3, 1, 2), (1, 1, 2), [("w", np.zeros((1, 6, 2))), ("r", np.zeros((1, 6, 2)))]),
     ["'gru'", "linear_before_reset=0"]),
    (make([helper.make_node("LSTM", ["x", "w", "r"], ["", "", "y"], name="lstm", hidden_size=2)],
          (3, 1, 2), (1, 1, 2), [("w", np.zeros((1, 8, 2))), ("r", np.zeros((1, 8, 2)))]),
     ["'lstm'", "cell state Y_c"]),
    (make([helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])], (2, 3), (3, 2)),
     ["graph output 'y'", "Transpose"]),
    (make([helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")], (2, 6), (4, 3),
          [("s", np.array([4, 3]))]), ["'rs'", "Reshape to [4, 3]"]),
])
def test_unmappable_graphs_name_the_node(model, words):
    with pytest.raises(CompileError) as err:
        from_onnx(model)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_two_inputs_are_refused():
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "ab"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(CompileError, match="2 graph inputs"):
        from_onnx(helper.make_model(graph))


def test_missing_and_corrupt_files(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(CompileError, match="nope.onnx"):
        from_onnx(missing)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(np.random.default_rng(7).bytes(4096))
    with pytest.raises(CompileError, match="corrupt.onnx"):
        from_onnx(str(corrupt))
    with pytest.raises(CompileError):
        from_onnx(b"\x08\x07\xff\xff garbage")
    with pytest.raises(CompileError, match="ModelProto"):
        from_onnx(42)
