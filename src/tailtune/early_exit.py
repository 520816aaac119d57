"""Early-exit prediction: the encoder runs layer by layer; a row leaves the batch at its first exit.

Rules (Zhou et al., 2020, PABEE; Xin et al., 2020, DeeBERT; Liu et al., 2020, FastBERT):
``entropy`` leaves when the entropy of the layer's class distribution is below the threshold,
``confidence`` when its largest probability reaches the threshold, ``patience`` when the layer's
answer has been the same for ``patience`` layers in a row. Rows that leave are dropped from the
batch, so later layers run on fewer rows; the task's modules (adapters, LoRA, prefixes, soft
prompts) act in every layer through the router, as in a full pass.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .device import autocast
from .errors import ConfigError
from .batch import collate
from .inputs import Encoded
from .tuning.routing import Route


def _encoder_parts(encoder: Any) -> tuple[Any, Any]:
    """(embeddings, layers) of a BERT/RoBERTa- or DistilBERT-style encoder."""
    stack = getattr(getattr(encoder, "encoder", None), "layer", None) or \
        getattr(getattr(encoder, "transformer", None), "layer", None)
    if stack is None or not hasattr(encoder, "embeddings"):
        raise ConfigError(f"early exit: cannot run {type(encoder).__name__} layer by layer; supported: BERT, "
                          f"RoBERTa and DistilBERT style encoders")
    return encoder.embeddings, stack


def _exits(rule: str, probs: torch.Tensor, threshold: float, patience: int, streak: torch.Tensor,
           previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows that leave, new streak, answers) for one layer's class probabilities (rows, classes)."""
    answer = probs.argmax(-1)
    streak = torch.where(answer == previous, streak + 1, torch.ones_like(streak))
    if rule == "entropy":
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
        leave = entropy < threshold
    elif rule == "confidence":
        leave = probs.amax(-1) >= threshold if threshold > 0 else torch.zeros_like(answer, dtype=torch.bool)
    else:
        leave = streak >= patience if patience > 0 else torch.zeros_like(answer, dtype=torch.bool)
    return leave, streak, answer


@torch.no_grad()
def predict_early_exit(model: Any, encoded: list[Encoded], rule: str | None = None, threshold: float | None = None,
                       patience: int | None = None, batch_size: int = 64,
                       bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibrated scores (n, classes), layers used (n,)) with the head's exit rule (or the one given)."""
    from transformers.masking_utils import create_bidirectional_mask
    head = model.head
    if not hasattr(head, "exits"):
        raise ConfigError("early exit needs a classifier trained with head='early-exit'")
    if any(e.views for e in encoded):
        raise ConfigError("early exit scores one encoding per text; this input format averages several "
                          "(demonstration sets): predict without early exit")
    rule = rule or head.rule
    threshold = head.threshold if threshold is None else threshold
    patience = head.patience if patience is None else patience
    embeddings, layers = _encoder_parts(model.encoder)
    device = next(model.parameters()).device
    was_training = model.training
    if was_training:
        model.eval()
    scores = torch.empty(len(encoded), len(model.labels))
    used = torch.zeros(len(encoded), dtype=torch.long)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    config = model.encoder.config
    for s in range(0, len(order), batch_size):
        idx = torch.tensor(order[s:s + batch_size])
        batch = collate([encoded[i] for i in idx.tolist()], model.tokenizer.pad_token_id, device)
        soft = batch.get("soft_positions")
        with autocast(device, bf16), model.router.route([Route(model.task, None, soft)]):
            kwargs = {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}
            hidden = embeddings(input_ids=batch["input_ids"], **kwargs)  # (rows, seq, hidden)
        active = torch.arange(len(idx), device=device)
        streak = torch.zeros(len(idx), dtype=torch.long, device=device)
        previous = torch.full((len(idx),), -1, dtype=torch.long, device=device)
        for k, layer in enumerate(layers):
            mask2d = batch["attention_mask"][active]
            with autocast(device, bf16), model.router.route([Route(model.task, None,
                                                                   soft[active] if soft is not None else None)]):
                mask4d = create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=mask2d)
                hidden = layer(hidden, mask4d)
                x, _ = model.readout(hidden, mask2d, batch["position"][active])
                logits = model.calibrate(head.exits[k](x).float())
            leave, streak, previous = _exits(rule, logits.softmax(-1), threshold, patience, streak, previous)
            if k == len(layers) - 1:
                leave = torch.ones_like(leave)
            rows = idx[active[leave].cpu()]
            scores[rows] = logits[leave].cpu()
            used[rows] = k + 1
            keep = ~leave
            active, hidden, streak, previous = active[keep], hidden[keep], streak[keep], previous[keep]
            if not len(active):
                break
    if was_training:
        model.train()
    return scores, used


def exit_curve(model: Any, encoded: list[Encoded], gold: list[str], thresholds: list[float], rule: str = "entropy",
               batch_size: int = 64, theta: float = 0.65) -> list[dict]:
    """Macro-F1, accuracy and mean layers used at each threshold (the speed / quality curve)."""
    import time

    from .metrics import long_tail_report
    rows = []
    for t in thresholds:
        start = time.perf_counter()
        scores, used = predict_early_exit(model, encoded, rule, t if rule != "patience" else None,
                                          int(t) if rule == "patience" else None, batch_size)
        seconds = time.perf_counter() - start
        report = long_tail_report(gold, [model.labels[i] for i in scores.argmax(-1).tolist()], theta)
        rows.append({"rule": rule, "threshold": t, "macro_f1": report["macro_f1"], "accuracy": report["accuracy"],
                     "mean_layers": float(used.float().mean()), "seconds": seconds,
                     "texts_per_second": len(encoded) / seconds if seconds > 0 else math.inf})
    return rows
