"""Classifier re-training with class-balanced sampling (cRT; Kang et al., 2020), after the main fine-tuning.

Kang et al. found that long-tailed training learns good representations but a classifier biased
toward the head classes; re-training only the classifier, with the representation frozen and
every class sampled equally often, removes much of that bias. A head that takes class prototypes
is re-started from the prototypes of the tuned body first; other heads are re-trained from where
they are.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from ..loop import TrainConfig
from ..registry import STAGES, check_min
from ..training import train


@dataclass
class CRTOptions:
    crt_epochs: float = 10.0
    """classifier re-training: epochs of class-balanced batches"""
    crt_lr: float = 1e-3
    """classifier re-training: learning rate of the head"""
    crt_reinit: bool = True
    """classifier re-training: re-start a head that takes prototypes from the tuned body's class prototypes"""

    def __post_init__(self) -> None:
        check_min(self, "crt_epochs", 0.0, strict=True)
        check_min(self, "crt_lr", 0.0, strict=True)


class CRTStage:
    when = "after"

    def __init__(self, opts: CRTOptions) -> None:
        self.opts = opts

    def run(self, model: Any, examples: Any, cfg: TrainConfig, evaluate: Callable[[], dict] | None = None,
            log: Callable[[str], None] | None = None) -> float:
        o = self.opts
        tc = replace(cfg, epochs=o.crt_epochs, steps=None, lr=o.crt_lr, head_lr=o.crt_lr, save_every=None)
        if log:
            log(f"classifier re-training: {o.crt_epochs:g} epochs of class-balanced batches, head lr {o.crt_lr:g}, "
                f"body frozen")
        result = train(model, examples, tc, evaluate, roles=("head",), sampling="class-balanced",
                       prototypes=o.crt_reinit)
        model.set_trainable()  # back to the classifier's own trainable set (what its save holds)
        if log:
            log(f"classifier re-training: done in {result.seconds:.0f} s (best dev macro-F1 "
                f"{result.best_dev_macro_f1 if result.best_dev_macro_f1 is not None else '–'})")
        return result.seconds


@STAGES.register("crt", CRTOptions, description="classifier re-training with class-balanced sampling, body frozen "
                 "(Kang et al., 2020), after the main fine-tuning", when="after")
def build_crt(opts: CRTOptions) -> CRTStage:
    return CRTStage(opts)
