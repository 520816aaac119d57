"""The second stage of two-stage early exit: the inner classifiers train, everything else is frozen; on the
labels (DeeBERT, ``exit_training=two-stage``) or on the last classifier's class distribution (FastBERT's
self-distillation, ``exit_training=self-distill``). Self-distillation reads no label, so, as in FastBERT, it
also learns from unlabelled texts (``fit(unlabeled=...)``, ``train --unlabeled``): the inner classifiers then
imitate the last one on many more texts than a few-shot training set holds."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from ..data import TextDataset
from ..loop import TrainConfig
from ..registry import STAGES, check_min
from ..training import train


@dataclass
class ExitHeadsOptions:
    exit_heads_epochs: float = 3.0
    """exit-heads stage: epochs over the training data"""
    exit_heads_lr: float = 1e-3
    """exit-heads stage: learning rate of the inner classifiers"""

    def __post_init__(self) -> None:
        check_min(self, "exit_heads_epochs", 0.0, strict=True)
        check_min(self, "exit_heads_lr", 0.0, strict=True)


class ExitHeadsStage:
    when = "after"

    def __init__(self, opts: ExitHeadsOptions) -> None:
        self.opts = opts
        self.unlabeled: list[str] = []

    def take_unlabeled(self, model: Any, texts: list[str]) -> bool:
        """Self-distillation takes unlabelled texts (beside the training texts); DeeBERT's stage trains on the
        labels and takes none."""
        if model.head.training_mode != "self-distill":
            return False
        self.unlabeled = list(texts)
        return True

    def run(self, model: Any, examples: Any, cfg: TrainConfig, evaluate: Callable[[], dict] | None = None,
            log: Callable[[str], None] | None = None) -> float:
        last = f"head.exits.{len(model.head.exits) - 1}."
        tc = replace(cfg, epochs=self.opts.exit_heads_epochs, steps=None, min_steps=None, lr=self.opts.exit_heads_lr,
                     head_lr=self.opts.exit_heads_lr, save_every=None)
        mode = model.head.training_mode
        if self.unlabeled:  # (the distillation loss reads the last classifier, not these rows' labels)
            examples = TextDataset(list(examples.texts) + self.unlabeled,
                                   list(examples.labels) + [examples.labels[0]] * len(self.unlabeled))
        # every inner layer's loss: on the labels (DeeBERT), or KL to the last classifier (FastBERT)
        model.head.training_mode = "distill" if mode == "self-distill" else "joint"
        try:
            if log:
                what = "the last classifier's distribution" if mode == "self-distill" else "the labels"
                on = f" over {len(examples) - len(self.unlabeled)} training + {len(self.unlabeled)} unlabelled texts" \
                    if self.unlabeled else ""
                log(f"exit-heads stage: the {len(model.head.exits) - 1} inner classifiers train on {what}{on}, "
                    f"{self.opts.exit_heads_epochs:g} epochs, lr {self.opts.exit_heads_lr:g}")
            result = train(model, examples, tc, None, roles=("head",), prototypes=False,
                           only=lambda name: name.startswith("head.exits.") and not name.startswith(last))
        finally:
            model.head.training_mode = mode
            model.set_trainable()
        return result.seconds


@STAGES.register("exit-heads", ExitHeadsOptions, description="the second stage of two-stage early exit (DeeBERT, "
                 "FastBERT): the inner classifiers of an early-exit head train with everything else frozen", requires={"head": ("early-exit",)}, when="after")
def build_exit_heads(opts: ExitHeadsOptions) -> ExitHeadsStage:
    return ExitHeadsStage(opts)
