"""Experiment tracking through Accelerate's trackers (TensorBoard, MLflow, W&B, Trackio, ...).

Nothing is tracked unless a run asks (``TrainConfig.track``). A tracked run logs its settings once,
the loss and learning rate of every step, the dev metrics of every evaluation, and at the end its
parameter counts, wall time, peak memory and best dev score. Only the main process of a launched
run tracks.
"""
from __future__ import annotations

import importlib.util
import json
from typing import Any, Mapping

from .errors import ConfigError

# tracker -> the package it needs (the accelerate names)
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio",
            "comet_ml": "comet_ml", "aim": "aim", "clearml": "clearml", "dvclive": "dvclive"}


def check_tracker(name: str | None) -> None:
    """A tracker that is known and installed, or a clear error before any work."""
    if name is None:
        return
    if name not in TRACKERS:
        raise ConfigError(f"track={name!r} is not a tracker; use one of {', '.join(TRACKERS)}")
    if importlib.util.find_spec(TRACKERS[name]) is None:
        raise ConfigError(f"track={name!r} needs the {TRACKERS[name]} package: pip install {TRACKERS[name]}"
                          + (" (or pip install 'tailtune[track]')" if name == "tensorboard" else ""))


def _flat(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Settings as the scalar key/values trackers accept (nested keys joined with '/')."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}/"))
        elif isinstance(value, (bool, int, float, str)):
            out[prefix + key] = value
        else:
            out[prefix + key] = json.dumps(value, default=str)
    return out


class Tracker:
    """One tracked run."""

    def __init__(self, name: str, directory: str, run_name: str | None, settings: Mapping[str, Any],
                 cpu: bool) -> None:
        from accelerate import Accelerator
        check_tracker(name)
        self.accelerator = Accelerator(log_with=name, project_dir=directory, cpu=cpu)
        init = {"tensorboard": {}, "wandb": {"name": run_name}, "mlflow": {"run_name": run_name}}.get(name, {})
        self.accelerator.init_trackers(run_name or "tailtune", config=_flat(settings),
                                       init_kwargs={name: {k: v for k, v in init.items() if v}})

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.accelerator.log(dict(values), step=step)

    def end(self, summary: Mapping[str, float | None], step: int) -> None:
        self.log({k: v for k, v in summary.items() if v is not None}, step)
        self.accelerator.end_training()
