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

    def __init__(self, exits: list[Head], training: str, rule: str, threshold: float, patience: int) -> None:
        super().__init__()
        self.exits = nn.ModuleList(exits)  # exits[k] reads layer k + 1 (layer 0 is the embeddings)
        self.training_mode, self.rule, self.threshold, self.patience = training, rule, threshold, patience
        self.wants_prototypes = exits[0].wants_prototypes
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


def _check(config: Any) -> None:
    opts = config.of("head")
    inner = HEADS.get(opts.exit_head)
    if inner.trait("reads") != "vector" or inner.name == "early-exit":
        raise ConfigError(f"exit_head={opts.exit_head!r}: the classifier after each layer must be a head that "
                          f"reads one vector (mlp, cosine, verbalizer)")
    if inner.check is not None:  # what the inner head needs of the other axes (the verbalizer: a template)
        inner.check(config)
    for axis, allowed in inner.requires.items():  # e.g. the verbalizer's [MASK] readout
        if getattr(config, axis) not in allowed and getattr(config, axis) != "auto":
            raise ConfigError(f"exit_head={opts.exit_head!r} needs {axis} {' or '.join(map(repr, allowed))}")
    if opts.exit_training != "joint" and "exit-heads" not in config.stages:
        stages = [*config.stages, "exit-heads"]
        raise ConfigError(f"exit_training={opts.exit_training!r} trains the inner classifiers in a second stage: add "
                          f"it, stages={stages} (--stages {','.join(stages)})")


@HEADS.register("early-exit", EarlyExitOptions, description="one classifier after every layer; rows leave at the "
                "first layer whose exit rule fires (PABEE / DeeBERT)", reads="vector", check=_check,
                needs_mlm_head=lambda o: HEADS.get(o.exit_head).trait("needs_mlm_head") is True)
def build_early_exit(opts: EarlyExitOptions, ctx: BuildContext) -> EarlyExitHead:
    inner = HEADS.get(opts.exit_head)
    inner_opts = inner.make_options({})
    exits = [inner.build(inner_opts, ctx) for _ in range(ctx.layers)]
    return EarlyExitHead(exits, opts.exit_training, opts.exit_rule, opts.exit_threshold, opts.exit_patience)
