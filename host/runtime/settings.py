"""Per-layer hardware settings a deployment runs with, and their file format.

A :class:`Settings` is what tuning produces and what a deployment is saved with: for every
analog layer its ADC gain (integration time) and offset registers, input mode, input range
(input scaling) and number of weight copies. ``Settings.save`` writes JSON atomically (a
temporary file renamed over the old one, so a crash leaves the previous file whole) with the
hash of the chip config they were tuned for; :func:`cimstack.compile` takes them back with
``settings=`` and refuses a file made for another chip.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cimstack.chip.config import ChipConfig
from cimstack.errors import ConfigError
from cimstack.files import atomic_write

__all__ = ["LayerSetting", "Settings", "FORMAT"]

FORMAT = "cimstack-settings/1"


@dataclass(frozen=True)
class LayerSetting:
    """The tunable hardware parameters of one analog layer."""

    adc_gain: int
    adc_offset: int
    mode: str
    x_range: float
    copies: int = 1

    def check(self, cfg: ChipConfig, layer: str) -> None:
        """Raise :class:`ConfigError` naming the layer and field if the chip cannot run this."""
        half = 1 << (cfg.adc.bits - 1)
        for name, v, lo, hi in (("adc_gain", self.adc_gain, 1, 255), ("adc_offset", self.adc_offset, -half, half - 1),
                                ("copies", self.copies, 1, 1 << 16)):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"layer {layer}: {name} = {v!r} must be an integer in {lo}..{hi}")
        if self.mode not in cfg.datapath.modes:
            raise ConfigError(f"layer {layer}: input mode {self.mode!r} is not one of {', '.join(cfg.datapath.modes)}")
        if not (isinstance(self.x_range, (int, float)) and math.isfinite(self.x_range) and self.x_range > 0):
            raise ConfigError(f"layer {layer}: x_range = {self.x_range!r} must be a positive number")


@dataclass
class Settings:
    """Settings of every analog layer of one model on one chip config."""

    config_name: str
    config_hash: int
    layers: dict[str, LayerSetting]
    info: dict = field(default_factory=dict)     # how they were found: searcher, figures

    def check(self, cfg: ChipConfig) -> None:
        if self.config_hash != cfg.datapath.config_hash:
            raise ConfigError(f"these settings were made for chip config {self.config_name!r} "
                              f"(hash {self.config_hash:08x}), not {cfg.name!r} (hash {cfg.datapath.config_hash:08x})")
        for name, s in self.layers.items():
            s.check(cfg, name)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "config_name": self.config_name, "config_hash": f"{self.config_hash:08x}",
                "layers": {k: asdict(v) for k, v in self.layers.items()}, "info": self.info}

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> Settings:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(f"{source}: not a cimstack settings file (expected format {FORMAT!r})")
        try:
            layers = {}
            for name, v in data["layers"].items():
                unknown = set(v) - set(LayerSetting.__dataclass_fields__)
                if unknown:
                    raise ConfigError(f"{source}: layer {name}: unknown field(s) {', '.join(sorted(unknown))}")
                layers[name] = LayerSetting(**v)
            return cls(str(data["config_name"]), int(data["config_hash"], 16), layers, dict(data.get("info", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{source}: malformed settings file ({type(exc).__name__}: {exc})") from None

    def save(self, path: str | Path) -> None:
        """Write JSON atomically: the old file stays whole until the new one is complete."""
        atomic_write(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Settings:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"settings file {path} does not exist") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, str(path))
