"""Multi-task prompted training for zero-shot transfer (FLAN / T0, scaled to encoders).

One masked-LM backbone learns several labelled tasks at once, each cast as prompts: a task has
one or more templates and a verbalizer, and every example is drawn with one of its task's
templates (anew each epoch). All tasks share everything that trains: the encoder and the MLM head
(transform and output bias; the decoder is the tied input embedding matrix), so what is learnt is
"fill the [MASK] with the right label word", not a head per task. A task contributes at most
``max_per_task`` examples per epoch (T0/FLAN-style mixing caps, so a large task does not drown the
others).

The result is an ordinary masked-LM checkpoint (``save_pretrained`` + tokenizer, with
``multiprompt.json``): ``tailtune zero-shot --backbone DIR --template ...`` (or ``train --preset prompt
--backbone DIR``) uses it on a task it never saw.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .errors import ConfigError


@dataclass
class PromptTask:
    """A labelled task cast as prompts: its data, one or more templates and a verbalizer (label -> word(s))."""

    name: str
    data: Any  # TextDataset
    templates: list[str]
    verbalizer: Mapping[str, Any] | None = None
    labels: list[str] = field(default_factory=list)  # filled from the data


class MultiPromptJob:
    """The loop's job: micro-batches of one (task, template) each, tasks mixed within an epoch."""

    def __init__(self, members: dict[str, Any], tasks: list[PromptTask], cfg: Any, max_per_task: int) -> None:
        self.model = nn.ModuleDict(members)
        self.tasks, self.cfg, self.max_per_task = tasks, cfg, max_per_task
        self.device = next(self.model.parameters()).device
        self._encoded: dict[str, list] = {}
        self.targets = {t.name: torch.tensor([t.labels.index(y) for y in t.data.labels]) for t in tasks}
        per_epoch = sum(min(len(t.data), max_per_task) for t in tasks)
        self.micro_batches = math.ceil(per_epoch / cfg.batch_size) + len(tasks) * max(len(t.templates) for t in tasks)
        self.settings = {"multiprompt": [{"task": t.name, "templates": t.templates} for t in tasks]}
        self.total_steps = 0

    def _enc(self, key: str, task: PromptTask) -> list:
        if key not in self._encoded:
            self._encoded[key] = self.model[key].encode(list(task.data.texts), task.data.texts_b)
        return self._encoded[key]

    def batches(self, epoch: int) -> list[tuple[str, str, list[int]]]:
        rng = random.Random(self.cfg.seed * 1009 + epoch)
        out = []
        for t in self.tasks:
            rows = rng.sample(range(len(t.data)), min(len(t.data), self.max_per_task))
            by_template: dict[int, list[int]] = {}
            for i in rows:
                by_template.setdefault(rng.randrange(len(t.templates)), []).append(i)
            for k, idx in sorted(by_template.items()):
                size = self.cfg.batch_size
                out += [(t.name, f"{t.name}__{k}", idx[s:s + size]) for s in range(0, len(idx), size)]
        rng.shuffle(out)
        return out

    def loss(self, batch: tuple[str, str, list[int]], step: int) -> torch.Tensor:
        from .batch import collate
        name, key, idx = batch
        task = next(t for t in self.tasks if t.name == name)
        member = self.model[key]
        b = collate([self._enc(key, task)[i] for i in idx], member.tokenizer.pad_token_id, self.device)
        return member.training_loss(b, self.targets[name][idx].to(self.device), self.cfg.bf16)

    def param_roles(self) -> dict[str, str]:
        return {f"{key}.{n}": role for key, m in self.model.items() for n, role in m.param_roles().items()}


def train_multitask_prompt(tasks: list[PromptTask], backbone: str | None, output: str | Path, cfg: Any = None, *,
                           max_length: int = 128, max_per_task: int = 2000, overwrite: bool = False,
                           log: Callable[[str], None] | None = print) -> dict:
    """Train one MLM backbone on every task's prompts; save it as a masked-LM checkpoint in ``output``."""
    from transformers import AutoModelForMaskedLM

    from .artefacts import check_writable, staged_dir, write_json
    from .backbone import Backbone, drop_pooler, load_tokenizer, mlm_parts, resolve_name
    from .config import config_from_preset
    from .data import label_space
    from .inputs import Verbalizer
    from .loop import TrainConfig, run
    from .model import Classifier
    if len(tasks) < 1 or any(not t.templates for t in tasks):
        raise ConfigError("multi-task prompted training needs one or more tasks, each with one or more templates")
    if len({t.name for t in tasks}) != len(tasks):
        raise ConfigError("task names must differ")
    check_writable(Path(output), overwrite)
    cfg = cfg or TrainConfig(epochs=1, batch_size=16, lr=2e-5)
    tokenizer = load_tokenizer(backbone)
    mlm_model, info = AutoModelForMaskedLM.from_pretrained(resolve_name(backbone), output_loading_info=True)
    parts = mlm_parts(mlm_model, info.get("missing_keys", []))
    bb = Backbone(drop_pooler(mlm_model.base_model), tokenizer, backbone or "default", parts)
    members: dict[str, Any] = {}
    for t in tasks:
        t.labels = label_space(t.data.labels)
        verb = Verbalizer(t.labels, t.verbalizer)
        verb.check(tokenizer)
        for k, template in enumerate(t.templates):
            config = config_from_preset("prompt", template=template, max_length=max_length)
            m = Classifier(config, t.labels, bb, verb, task=f"{t.name}__{k}")
            # every task shares the MLM head itself: what trains is the checkpoint's own head
            m.head.dense, m.head.layer_norm, m.head.bias = parts.dense, parts.layer_norm, parts.bias
            members[f"{t.name}__{k}"] = m
    job = MultiPromptJob(members, tasks, cfg, max_per_task)
    if log:
        log(f"multi-task prompts: {len(tasks)} tasks, {len(members)} templates, up to {max_per_task} examples per "
            f"task and epoch")
    result = run(job, cfg, log=log)
    from .training import predict_logits
    accuracy = {}  # on each task's training texts, with its first template
    for t in tasks:
        m = members[f"{t.name}__0"]
        pred = predict_logits(m, m.encode(list(t.data.texts), t.data.texts_b), cfg.eval_batch_size).argmax(-1)
        accuracy[t.name] = float((pred == job.targets[t.name]).float().mean())
    summary = {"tasks": [{"name": t.name, "templates": t.templates, "labels": t.labels, "examples": len(t.data),
                          "verbalizer": Verbalizer(t.labels, t.verbalizer).to_dict(),
                          "train_accuracy": accuracy[t.name]} for t in tasks],
               "steps": result.steps, "seconds": result.seconds, "max_per_task": max_per_task,
               "train": cfg.to_dict(), "backbone": backbone or "default"}
    with staged_dir(output, overwrite) as tmp:
        mlm_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "multiprompt.json", summary)
    if log:
        log(f"saved the multi-task prompted backbone to {output} (use it: tailtune zero-shot --backbone {output})")
    return summary
