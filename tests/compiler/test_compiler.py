"""The torch.fx importer: the CIM IR computes what the PyTorch module computes, BatchNorm is
folded, and what cannot be mapped fails naming the node and the op."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cimstack.compiler import Graph, Node, from_torch, import_model
from cimstack.errors import CompileError


def _bn(n, dims=2):
    bn = nn.BatchNorm2d(n) if dims == 2 else nn.BatchNorm1d(n)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    return bn


class Everything(nn.Module):
    """Conv + BN (folded), residual add, pooling, GRU/LSTM outputs and h_n, Conv1d, cat."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 4, 3, padding=1), _bn(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), _bn(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 10)
        self.gru = nn.GRU(8, 6, batch_first=True)
        self.lstm = nn.LSTM(8, 5, batch_first=True)
        self.c3 = nn.Conv1d(8, 3, 3, stride=2)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(y + self.b2(self.c2(y)))
        y = F.max_pool2d(y, 2)
        y = self.pool(y).flatten(1)
        seq = x.view(x.size(0), 8, 8)
        o, h = self.gru(seq)
        o2, (hn, cn) = self.lstm(seq)
        z = self.act(self.c3(seq)).mean(2)
        return torch.cat([self.fc(y), o[:, -1], h[-1], hn.squeeze(0), o2[:, -1], z], 1)


def test_fx_import_matches_pytorch():
    torch.manual_seed(0)
    m = Everything().eval()
    g = from_torch(m)
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    ref = m.double()(x)
    out = g.evaluate(x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    ops = [n.op for n in g.nodes]
    assert "affine" not in ops                                 # both BatchNorms folded
    assert sorted(n.op for n in g.analog_nodes()) == ["conv", "conv", "conv", "gru", "linear", "lstm"]
    gru = g.node("gru")
    assert gru.shape == (8 + 6, 4 * 6)                         # [x, h] rows; r, z, n_x, n_h columns


def test_batchnorm_kept_when_layer_has_two_readers():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(4, 4), _bn(4, dims=1)

        def forward(self, x):
            y = self.fc(x)
            return self.bn(y) + y
    m = Two().eval()
    g = from_torch(m)
    assert "affine" in [n.op for n in g.nodes]
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(g.evaluate(x), m.double()(x))


@pytest.mark.parametrize("module, words", [
    (nn.Conv2d(2, 4, 3, groups=2), ["groups=2"]),
    (nn.LSTM(4, 4, num_layers=2, batch_first=True), ["num_layers=2"]),
    (nn.GRU(4, 4, bidirectional=True, batch_first=True), ["bidirectional=True"]),
    (nn.MaxPool2d(2, ceil_mode=True), ["ceil_mode"]),
    (nn.AdaptiveAvgPool2d(2), ["output_size=2"]),
    (nn.Embedding(10, 4), ["Embedding"]),
    (nn.MultiheadAttention(4, 2), ["MultiheadAttention"]),
])
def test_unsupported_module_names_node_and_op(module, words):
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = module

        def forward(self, x):
            return self.layer(x)
    with pytest.raises(CompileError) as exc:
        from_torch(Wrap())
    msg = str(exc.value)
    assert "'layer'" in msg
    for w in words:
        assert w in msg


def test_unsupported_functions_and_methods():
    class Matmul(nn.Module):
        def forward(self, x):
            return torch.matmul(x, x)
    with pytest.raises(CompileError, match="matmul"):
        from_torch(Matmul())

    class Param(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return F.linear(x, self.w)
    with pytest.raises(CompileError, match="raw parameter"):
        from_torch(Param())

    class CellState(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 4, batch_first=True)

        def forward(self, x):
            _, (h, c) = self.lstm(x)
            return c[0]
    with pytest.raises(CompileError, match="c_n"):
        from_torch(CellState())

    class BatchIndex(nn.Module):
        def forward(self, x):
            return x[0]
    with pytest.raises(CompileError, match="batch dimension"):
        from_torch(BatchIndex())

    class Untraceable(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x
    with pytest.raises(CompileError, match="cannot trace"):
        from_torch(Untraceable())


def test_graph_validation_and_import_model():
    with pytest.raises(CompileError, match="unknown IR op"):
        Node("a", "einsum", ("input",))
    with pytest.raises(CompileError, match="reads b"):
        Graph([Node("a", "relu", ("b",))], output="a")
    with pytest.raises(CompileError, match="used twice"):
        Graph([Node("a", "relu", ("input",)), Node("a", "relu", ("input",))], output="a")
    with pytest.raises(CompileError, match="cannot import"):
        import_model(np.zeros(3))
    g = Graph([Node("fc", "linear", ("input",), {"weight": np.eye(3), "bias": None})], output="fc")
    assert import_model(g) is g
    with pytest.raises(CompileError, match="digital"):
        Node("r", "relu", ("input",)).matrix()
