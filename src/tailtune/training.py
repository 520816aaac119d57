"""Training and prediction of classifiers: batching, feature caching, the classification job of the loop."""
from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from .data import TextDataset
from .device import autocast, resolve_device
from .errors import DataError
from .batch import collate
from .inputs import Encoded
from .text import expand_views, sorted_batches
from .loop import NOT_RESULT_SETTINGS, TrainConfig, TrainResult, run

Encode = Callable[[TextDataset, int], list[Encoded]]


# ---------------------------------------------------------------- batching

def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random,
                           group: int = 50) -> list[list[int]]:
    """Shuffle, sort by length inside mega-batches of ``group`` batches, shuffle the batches.

    Batches hold examples of similar length, so dynamic padding wastes little.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * group
    batches = []
    for s in range(0, len(order), mega):
        chunk = sorted(order[s:s + mega], key=lambda i: -lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@torch.no_grad()
def encode_features(model: Any, encoded: list[Encoded], batch_size: int = 64, bf16: bool = False) -> list[torch.Tensor]:
    """Each example's token features ``(its length, hidden)``, computed once (frozen backbones)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[torch.Tensor | None] = [None] * len(encoded)
    for idx in sorted_batches(encoded, batch_size):
        batch = collate([encoded[i] for i in idx], model.tokenizer.pad_token_id, device)
        batch.pop("position")
        with autocast(device, bf16):
            hidden = model.features(**batch)
        for row, i in enumerate(idx):
            out[i] = hidden[row, :len(encoded[i].input_ids)].clone()
    model.train(was_training)
    return out


def cached_features(model: Any, encoded: list[Encoded], cfg: TrainConfig) -> list[torch.Tensor] | None:
    """The examples' token features computed once when nothing before the head trains and
    ``cfg.cache_features`` is on; else None (the encoder runs every time)."""
    if not (cfg.cache_features and model.frozen_features):
        return None
    return encode_features(model, encoded, cfg.eval_batch_size, cfg.bf16)


def pad_features(rows: list[torch.Tensor]) -> torch.Tensor:
    """Right-pad cached features to ``(batch, longest, ...)``, matching ``collate``'s padding."""
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)


@torch.no_grad()
def predict_logits(model: Any, encoded: list[Encoded], batch_size: int = 64, bf16: bool = False,
                   calibrated: bool = True, progress: bool = False,
                   features: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Class scores ``(n, classes)`` for encoded examples, in input order; calibrated (e.g. η-norm)
    when ``calibrated``. ``features``: the examples' cached token features, skipping the encoder.
    An example with ``views`` (e.g. demonstration sets) scores the mean of its views' raw scores."""
    if features is None and any(e.views for e in encoded):
        rows, owner = expand_views(encoded)
        raw = predict_logits(model, rows, batch_size, bf16, calibrated=False, progress=progress)
        mean = torch.zeros(len(encoded), raw.shape[1]).index_add_(0, torch.tensor(owner), raw)
        mean /= torch.bincount(torch.tensor(owner), minlength=len(encoded)).unsqueeze(1)
        return model.calibrate(mean) if calibrated else mean
    device = next(model.parameters()).device
    was_training = model.training
    if was_training:  # (a model in eval mode is never switched: predictions may run in many threads)
        model.eval()
    out = torch.empty(len(encoded), len(model.labels))
    pad = model.tokenizer.pad_token_id
    for idx in tqdm(sorted_batches(encoded, batch_size), total=-(-len(encoded) // batch_size), disable=not progress,
                    desc="predict", leave=False):
        batch = collate([encoded[i] for i in idx], pad, device)
        if features is not None:
            batch["features"] = pad_features([features[i] for i in idx]).to(device)
        with autocast(device, bf16):
            logits = model(**batch).float()
        out[idx] = (model.calibrate(logits) if calibrated else logits).cpu()
    if was_training:
        model.train()
    return out


# ---------------------------------------------------------------- the classification job

def data_hash(ds: TextDataset | None) -> str | None:
    """A short hash of a dataset's texts, second texts and labels (resume checks and run identity)."""
    if ds is None:
        return None
    h = hashlib.sha256(json.dumps([ds.texts, ds.texts_b, ds.labels], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


class ClassificationJob:
    """Micro-batches of length-grouped examples; the loss is the classifier's training loss.

    Batch order continues one seeded RNG across epochs (so epoch ``e``'s batches can be drawn
    again on resume); an input format that re-samples its inputs (demonstrations) is encoded
    anew every epoch through ``encode(examples, epoch)``.
    """

    def __init__(self, model: Any, examples: TextDataset, cfg: TrainConfig, encode: Encode,
                 settings: dict | None = None, sampling: str = "grouped", soft: torch.Tensor | None = None,
                 temperature: float = 2.0, aux: Any = None) -> None:
        index = {y: i for i, y in enumerate(model.labels)}
        unknown = sorted({y for y in examples.labels if y not in index})
        if unknown:
            raise DataError(f"{examples.source}: labels {unknown[:5]} are not in the classifier's label space")
        if sampling not in ("grouped", "class-balanced"):
            raise ValueError(f"sampling={sampling!r}")
        self.model, self.examples, self.cfg, self._encode, self.sampling = model, examples, cfg, encode, sampling
        if soft is not None and tuple(soft.shape) != (len(examples), len(model.labels)):
            raise DataError(f"soft labels: need one row of {len(model.labels)} class probabilities per example "
                            f"({len(examples)}), got shape {tuple(soft.shape)}")
        self.soft, self.temperature, self.aux = soft, temperature, aux
        self.device = resolve_device(cfg.device)
        self.targets = torch.tensor([index[y] for y in examples.labels], dtype=torch.long)
        self.micro_batches = math.ceil(len(examples) / cfg.batch_size)
        self._encoded: dict[int, list[Encoded]] = {0: encode(examples, 0)}
        self._orders: list[list[list[int]]] = []
        self._epoch = 0
        self._rng = random.Random(cfg.seed)
        self.cache: list[torch.Tensor] | None = None
        self.total_steps = 0  # set by the loop
        train_settings = {k: v for k, v in cfg.to_dict().items() if k not in NOT_RESULT_SETTINGS}
        self.settings = {"classifier": model.config.to_dict(), "labels": list(model.labels),
                         "backbone": model.fingerprint, "train": train_settings, "data": data_hash(examples),
                         **({"aux": aux.settings} if aux is not None else {}), **(settings or {})}

    def encoded(self, epoch: int) -> list[Encoded]:
        if not self.model.input_format.resamples:
            return self._encoded[0]
        if epoch not in self._encoded:
            self._encoded = {epoch: self._encode(self.examples, epoch)}
        return self._encoded[epoch]

    def batches(self, epoch: int) -> list[list[int]]:
        lengths = [len(e.input_ids) for e in self.encoded(epoch)]
        while len(self._orders) <= epoch:  # replays the shuffles of earlier epochs on resume
            self._orders.append(length_grouped_batches(lengths, int(self.cfg.batch_size), self._rng)
                                if self.sampling == "grouped" else self._balanced())
        self._epoch = epoch
        return self._orders[epoch]

    def _balanced(self) -> list[list[int]]:
        """As many examples as an epoch holds, each drawn by picking a class uniformly, then one of its
        examples (with replacement): every class is seen equally often."""
        by_class: dict[int, list[int]] = {}
        for i, t in enumerate(self.targets.tolist()):
            by_class.setdefault(t, []).append(i)
        classes = sorted(by_class)
        draws = [self._rng.choice(by_class[self._rng.choice(classes)]) for _ in range(len(self.targets))]
        size = int(self.cfg.batch_size)
        return [draws[s:s + size] for s in range(0, len(draws), size)]

    def loss(self, idx: list[int], step: int) -> torch.Tensor:
        encoded = self.encoded(self._epoch)
        batch = collate([encoded[i] for i in idx], self.model.tokenizer.pad_token_id, self.device)
        if self.cache is not None:
            batch["features"] = pad_features([self.cache[i] for i in idx])
        if self.soft is not None:  # distillation (PET's final classifier)
            loss = self.model.distill_loss(batch, self.soft[idx].to(self.device), self.temperature, self.cfg.bf16)
        else:
            loss = self.model.training_loss(batch, self.targets[idx].to(self.device), self.cfg.bf16,
                                            progress=step / max(1, self.total_steps))
        if self.aux is None:
            return loss
        return (1 - self.aux.weight) * loss + self.aux.weight * self.aux.loss(idx, step, self.cfg.bf16)

    def param_roles(self) -> dict[str, str]:
        return self.model.param_roles()

    def prepare(self) -> None:
        """Cache the training texts' features when the backbone is frozen (inside the timed loop)."""
        self.cache = cached_features(self.model, self.encoded(0), self.cfg)


def train(model: Any, examples: TextDataset, cfg: TrainConfig, evaluate: Callable[[], dict] | None = None, *,
          encode: Encode | None = None, checkpoint_dir: str | Path | None = None, resume: bool = False,
          settings: dict | None = None, log: Callable[[str], None] | None = None, roles: tuple[str, ...] | None = None,
          sampling: str = "grouped", prototypes: bool = True, only: Callable[[str], bool] | None = None,
          on_evaluate: Callable[[int, dict], None] | None = None, soft: torch.Tensor | None = None,
          temperature: float = 2.0, aux: Any = None) -> TrainResult:
    """Fine-tune ``model`` in place on ``examples``; keep the parameters with the best dev macro-F1.

    ``encode(examples, epoch)`` turns the examples into model inputs (default: the model's input
    format, ``Classifier.encode_training``; once, unless the format re-samples every epoch); ``evaluate()`` returns a dict with ``macro_f1``, called every ``cfg.eval_every``
    steps (default: each epoch). See ``loop.run`` for checkpoints and resuming. ``roles`` limits what
    trains (e.g. ``("head",)``) and ``only`` to the parameter names it accepts; ``sampling="class-balanced"`` draws every class equally often; a head
    that takes class prototypes starts from them (unless ``prototypes`` is false or the run resumes).
    ``soft`` (examples, classes) trains on soft labels instead (distillation at ``temperature``). ``aux``
    adds an auxiliary loss with a ``weight`` (``(1 - weight) · loss + weight · aux.loss(idx, step, bf16)``;
    PET's masked-LM loss on unlabelled text, ``stages.lm.MaskedLMAux``).
    """
    model.set_trainable(roles, only)  # a shared backbone may hold other tasks' modules: train only ours
    model.input_format.set_pool(examples)  # (formats that draw demonstrations from the training set)
    model.to(resolve_device(cfg.device))
    job = ClassificationJob(model, examples, cfg, encode or model.encode_training, settings, sampling, soft,
                            temperature, aux)
    start = time.perf_counter()
    if model.head.wants_prototypes and prototypes and not resume:  # (a resumed run restores the head instead)
        model.head.init_from_prototypes(model.class_prototypes(job.encoded(0), job.targets, cfg.eval_batch_size,
                                                               cfg.bf16))
    seconds = time.perf_counter() - start
    result = run(job, cfg, evaluate, checkpoint_dir=checkpoint_dir, resume=resume, log=log, before=job.prepare,
                 on_evaluate=on_evaluate)
    result.seconds += seconds
    return result
