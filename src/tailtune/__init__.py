"""tailtune: tune BERT-family encoders into few-shot and long-tailed text classifiers.

The public names load on first use (PEP 562), so ``import tailtune.deploy`` (ONNX Runtime
inference) works on a machine without PyTorch.
"""
from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

_PUBLIC = {
    "TailtuneClassifier": "api", "save_classifier": "artefacts",
    "PRESETS": "config", "ClassifierConfig": "config", "config_from_preset": "config",
    "preset_train_config": "config",
    "TextDataset": "data", "class_stats": "data", "from_hf": "data", "head_tail_split": "data", "k_shot": "data",
    "read_dataset": "data", "stratified_split": "data",
    "ArtefactError": "errors", "ConfigError": "errors", "DataError": "errors", "TailtuneError": "errors",
    "TrainingError": "errors",
    "Template": "inputs", "Verbalizer": "inputs", "TrainConfig": "loop", "long_tail_report": "metrics",
    "Classifier": "model", "build_classifier": "model", "train": "training",
    # the registries, with the built-in entries registered (through config)
    "AXES": "config", "INPUT_FORMATS": "registry", "READOUTS": "registry", "HEADS": "registry",
    "TRAINS": "registry", "OBJECTIVES": "registry", "CALIBRATIONS": "registry", "STAGES": "registry",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        if _PUBLIC[name] == "registry":
            importlib.import_module(".config", __name__)  # registers the built-in entries
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError:
        raise AttributeError(f"module 'tailtune' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(__all__)
