"""Early-exit prediction: the encoder runs layer by layer; a row leaves the batch at its first exit.

Rules (Zhou et al., 2020, PABEE; Xin et al., 2020, DeeBERT; Liu et al., 2020, FastBERT):
``entropy`` leaves when the entropy of the layer's class distribution is below the threshold,
``normalized-entropy`` when that entropy divided by its largest value, ln(classes), is (a threshold in
[0, 1] that means the same whatever the number of classes: entropies of a binary task lie below
ln 2 = 0.69, of a 50-class one below 3.9),
``confidence`` when its largest probability reaches the threshold, ``patience`` when the layer's
answer has been the same for ``patience`` layers in a row. Rows that leave are dropped from the
batch, so later layers run on fewer rows; the task's modules (adapters, LoRA, prefixes, soft
prompts) act in every layer through the router, as in a full pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .device import autocast
from .errors import ConfigError
from .batch import collate
from .inputs import Encoded
from .text import sorted_batches
from .tuning.routing import Route


def _encoder_parts(encoder: Any) -> tuple[Any, Any]:
    """(embeddings, layers) of a BERT/RoBERTa- or DistilBERT-style encoder."""
    stack = getattr(getattr(encoder, "encoder", None), "layer", None) or \
        getattr(getattr(encoder, "transformer", None), "layer", None)
    if stack is None or not hasattr(encoder, "embeddings"):
        raise ConfigError(f"early exit: cannot run {type(encoder).__name__} layer by layer; supported: BERT, "
                          f"RoBERTa and DistilBERT style encoders")
    return encoder.embeddings, stack


def check_rule(rule: str) -> None:
    """Refuse an exit rule that is not one of ``EXIT_RULES``."""
    from .heads.early_exit import EXIT_RULES
    if rule not in EXIT_RULES:
        raise ConfigError(f"early exit: rule={rule!r} is not one of {', '.join(EXIT_RULES)}")


def _exits(rule: str, probs: torch.Tensor, threshold: float, patience: int, streak: torch.Tensor,
           previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows that leave, new streak, answers) for one layer's class probabilities (rows, classes)."""
    answer = probs.argmax(-1)
    streak = torch.where(answer == previous, streak + 1, torch.ones_like(streak))
    if rule in ("entropy", "normalized-entropy"):
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
        leave = entropy < threshold * (math.log(probs.shape[-1]) if rule == "normalized-entropy" else 1.0)
    elif rule == "confidence":
        leave = probs.amax(-1) >= threshold if threshold > 0 else torch.zeros_like(answer, dtype=torch.bool)
    elif rule == "patience":
        leave = streak >= patience if patience > 0 else torch.zeros_like(answer, dtype=torch.bool)
    else:  # (a rule the head's options or set_early_exit would have refused: never guess one)
        check_rule(rule)
    return leave, streak, answer


@dataclass
class ExitGroup:
    """The rows of a batch that belong to one classifier, and the exit rule they leave by. A classifier
    without exits (an ordinary head) answers after the last layer."""

    model: Any
    rows: torch.Tensor  # (n,) positions in the batch
    soft_positions: torch.Tensor | None = None  # (n, soft tokens), aligned with rows
    rule: str = "entropy"
    threshold: float = 0.0
    patience: int = 0


def exit_group(model: Any, rows: torch.Tensor, soft: torch.Tensor | None = None, rule: str | None = None,
               threshold: float | None = None, patience: int | None = None) -> ExitGroup:
    """A group with the classifier's saved exit rule, or the one given."""
    head = model.head
    if not hasattr(head, "exits"):
        return ExitGroup(model, rows, soft)
    return ExitGroup(model, rows, soft, rule or head.rule, head.threshold if threshold is None else threshold,
                     head.patience if patience is None else patience)


@torch.no_grad()
def exit_pass(encoder: Any, router: Any, batch: dict, groups: list[ExitGroup],
              bf16: bool = False) -> tuple[list[torch.Tensor | None], torch.Tensor]:
    """One batch, layer by layer, whose rows may belong to different classifiers on one encoder: each row
    goes through its own task's modules (the router) and leaves at its classifier's first exit whose rule
    fires (at the last layer at the latest). Returns (calibrated scores per row, layers used per row)."""
    from transformers.masking_utils import create_bidirectional_mask
    embeddings, layers = _encoder_parts(encoder)
    device = batch["input_ids"].device
    n = batch["input_ids"].shape[0]
    owner = torch.full((n,), -1, dtype=torch.long, device=device)  # batch row -> its group
    slot = torch.zeros(n, dtype=torch.long, device=device)  # batch row -> its place in the group
    for g, group in enumerate(groups):
        owner[group.rows] = g
        slot[group.rows] = torch.arange(len(group.rows), device=device)
    one = len(groups) == 1 and len(groups[0].rows) == n  # one classifier for the whole batch: no row lists
    left: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = []  # (rows, which leave, scores, layer)
    active = torch.arange(n, device=device)
    streak = torch.zeros(n, dtype=torch.long, device=device)
    previous = torch.full((n,), -1, dtype=torch.long, device=device)

    def routes() -> list[tuple[ExitGroup, torch.Tensor | None]]:
        """Each group's positions among the active rows (None: all of them, the one-classifier case)."""
        if one:
            return [(groups[0], None)]
        mine = [(group, (owner[active] == g).nonzero().squeeze(1)) for g, group in enumerate(groups)]
        return [(group, sel) for group, sel in mine if len(sel)]

    def routed(found: list[tuple[ExitGroup, torch.Tensor | None]]) -> list[Route]:
        whole = len(found) == 1 and (found[0][1] is None or len(found[0][1]) == len(active))  # (one task: no row lists)
        return [Route(group.model.task, None if whole else sel,
                      None if group.soft_positions is None else group.soft_positions[slot[active if sel is None else active[sel]]])
                for group, sel in found]

    found = routes()
    with autocast(device, bf16), router.route(routed(found)):
        kwargs = {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}
        hidden = embeddings(input_ids=batch["input_ids"], **kwargs)  # (rows, seq, hidden)
    mask2d = batch["attention_mask"]
    mask4d = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=mask2d)
    for k, layer in enumerate(layers):
        last = k == len(layers) - 1
        leave = torch.zeros(len(active), dtype=torch.bool, device=device)
        with autocast(device, bf16), router.route(routed(found)):
            hidden = layer(hidden, mask4d)
            for group, sel in found:
                model, exits = group.model, getattr(group.model.head, "exits", None)
                if exits is None and not last:
                    continue
                rows = active if sel is None else active[sel]
                h, m = (hidden, mask2d) if sel is None else (hidden[sel], mask2d[sel])
                if exits is None:  # an ordinary head: its scores at full depth
                    logits = model.calibrate(model.scores(h, m, batch["position"][rows]).float())
                    out = torch.ones(len(rows), dtype=torch.bool, device=device)
                else:
                    x, _ = model.readout(h, m, batch["position"][rows])
                    logits = model.calibrate(exits[k](x).float())
                    out, streak[rows], previous[rows] = _exits(group.rule, logits.softmax(-1), group.threshold,
                                                               group.patience, streak[rows], previous[rows])
                    out = out | last
                left.append((rows, out, logits, k + 1))  # on the device: read once at the end, not per layer
                if sel is None:
                    leave = out
                else:
                    leave[sel] = out
        kept = (~leave).nonzero().squeeze(1)  # the layer's one host synchronisation: how many rows go on
        active, hidden, mask2d = active[kept], hidden[kept], mask2d[kept]
        if isinstance(mask4d, torch.Tensor) and mask4d.shape[0] == len(leave):  # the batch's mask, built once
            mask4d = mask4d[kept]
        elif mask4d is not None:  # a mask object rows cannot be selected from (e.g. flex attention's): rebuilt
            mask4d = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=mask2d)
        if not len(active):
            break
        found = routes()
    scores: list[torch.Tensor | None] = [None] * n
    used = torch.zeros(n, dtype=torch.long)
    for rows, out, logits, layer in left:
        out = out.cpu()
        for r, row_scores in zip(rows.cpu()[out].tolist(), logits.cpu()[out]):
            scores[r] = row_scores
            used[r] = layer
    return scores, used


def _check_exits(model: Any, encoded: list[Encoded]) -> None:
    if not hasattr(model.head, "exits"):
        raise ConfigError("early exit needs a classifier trained with head='early-exit'")
    if any(e.views for e in encoded):
        raise ConfigError("early exit scores one encoding per text; this input format averages several "
                          "(demonstration sets): predict without early exit")


@torch.no_grad()
def predict_early_exit(model: Any, encoded: list[Encoded], rule: str | None = None, threshold: float | None = None,
                       patience: int | None = None, batch_size: int = 64,
                       bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibrated scores (n, classes), layers used (n,)) with the head's exit rule (or the one given)."""
    _check_exits(model, encoded)
    device = next(model.parameters()).device
    was_training = model.training
    if was_training:
        model.eval()
    scores = torch.empty(len(encoded), len(model.labels))
    used = torch.zeros(len(encoded), dtype=torch.long)
    for idx in sorted_batches(encoded, batch_size):
        batch = collate([encoded[i] for i in idx], model.tokenizer.pad_token_id, device)
        group = exit_group(model, torch.arange(len(idx), device=device), batch.get("soft_positions"), rule,
                           threshold, patience)
        rows, layers_used = exit_pass(model.encoder, model.router, batch, [group], bf16)
        scores[idx] = torch.stack(rows)  # type: ignore[arg-type]
        used[idx] = layers_used
    if was_training:
        model.train()
    return scores, used


def exit_curve(model: Any, encoded: list[Encoded], gold: list[str], thresholds: list[float], rule: str = "entropy",
               batch_size: int = 64, theta: float = 0.65, reference: dict | None = None, repeats: int = 1) -> list[dict]:
    """The speed / quality curve: first the full-depth reference (``threshold`` None: the ordinary forward pass,
    no exits), then macro-F1, accuracy, mean layers used and wall time at each threshold, with each point's share
    of the full-depth macro-F1 and its speed-up over full depth. ``reference``: the full-depth row of an earlier
    curve on the same texts and batch size, reused instead of a second full-depth pass (curves of several rules
    then share one reference). ``repeats``: each point (the reference too) runs that many times and its wall time
    is the fastest run's (best of N, as throughput benchmarks time: the other runs lost time to something else on
    the machine; every run's seconds are kept in ``all_seconds``)."""
    import time

    from .metrics import long_tail_report
    from .training import predict_logits
    _check_exits(model, encoded)

    if repeats < 1:
        raise ConfigError(f"exit curve: repeats={repeats} must be at least 1")

    def point(threshold: float | None, run: Callable[[], tuple[torch.Tensor, torch.Tensor | None]]) -> dict:
        times = []
        for _ in range(repeats):  # (the same predictions every time: exits are deterministic)
            start = time.perf_counter()
            scores, used = run()
            times.append(time.perf_counter() - start)
        seconds = min(times)
        report = long_tail_report(gold, [model.labels[i] for i in scores.argmax(-1).tolist()], theta)
        return {"rule": rule if threshold is not None else "full-depth", "threshold": threshold,
                "macro_f1": report["macro_f1"], "accuracy": report["accuracy"],
                "mean_layers": float(used.float().mean()) if used is not None else float(len(model.head.exits)),
                "seconds": seconds, "all_seconds": times,
                "texts_per_second": len(encoded) / seconds if seconds > 0 else math.inf}

    full = reference or point(None, lambda: (predict_logits(model, encoded, batch_size), None))
    rows = [full]
    for t in thresholds:
        rows.append(point(t, lambda t=t: predict_early_exit(model, encoded, rule, t if rule != "patience" else None,
                                                            int(t) if rule == "patience" else None, batch_size)))
    for row in rows:
        row["f1_share"] = row["macro_f1"] / full["macro_f1"] if full["macro_f1"] else None
        row["speedup"] = full["seconds"] / row["seconds"] if row["seconds"] > 0 else math.inf
    return rows


@torch.no_grad()
def layer_probs(model: Any, encoded: list[Encoded], batch_size: int = 64) -> torch.Tensor:
    """Every exit's calibrated class probabilities ``(n, layers, classes)``, from one pass that keeps every layer:
    what ``exit_pass`` reads at each layer, for every row (none leaves), to simulate any exit rule at once."""
    _check_exits(model, encoded)
    device = next(model.parameters()).device
    was_training = model.training
    if was_training:
        model.eval()
    out = torch.empty(len(encoded), len(model.head.exits), len(model.labels))
    for idx in sorted_batches(encoded, batch_size):
        batch = collate([encoded[i] for i in idx], model.tokenizer.pad_token_id, device)
        hidden = model.features(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                                batch.get("soft_positions"))  # (rows, seq, layers + 1, hidden)
        x, _ = model.readout(hidden, batch["attention_mask"], batch["position"])  # (rows, layers + 1, hidden)
        logits = model.head.layer_logits(x).float()  # (rows, layers, classes): every exit on its own layer
        out[idx] = torch.stack([model.calibrate(logits[:, k]) for k in range(logits.shape[1])], 1).softmax(-1).cpu()
    if was_training:
        model.train()
    return out


def simulate_exits(probs: torch.Tensor, rule: str, threshold: float = 0.0,
                   patience: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(answers (n,), layers used (n,)) that ``exit_pass`` gives under a rule, from ``layer_probs``'s output."""
    check_rule(rule)
    n, depth, _ = probs.shape
    answers, used = torch.full((n,), -1, dtype=torch.long), torch.full((n,), depth, dtype=torch.long)
    done, streak, previous = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.long), \
        torch.full((n,), -1, dtype=torch.long)
    for k in range(depth):
        leave, streak, previous = _exits(rule, probs[:, k], threshold, patience, streak, previous)
        new = (leave | (k == depth - 1)) & ~done
        answers[new], used[new] = previous[new], k + 1
        done |= new
    return answers, used


def candidate_thresholds(rule: str, classes: int, depth: int) -> list[dict]:
    """The settings an agreement target chooses among, from the most cautious to the most eager: ``{option:
    value}`` of ``exit_threshold`` (entropy rules: 0.05 to 0.95 of ln(classes) in steps of 0.05; confidence: the
    same steps from 1 down towards 1/classes) or ``exit_patience`` (depth - 1 down to 1)."""
    check_rule(rule)
    if rule == "patience":
        return [{"exit_patience": p} for p in range(depth - 1, 0, -1)]
    steps = [round(0.05 * i, 2) for i in range(1, 20)]
    if rule == "confidence":
        return [{"exit_threshold": 1.0 - s * (1.0 - 1.0 / classes)} for s in steps]
    top = math.log(classes) if rule == "entropy" else 1.0
    return [{"exit_threshold": s * top} for s in steps]


def choose_by_agreement(probs: torch.Tensor, rule: str, target: float) -> tuple[dict, float, float, list]:
    """The most eager setting of ``rule`` whose answers agree with full depth's on at least ``target`` of the rows
    of ``probs`` (``layer_probs`` of texts the exits did not train on): (options, agreement, mean layers, and
    every candidate's (options, agreement, mean layers)); the options are ``{}`` (never leave early) when none
    reaches it."""
    full = probs[:, -1].argmax(-1)
    best: tuple[dict, float, float] = ({}, 1.0, float(probs.shape[1]))
    curve = []
    for options in candidate_thresholds(rule, probs.shape[-1], probs.shape[1]):
        answers, used = simulate_exits(probs, rule, options.get("exit_threshold", 0.0), options.get("exit_patience", 0))
        point = (options, float((answers == full).float().mean()), float(used.float().mean()))
        curve.append(point)
        if point[1] >= target:
            best = point
    return (*best, curve)
