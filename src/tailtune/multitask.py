"""Several task modules on one backbone instance; batches may mix tasks.

Prediction (``logits``, ``predict``) is safe from many threads at once: routing state lives per
call. ``add`` and ``remove`` change the set of tasks and must not run while predictions do.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch

from .artefacts import read_classifier
from .backbone import Backbone, check_max_length, check_prediction_length, load_backbone
from .config import ClassifierConfig
from .device import autocast
from .errors import ArtefactError, ConfigError
from .batch import collate
from .inputs import Encoded
from .text import expand_views
from .model import Classifier
from .tuning.routing import Route, TaskRouter


def task_dirs(path: str | Path) -> dict[str, Path]:
    """``{task: directory}``: ``path`` itself when it is a saved classifier, else its
    subdirectories that are (the subdirectory name is the task name)."""
    path = Path(path)
    if (path / "tailtune.json").is_file():
        return {path.name.replace(".", "_") or "default": path}
    found = {p.name: p for p in sorted(path.iterdir()) if (p / "tailtune.json").is_file()} if path.is_dir() else {}
    if not found:
        raise ArtefactError(f"{path} is neither a saved tailtune classifier nor a directory of them "
                            f"(no tailtune.json found)")
    return found


class TaskSet:
    """Task modules (adapters, LoRA, prefixes, soft prompts, frozen-backbone heads) sharing
    one encoder in memory. ``predict`` takes a task name per text; one batch may mix tasks,
    and each row passes only through its own task's modules."""

    def __init__(self, backbone: str | Backbone | None = None, device: str = "cpu", precision: str = "fp32",
                 early_exit: bool = False, compile: bool = False, max_length: int | None = None) -> None:
        from .device import resolve_precision
        self.device = torch.device(device)
        self.early_exit = early_exit  # early-exit tasks leave at their saved exit rule, in mixed batches too
        self.backbone = backbone
        self.tasks: dict[str, Classifier] = {}
        self.precision = resolve_precision(precision, self.device)  # fp32, bf16 or int8
        self.compile = compile  # the shared encoder through torch.compile (batches with early-exit tasks: eager)
        self.max_length = max_length  # every task reads up to this many tokens of a text (None: its training length)
        if max_length is not None:
            check_prediction_length(max_length)
        if compile:
            from .device import check_compiler
            check_compiler(self.device)  # before any task is loaded

    def add(self, directory: str | Path, name: str | None = None) -> Classifier:
        directory = Path(directory)
        meta = read_classifier(directory)
        name = name or directory.name
        config = ClassifierConfig.from_dict(meta["config"])
        if meta["artefact"] != "module" or not config.entry("trains").trait("shares_backbone"):
            what = "every weight" if meta["artefact"] == "full" else "part of the backbone"
            raise ConfigError(f"{directory} trained {what} (trains={config.trains!r}): it changes the backbone itself, "
                              f"so it cannot share one. Load it on its own (TailtuneClassifier.load).")
        if name in self.tasks:
            raise ConfigError(f"task {name!r} is already loaded; give this one another name")
        if self.precision == "int8" and config.entry("trains").trait("inside_encoder"):
            raise ConfigError(f"{directory} (trains={config.trains!r}) puts its parameters inside the encoder, which "
                              f"int8 quantisation replaces; serve it in fp32 or bf16")
        if not isinstance(self.backbone, Backbone):
            self.backbone = load_backbone(self.backbone or meta["backbone"]["name"])
            self.backbone.encoder.to(self.device).eval()
        if self.max_length is not None:  # before the task's modules reach the shared encoder
            check_max_length(self.max_length, self.backbone.encoder, self.backbone.tokenizer, self.backbone.name)
        model = Classifier.load(directory, self.device, backbone=self.backbone, task=name)
        if self.max_length is not None:
            model.set_max_length(self.max_length)
        if self.precision == "int8":  # the shared encoder once, then each task's own layers
            from .device import quantize_int8
            if not getattr(self.backbone, "_int8", False):
                quantize_int8(self.backbone.encoder)
                self.backbone._int8 = True
            quantize_int8(model.head)
            quantize_int8(model.tuning)
        router = TaskRouter.of(self.backbone.encoder)
        if self.compile and router.compiled is None:
            router.compile()
        self.tasks[name] = model
        return model

    def remove(self, name: str) -> None:
        self._check([name])
        self.tasks.pop(name)
        TaskRouter.of(self.backbone.encoder).remove(name)

    def _check(self, tasks: list[str]) -> None:
        unknown = sorted(set(tasks) - set(self.tasks))
        if unknown:
            raise ConfigError(f"unknown task(s) {unknown}; loaded: {sorted(self.tasks)}")

    @torch.no_grad()
    def logits(self, texts: list[str], tasks: list[str], texts_b: list[str] | None = None,
               batch_size: int = 64, bf16: bool | None = None) -> list[torch.Tensor]:
        """Calibrated class scores per text, each over its own task's labels (``bf16``: the set's precision)."""
        self._check(tasks)
        paired = sorted({t for t in tasks if (getattr(self.tasks[t], "saved_metadata", None) or {}).get("text_pairs")})
        if paired and texts_b is None:
            warnings.warn(f"task(s) {', '.join(paired)} were trained on pairs of texts, but these texts come without "
                          f"a second text (texts_b), so each is classified alone")
        bf16 = self.precision == "bf16" if bf16 is None else bf16
        encoded: list[Encoded | None] = [None] * len(texts)
        for name, model in self.tasks.items():
            idx = [i for i, t in enumerate(tasks) if t == name]
            if idx:
                enc = model.encode([texts[i] for i in idx], [texts_b[i] for i in idx] if texts_b else None)
                for i, e in zip(idx, enc):
                    encoded[i] = e
        rows, owner = expand_views(encoded)  # demonstration sets: every view a row, scores averaged
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
        sums: list[torch.Tensor | None] = [None] * len(texts)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            for i, scores in zip(idx, self._forward([tasks[owner[i]] for i in idx], [rows[i] for i in idx], bf16)):
                o = owner[i]
                sums[o] = scores if sums[o] is None else sums[o] + scores
        return [total / (1 + len(encoded[i].views or [])) for i, total in enumerate(sums)]

    def _forward(self, tasks: list[str], encoded: list[Encoded], bf16: bool) -> list[torch.Tensor]:
        """One encoder pass over a batch that may mix tasks."""
        pad = self.backbone.tokenizer.pad_token_id
        batch = collate([dataclasses.replace(e, soft_positions=None) for e in encoded], pad, self.device)
        routes = []
        for name in dict.fromkeys(tasks):
            rows = [i for i, t in enumerate(tasks) if t == name]
            soft = [encoded[i].soft_positions for i in rows]
            routes.append(Route(name, torch.tensor(rows, device=self.device),
                                torch.tensor(soft, device=self.device) if soft[0] else None))
        if self.early_exit and any(hasattr(self.tasks[r.task].head, "exits") for r in routes):
            from .early_exit import exit_group, exit_pass
            groups = [exit_group(self.tasks[r.task], r.rows, r.soft_positions) for r in routes]
            return exit_pass(self.backbone.encoder, TaskRouter.of(self.backbone.encoder), batch, groups, bf16)[0]
        all_layers = any(self.tasks[r.task].scores_every_layer for r in routes)
        with autocast(self.device, bf16):
            hidden = TaskRouter.of(self.backbone.encoder).encode(
                routes, batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), all_layers)
            out: list[torch.Tensor | None] = [None] * len(tasks)
            for r in routes:
                model = self.tasks[r.task]
                h = model.scoring_view(hidden[r.rows], all_layers)
                logits = model.scores(h, batch["attention_mask"][r.rows], batch["position"][r.rows])
                for i, scores in zip(r.rows.tolist(), model.calibrate(logits.float()).cpu()):
                    out[i] = scores
        return out

    def predict(self, texts: list[str], tasks: list[str] | str, texts_b: list[str] | None = None,
                batch_size: int = 64, bf16: bool | None = None) -> list[str]:
        """Predicted labels; ``tasks`` is one name for every text or a name per text."""
        tasks = [tasks] * len(texts) if isinstance(tasks, str) else list(tasks)
        return [self.tasks[t].labels[int(s.argmax())]
                for t, s in zip(tasks, self.logits(texts, tasks, texts_b, batch_size, bf16))]
