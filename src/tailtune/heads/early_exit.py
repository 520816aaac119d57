"""Early exit: one classifier after every layer (PABEE, DeeBERT, FastBERT).

The head wraps any head that reads one vector (``mlp``, ``cosine``, ``verbalizer``): one copy reads
each layer's vector (the readout applied to that layer). Training is joint (PABEE: the layer losses
weighted by depth) or in two stages: the last classifier with the model, then the inner ones with
everything else frozen, through the ``exit-heads`` stage, either on the labels (DeeBERT) or by
self-distillation (FastBERT: each inner classifier learns the last one's class distribution, so it is
sure where the full model is sure and unsure where it is not). At prediction
``tailtune.early_exit`` runs the encoder layer by layer and lets a row leave as soon as its exit
rule fires; the rows that remain go on to the next layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import HEADS, BuildContext, check_choice, check_min
from .base import Head, Objective

EXIT_RULES = ("entropy", "normalized-entropy", "confidence", "patience")
EXIT_TRAINING = ("joint", "two-stage", "self-distill")


class EarlyExitHead(Head):
    layers = "all"
    scores_from_last_layer = True  # forward (full depth) reads the last layer only: Classifier.forward reads no other

    def __init__(self, exits: list[Head], training: str, rule: str, threshold: float, patience: int) -> None:
        super().__init__()
        self.exits = nn.ModuleList(exits)  # exits[k] reads layer k + 1 (layer 0 is the embeddings)
        self.training_mode, self.rule, self.threshold, self.patience = training, rule, threshold, patience
        self.wants_prototypes = any(head.wants_prototypes for head in exits)
        depth = torch.arange(1, len(exits) + 1, dtype=torch.float)
        self.register_buffer("depth", depth, persistent=False)

    def layer_logits(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, layers + 1, hidden) -> (batch, layers, classes): every exit's scores."""
        return torch.stack([head(x[:, k + 1], mask) for k, head in enumerate(self.exits)], 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.exits[-1](x[:, -1], mask)  # full depth

    def loss(self, logits: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None, target: torch.Tensor,
             objective: Objective) -> torch.Tensor:
        if self.training_mode in ("two-stage", "self-distill"):  # first stage: the last classifier only
            return objective(logits, target)
        if self.training_mode == "distill":  # FastBERT's second stage: every inner exit learns the last one's
            teacher = torch.softmax(logits.detach().float(), -1)  # class distribution, KL(teacher || exit)
            kl = [nn.functional.kl_div(torch.log_softmax(head(x[:, k + 1], mask).float(), -1), teacher,
                                       reduction="batchmean") for k, head in enumerate(self.exits[:-1])]
            return torch.stack(kl).mean() if kl else logits.sum() * 0.0
        per_layer = torch.stack([objective(head(x[:, k + 1], mask), target) for k, head in enumerate(self.exits)])
        return (per_layer * self.depth).sum() / self.depth.sum()  # PABEE: weight ∝ layer index

    def init_from_prototypes(self, prototypes: torch.Tensor) -> None:
        """``prototypes``: (classes, layers + 1, hidden), each exit from its own layer's."""
        for k, head in enumerate(self.exits):
            if head.wants_prototypes:  # (inner exits of another kind, e.g. MLPs, start as they were built)
                head.init_from_prototypes(prototypes[:, k + 1])

    def class_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.exits[-1].class_weights()

    def layer_weights(self) -> torch.Tensor | None:
        """Joint training: every exit's layer counts, weighted by depth as the exits' losses are (PABEE); the
        two-stage modes tune the body for the last classifier only."""
        return self.depth / self.depth.sum() if self.training_mode == "joint" else None


@dataclass
class EarlyExitOptions:
    exit_head: str = "mlp"
    """early exit: the classifier after every layer (a head that reads one vector: mlp, cosine, verbalizer)"""
    exit_inner_head: str = "same"
    """early exit: the classifier after each inner layer (all but the last): same (as exit_head), another head that
    reads one vector (e.g. mlp: a small network rather than a linear map, as FastBERT's student classifiers are), or
    auto: mlp when self-distillation has unlabelled texts to imitate the last classifier on, else same"""
    exit_training: str = "joint"
    """early exit: joint (PABEE, layer losses weighted by depth), two-stage (DeeBERT: the inner classifiers then
    train on the labels) or self-distill (FastBERT: they then learn the last classifier's class distribution);
    the last two need the exit-heads stage"""
    exit_rule: str = "entropy"
    """early exit at prediction: entropy (below the threshold), normalized-entropy (entropy / ln(classes) below
    it: one threshold in [0, 1] means the same for 2 classes and for 50), confidence (max probability at or
    above it) or patience (the same answer at exit_patience layers in a row)"""
    exit_threshold: float = 0.0
    """early exit: the entropy, normalized-entropy or confidence threshold (0 with either entropy: never leave
    early)"""
    exit_patience: int = 0
    """early exit with the patience rule: layers in a row that must agree (0: never leave early)"""

    def __post_init__(self) -> None:
        check_choice(self, "exit_training", EXIT_TRAINING)
        check_choice(self, "exit_rule", EXIT_RULES)
        check_min(self, "exit_threshold", 0.0)
        check_min(self, "exit_patience", 0)


def _exit_heads(opts: "EarlyExitOptions") -> dict[str, str]:
    """{option: head name} of the classifiers after the layers: the last one's, then the inner ones' if other
    (``auto`` before training chooses: its choices, the exit head and an MLP, are checked)."""
    inner = {"same": [], "auto": ["mlp"]}.get(opts.exit_inner_head, [opts.exit_inner_head])
    return {"exit_head": opts.exit_head, **{"exit_inner_head": h for h in inner if h != opts.exit_head}}


def _inner_head_for_data(opts: "EarlyExitOptions", facts: dict) -> dict[str, str]:
    """``exit_inner_head=auto``, chosen from the training data: inner MLPs where self-distillation has unlabelled
    texts (on 16-shot SST-2 with 4,000 of them, MLP exits keep 99 % of full depth at fewer layers than cosine ones
    on all five seeds), else the exit head: an MLP starts at random and learns little from a few-shot training set
    alone, where a classifier started from the class prototypes does better."""
    if opts.exit_inner_head != "auto":
        return {}
    distils = opts.exit_training == "self-distill" and facts.get("unlabeled", 0) > 0
    return {"exit_inner_head": "mlp" if distils else "same"}


def _check(config: Any) -> None:
    opts = config.of("head")
    for option, name in _exit_heads(opts).items():
        entry = HEADS.get(name)
        if entry.trait("reads") != "vector" or entry.name == "early-exit":
            raise ConfigError(f"{option}={name!r}: the classifier after each layer must be a head that reads one "
                              f"vector (mlp, cosine, verbalizer)")
        if entry.check is not None:  # what the head needs of the other axes (the verbalizer: a template)
            entry.check(config)
        for axis, allowed in entry.requires.items():  # e.g. the verbalizer's [MASK] readout
            if getattr(config, axis) not in allowed and getattr(config, axis) != "auto":
                raise ConfigError(f"{option}={name!r} needs {axis} {' or '.join(map(repr, allowed))}")
    if opts.exit_training != "joint" and "exit-heads" not in config.stages:
        stages = [*config.stages, "exit-heads"]
        raise ConfigError(f"exit_training={opts.exit_training!r} trains the inner classifiers in a second stage: add "
                          f"it, stages={stages} (--stages {','.join(stages)})")


@HEADS.register("early-exit", EarlyExitOptions, description="one classifier after every layer; rows leave at the "
                "first layer whose exit rule fires (PABEE / DeeBERT)", reads="vector", check=_check,
                fit_options=_inner_head_for_data,
                needs_mlm_head=lambda o: any(HEADS.get(h).trait("needs_mlm_head") is True for h in _exit_heads(o).values()))
def build_early_exit(opts: EarlyExitOptions, ctx: BuildContext) -> EarlyExitHead:
    last = HEADS.get(opts.exit_head)
    # (auto, chosen by fit from the training data, is the exit head where no data chose: e.g. a zero-shot build)
    inner = HEADS.get(opts.exit_head if opts.exit_inner_head in ("same", "auto") else opts.exit_inner_head)
    exits = [inner.build(inner.make_options({}), ctx) for _ in range(ctx.layers - 1)]
    exits.append(last.build(last.make_options({}), ctx))
    return EarlyExitHead(exits, opts.exit_training, opts.exit_rule, opts.exit_threshold, opts.exit_patience)
