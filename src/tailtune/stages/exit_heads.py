"""The second stage of two-stage early exit: the inner classifiers train, everything else is frozen; on the
labels (DeeBERT, ``exit_training=two-stage``) or on the last classifier's class distribution (FastBERT's
self-distillation, ``exit_training=self-distill``). Self-distillation reads no label, so, as in FastBERT, it
also learns from unlabelled texts (``fit(unlabeled=...)``, ``train --unlabeled``): the inner classifiers then
imitate the last one on many more texts than a few-shot training set holds."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from ..data import TextDataset
from ..errors import ConfigError
from ..loop import TrainConfig
from ..registry import STAGES, check_min
from ..training import train


@dataclass
class ExitHeadsOptions:
    exit_heads_epochs: float = 3.0
    """exit-heads stage: epochs over the training data"""
    exit_heads_lr: float = 1e-3
    """exit-heads stage: learning rate of the inner classifiers"""
    exit_agreement: float = 0.0
    """exit-heads stage: above 0, a tenth of the unlabelled texts is held out of the stage and the exit threshold
    (or patience) becomes the most eager whose answers agree with full depth's on at least this share of them
    (0.99: at most 1 in 100 answers differs); 0, or fewer than 100 held-out texts: the threshold stays as given"""

    def __post_init__(self) -> None:
        check_min(self, "exit_heads_epochs", 0.0, strict=True)
        check_min(self, "exit_heads_lr", 0.0, strict=True)
        check_min(self, "exit_agreement", 0.0)
        if self.exit_agreement > 1:
            raise ConfigError(f"exit_agreement={self.exit_agreement} is a share of texts: between 0 and 1 (e.g. 0.99)")


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
        held, texts = hold_out(self.unlabeled, cfg.seed) if self.opts.exit_agreement > 0 else ([], self.unlabeled)
        if texts:  # (the distillation loss reads the last classifier, not these rows' labels)
            examples = TextDataset(list(examples.texts) + texts,
                                   list(examples.labels) + [examples.labels[0]] * len(texts))
        # every inner layer's loss: on the labels (DeeBERT), or KL to the last classifier (FastBERT)
        model.head.training_mode = "distill" if mode == "self-distill" else "joint"
        try:
            if log:
                what = "the last classifier's distribution" if mode == "self-distill" else "the labels"
                on = f" over {len(examples) - len(texts)} training + {len(texts)} unlabelled texts" if texts else ""
                log(f"exit-heads stage: the {len(model.head.exits) - 1} inner classifiers train on {what}{on}, "
                    f"{self.opts.exit_heads_epochs:g} epochs, lr {self.opts.exit_heads_lr:g}")
            result = train(model, examples, tc, None, roles=("head",), prototypes=False,
                           only=lambda name: name.startswith("head.exits.") and not name.startswith(last))
        finally:
            model.head.training_mode = mode
            model.set_trainable()
        if self.opts.exit_agreement > 0:
            start = time.perf_counter()
            self._choose_threshold(model, held, log)
            return result.seconds + time.perf_counter() - start  # (the choice is part of training's time)
        return result.seconds

    def _choose_threshold(self, model: Any, held: list[str], log: Callable[[str], None] | None) -> None:
        from ..early_exit import choose_by_agreement, layer_probs
        head, target = model.head, self.opts.exit_agreement
        if not held:
            if log:
                value = f"patience {head.patience}" if head.rule == "patience" else f"{head.rule} {head.threshold:g}"
                log(f"exit threshold: kept as given ({value}): choosing it for "
                    f"{100 * target:g} % agreement needs {MIN_HELD_OUT} held-out texts, a tenth of at least "
                    f"{10 * MIN_HELD_OUT} unlabelled ones (--unlabeled), and {len(self.unlabeled)} were given")
            return
        probs = layer_probs(model, model.encode(held))
        options, agreement, layers, curve = choose_by_agreement(probs, head.rule, target)
        options = options or {"exit_patience" if head.rule == "patience" else "exit_threshold": 0}
        head.threshold = float(options.get("exit_threshold", head.threshold))
        head.patience = int(options.get("exit_patience", head.patience))
        model.config = model.config.with_options(**options)  # what a save records
        if log:
            value = f"patience {head.patience}" if head.rule == "patience" else f"{head.rule} {head.threshold:.4g}"
            log(f"exit threshold chosen: {value}: {100 * agreement:.1f} % of {len(held)} held-out unlabelled texts "
                f"get full depth's answer (target {100 * target:g} %), at {layers:.2f} of {probs.shape[1]} layers on "
                f"average")
            top = math.log(probs.shape[-1]) if head.rule == "entropy" else 1.0
            log("  agreement with full depth / mean layers, by " + ("patience" if head.rule == "patience" else
                f"{head.rule} threshold" + (" / ln(classes)" if top != 1.0 else "")) + ": " + ", ".join(
                f"{o.get('exit_patience', o.get('exit_threshold', 0) / top):.3g}: {100 * a:.1f} % / {n:.2f}"
                for o, a, n in curve))


MIN_HELD_OUT = 100


def hold_out(texts: list[str], seed: int) -> tuple[list[str], list[str]]:
    """(held out, the rest): a tenth of ``texts`` (drawn with the run's seed), kept out of the exit-heads stage to
    choose the threshold on; none held out if that is fewer than ``MIN_HELD_OUT``."""
    import random
    if len(texts) // 10 < MIN_HELD_OUT:
        return [], texts
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    cut = len(order) // 10
    return [texts[i] for i in order[:cut]], [texts[i] for i in order[cut:]]


def _check(config: Any) -> None:
    if not hasattr(config, "of"):  # (a probe of the axes alone, before any option is set: nothing to check)
        return
    if config.of("stage:exit-heads").exit_agreement > 0 and config.of("head").exit_training != "self-distill":
        raise ConfigError("exit_agreement chooses the exit threshold on held-out unlabelled texts, and only "
                          "self-distillation takes unlabelled texts: use exit_training='self-distill' (the fastbert "
                          "preset) or leave exit_agreement at 0")


@STAGES.register("exit-heads", ExitHeadsOptions, description="the second stage of two-stage early exit (DeeBERT, "
                 "FastBERT): the inner classifiers of an early-exit head train with everything else frozen",
                 requires={"head": ("early-exit",)}, when="after", check=_check,
                 takes_unlabeled=lambda config, mlm_weight: config.of("head").exit_training == "self-distill")
def build_exit_heads(opts: ExitHeadsOptions) -> ExitHeadsStage:
    return ExitHeadsStage(opts)
