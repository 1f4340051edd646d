"""Automatic tuning of a deployment's hardware parameters (:mod:`.tuner`): per-layer ADC gain
and offset, input mode, input scaling and weight copies, searched by a genetic algorithm or
coordinate search (:mod:`.search`), first on the emulator, then on the chip; the result is a
:class:`Settings` that is saved with the deployment (:mod:`.settings`)."""
from cimstack.runtime.settings import LayerSetting, Settings
from cimstack.tuning.search import SEARCHERS, SearchResult, coordinate, genetic
from cimstack.tuning.tuner import LayerReport, LayerScore, Tuner, TuningReport

__all__ = ["Tuner", "TuningReport", "LayerReport", "LayerScore", "LayerSetting", "Settings", "genetic",
           "coordinate", "SEARCHERS", "SearchResult"]
