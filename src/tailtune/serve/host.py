"""The classifiers a server hosts: task modules on one shared backbone, full models beside them."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..artefacts import read_classifier
from ..config import ClassifierConfig
from ..errors import ArtefactError, ConfigError, TailtuneError
from ..multitask import TaskSet, task_dirs


class ModelHost:
    """Every classifier under a directory, by task name (a subdirectory's name, or the directory's own).

    Task modules (frozen-backbone classifiers) share one backbone through a ``TaskSet``, so a batch
    may mix them; full models (every weight trained) are loaded on their own. ``predict`` gives
    probabilities per text, each over its task's labels. Not thread-safe by itself: the server runs
    every call (predictions, adds, removes) in one worker thread, in order.
    """

    def __init__(self, root: str | Path, device: str = "cpu", backbone: str | None = None,
                 precision: str = "fp32", early_exit: bool = False, compile: bool = False,
                 max_length: int | None = None) -> None:
        self.root, self.device, self.early_exit, self.compile = Path(root), device, early_exit, compile
        self.modules = TaskSet(backbone, device, precision, early_exit, compile, max_length)
        self.precision = self.modules.precision
        self.full: dict[str, Any] = {}
        self.info: dict[str, dict] = {}

    def load_all(self) -> list[str]:
        for name, path in task_dirs(self.root).items():
            self.add(name, path, warm=False)
        self.warm_seconds = self.warm_up()
        return sorted(self.info)

    def warm_up(self) -> float:
        """With ``compile``: predict one text and two texts for every task, so that compiling happens now (at
        start-up, or when a task is added) and not in the first requests; returns the seconds it took. A task that
        cannot take the warm-up texts (e.g. it needs a second text) compiles at its first request instead."""
        start = time.perf_counter()
        if self.compile:
            for name in sorted(self.info):
                for texts in (["warm up"], ["warm up", "warm up the compiled encoder, a second text"]):
                    try:  # a task trained on text pairs warms up on pairs
                        self.predict(texts, [name] * len(texts), texts if self.info[name]["text_pairs"] else None)
                    except TailtuneError:
                        break
        return time.perf_counter() - start

    def add(self, name: str, path: str | Path | None = None, warm: bool = True) -> dict:
        """Load a classifier as task ``name`` (default: the subdirectory of that name); with ``compile``, then warm
        every task up (a task whose weights live inside the encoder, LoRA, makes every graph compile again)."""
        from ..api import TailtuneClassifier
        if name in self.info:
            raise ConfigError(f"task {name!r} is already served; remove it first")
        path = Path(path) if path is not None else self.root / name
        meta = read_classifier(path)
        config = ClassifierConfig.from_dict(meta["config"])
        shares = meta["artefact"] == "module" and config.entry("trains").trait("shares_backbone")
        if shares:
            model = self.modules.add(path, name)
        else:
            clf = TailtuneClassifier.load(path, self.device).set_precision(self.precision).set_max_length(
                self.modules.max_length)
            if self.early_exit and hasattr(clf.model_.head, "exits"):
                clf.set_early_exit()
            elif self.compile:
                clf.set_compile()
            self.full[name] = clf
            model = clf.model_
        self.info[name] = {"name": name, "labels": list(model.labels), "preset": meta.get("preset"),
                           "backbone": meta["backbone"]["name"], "artefact": meta["artefact"],
                           "shares_backbone": shares, "max_length": model.input_format.max_length,
                           "text_pairs": bool(meta.get("text_pairs")), "path": str(path)}
        if warm:
            self.warm_up()
        return self.info[name]

    def remove(self, name: str) -> None:
        if name not in self.info:
            raise ConfigError(f"unknown task {name!r}; served: {', '.join(sorted(self.info)) or 'none'}")
        if name in self.full:
            del self.full[name]
        else:
            self.modules.remove(name)
        del self.info[name]

    def labels(self, name: str) -> list[str]:
        return self.info[name]["labels"]

    @torch.no_grad()
    def predict(self, texts: list[str], tasks: list[str], texts_b: list[str] | None = None,
                batch_size: int = 64) -> list[torch.Tensor]:
        """Probabilities per text over its task's labels; task modules share batches."""
        out: list[torch.Tensor | None] = [None] * len(texts)
        shared = [i for i, t in enumerate(tasks) if t not in self.full]
        if shared:
            logits = self.modules.logits([texts[i] for i in shared], [tasks[i] for i in shared],
                                         [texts_b[i] for i in shared] if texts_b else None, batch_size)
            for i, scores in zip(shared, logits):
                out[i] = scores.softmax(-1)
        for name, clf in self.full.items():
            rows = [i for i, t in enumerate(tasks) if t == name]
            if rows:
                probs = clf.predict_proba([texts[i] for i in rows], [texts_b[i] for i in rows] if texts_b else None)
                for i, p in zip(rows, probs):
                    out[i] = torch.from_numpy(p)
        missing = sorted({tasks[i] for i, p in enumerate(out) if p is None})
        if missing:
            raise ArtefactError(f"no classifier for task(s) {missing}")
        return out  # type: ignore[return-value]
