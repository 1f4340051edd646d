"""Model import: PyTorch modules (torch.fx) and ONNX graphs into the CIM IR (:mod:`.ir`)."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from cimstack.compiler.fx import from_torch
from cimstack.compiler.ir import ANALOG_OPS, DIGITAL_OPS, Graph, Node, float_vmm
from cimstack.errors import CompileError

__all__ = ["import_model", "from_torch", "from_onnx", "Graph", "Node", "ANALOG_OPS", "DIGITAL_OPS", "float_vmm"]


def from_onnx(model) -> Graph:
    from cimstack.compiler.onnx import from_onnx as _from_onnx  # onnx is imported only when used
    return _from_onnx(model)


def import_model(model) -> Graph:
    """The CIM IR of a ``torch.nn.Module``, an ``onnx.ModelProto``, an ONNX file path or an
    existing :class:`Graph`."""
    if isinstance(model, Graph):
        return model
    if isinstance(model, nn.Module):
        return from_torch(model)
    if isinstance(model, (str, Path, bytes)) or type(model).__name__ == "ModelProto":
        return from_onnx(model)
    raise CompileError(f"cannot import a {type(model).__name__}: give a torch.nn.Module, an ONNX model or file")
