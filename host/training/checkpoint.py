"""Model files the command line passes between steps: ``cimstack train`` writes one,
``compile``/``place``/``program``/``eval``/``tune`` read it.

Three kinds of model file are accepted by :func:`load_model`:

* a **cimstack checkpoint** (``.pt``, written by :func:`save_model`): a reference architecture
  from :mod:`cimstack.zoo.models`, its width, its ``state_dict`` and the data set
  it was trained on; a hardware-aware trained model also carries the chip config its analog
  layers were trained for, so its learned input ranges come back. Loaded with
  ``torch.load(weights_only=True)``: no code in the file runs;
* an **ONNX** file (``.onnx``), imported by :mod:`cimstack.compiler.onnx`;
* a **whole pickled** ``torch.nn.Module`` (``torch.save(model)``): loading unpickles code, so
  it is refused unless the caller passes ``trust_pickle=True`` (``--trust-pickle``).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cimstack.chip.config import ChipConfig
from cimstack.errors import CompileError, ConfigError
from cimstack.files import atomic_write
from cimstack.training.analog import convert
from cimstack.zoo.models import MODELS, build

__all__ = ["FORMAT", "LoadedModel", "save_model", "load_model"]

FORMAT = "cimstack-model/1"


@dataclass
class LoadedModel:
    """A model ready for :func:`cimstack.compile`, and where it came from."""

    model: object                       # a torch.nn.Module or an onnx.ModelProto
    name: str                           # file stem: names reports and output files
    dataset: str | None = None          # the data-set spec it was trained on (cimstack.zoo.datasets.load)
    info: dict = field(default_factory=dict)


def save_model(path: str | Path, model: nn.Module, arch: str, dataset: str, *, width: int | None = None,
               hwa_config: ChipConfig | None = None, info: dict | None = None) -> Path:
    """Write a checkpoint of ``model``, built by ``cimstack.zoo.models.build(arch, width)``, atomically."""
    if arch not in MODELS:
        raise ConfigError(f"architecture {arch!r} is not one of {', '.join(MODELS)}")
    state = {"format": FORMAT, "arch": arch, "width": width, "dataset": dataset,
             "state_dict": model.state_dict(), "hwa_config": hwa_config.to_toml() if hwa_config else None,
             "info": dict(info or {})}
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write(path, buf.getvalue())


def load_model(path: str | Path, *, trust_pickle: bool = False) -> LoadedModel:
    """Read a checkpoint, an ONNX file or (with ``trust_pickle``) a pickled module."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist")
    if path.suffix.lower() == ".onnx":
        import onnx  # heavy and only for .onnx files: imported here
        try:
            proto = onnx.load(str(path))
        except Exception as exc:                 # onnx raises DecodeError and friends
            raise CompileError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
        return LoadedModel(proto, path.stem)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:                     # pickle/zip errors of every kind
        if not trust_pickle:
            raise CompileError(
                f"{path}: not a cimstack checkpoint or ONNX file ({type(exc).__name__}). "
                f"If it is a whole torch.nn.Module saved with torch.save(model) and you trust its source, "
                f"pass --trust-pickle (unpickling runs code from the file)") from None
        try:
            module = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise CompileError(f"{path}: cannot be read as a torch file ({type(exc2).__name__}: {exc2})") from None
        if not isinstance(module, nn.Module):
            raise CompileError(f"{path}: holds a {type(module).__name__}, not a torch.nn.Module") from None
        return LoadedModel(module.eval(), path.stem)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CompileError(f"{path}: not a cimstack checkpoint (format {found!r}, expected {FORMAT!r}); "
                           f"a bare state_dict has no architecture: save it with cimstack.training.checkpoint.save_model")
    try:
        model = build(state["arch"], state["width"])
        if state["hwa_config"]:
            convert(model, ChipConfig.from_toml(state["hwa_config"], source=f"{path} (hwa_config)"))
        model.load_state_dict(state["state_dict"])
    except (KeyError, TypeError, RuntimeError, ConfigError) as exc:
        raise CompileError(f"{path}: damaged checkpoint ({type(exc).__name__}: {exc})") from None
    return LoadedModel(model.eval(), path.stem, state["dataset"], dict(state["info"]))
