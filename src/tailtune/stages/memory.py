"""A memory of the training texts for the cosine head, filled after the main fine-tuning.

The cosine head keeps one weight per class; a tail class of a few texts that do not look alike is then stood for by
their mean. Retrieval over the training set is the usual remedy in long-tail and few-shot work (kNN-augmented
classifiers; retrieval-augmented long-tail recognition, Long et al., 2022): here the head remembers the training
texts' vectors, as it reads them, and mixes each class's best cosine among its texts into its score with weight λ
(``CosineHead.set_memory``). Nothing trains.

λ is chosen on dev by default, as the logit adjustment's τ is: the smallest of ``MEMORY_WEIGHTS`` whose dev macro-F1
(τ fitted anew for each) is within one standard error of the best, so the memory enters only where dev shows, beyond
its noise, that it helps; at λ = 0 the head forgets it and the save holds none. It is saved with the classifier:
at most ``memory_size`` vectors of the read vector's width (a larger training set keeps every class whole up to a
common cap, the larger classes a seeded random sample of that many).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import ConfigError
from ..loop import TrainConfig
from ..objectives import smallest_within_one_se
from ..registry import STAGES, check_min

MEMORY_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)  # what dev chooses λ from (the grid knn.py measured)


@dataclass
class MemoryOptions:
    memory_weight: float = 0.5
    """memory stage: λ, the weight of each class's nearest training text in the cosine head's scores (1 - λ: its
    class weight); 0.5 averages the two. Used as given when not chosen on dev (setting it turns
    memory_weight_from_dev off)"""
    memory_weight_from_dev: bool = True
    """memory stage: choose λ on dev from 0, 0.1, 0.25, 0.5, 0.75, 1 (the smallest within one standard error of the
    best dev macro-F1, τ refitted for each; 0 forgets the memory, as does a fit without a dev set)"""
    memory_size: int = 10_000
    """memory stage: the most training texts remembered; beyond it each class keeps at most a common cap (a seeded
    random sample of a larger class), so the tail classes stay whole"""

    def __post_init__(self) -> None:
        check_min(self, "memory_weight", 0.0)
        check_min(self, "memory_size", 1)
        if self.memory_weight > 1:
            raise ConfigError(f"memory_weight={self.memory_weight!r}: the weight of the memory in a mixture, "
                              f"from 0 (the class weights alone) to 1 (the nearest texts alone)")


def check_size(opts: MemoryOptions, facts: dict) -> dict:
    """Refuse, before anything trains, a memory too small to hold one text of every class (``thin``'s cap would be
    0: the memory would stay empty and the stage do nothing). Chooses no option (the ``fit_options`` trait)."""
    classes = facts.get("classes", 0)
    if opts.memory_size < classes and (opts.memory_weight_from_dev or opts.memory_weight > 0):
        raise ConfigError(f"memory_size={opts.memory_size}: the memory keeps at most that many training texts, fewer "
                          f"than the {classes} classes, so it would hold none; give --memory-size {classes} or more "
                          f"(default {MemoryOptions.memory_size:,}), or train without the memory stage")
    return {}


def thin(labels: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Indices of at most ``size`` of the examples of class indices ``labels``: every class keeps min(n_c, cap), the
    largest cap that fits (water-filling), a class above it a seeded random sample; all of them when they fit."""
    if len(labels) <= size:
        return torch.arange(len(labels))
    counts = torch.bincount(labels)
    cap, above = 0, int(counts.max())  # the largest cap that fits lies in [cap, above): bisection
    while above - cap > 1:
        mid = (cap + above) // 2
        cap, above = (mid, above) if int(counts.clamp(max=mid).sum()) <= size else (cap, mid)
    g = torch.Generator().manual_seed(seed)
    keep = [idx if len(idx) <= cap else idx[torch.randperm(len(idx), generator=g)[:cap]]
            for idx in ((labels == c).nonzero().flatten() for c in range(len(counts)))]
    return torch.cat(keep).sort().values


class MemoryStage:
    when = "after"

    def __init__(self, opts: MemoryOptions) -> None:
        self.opts = opts
        self.fitted_options: dict = {}  # what dev chose, for the saved configuration

    def run(self, model: Any, examples: Any, cfg: TrainConfig, evaluate: Callable[..., dict] | None = None,
            log: Callable[[str], None] | None = None) -> float:
        t0 = time.perf_counter()
        head = model.head
        if self.opts.memory_weight_from_dev and evaluate is None:  # no dev set to choose on: as trained (as τ is)
            head.forget_memory()
            self.fitted_options = {"memory_weight": 0.0}
            if log:
                log("memory: none kept; no dev set to choose λ on, so nothing was read (--memory-weight sets one)")
            return time.perf_counter() - t0
        index = {y: i for i, y in enumerate(model.labels)}
        labels = torch.tensor([index[y] for y in examples.labels])
        keep = thin(labels, self.opts.memory_size, cfg.seed)
        texts_b = None if examples.texts_b is None else [examples.texts_b[i] for i in keep.tolist()]
        vectors = model.read_vectors(model.encode([examples.texts[i] for i in keep.tolist()], texts_b),
                                     cfg.eval_batch_size, cfg.bf16)
        weight, chosen = self.opts.memory_weight, ""
        head.set_memory(vectors, labels[keep], weight)
        if self.opts.memory_weight_from_dev:
            reports = {}
            for lam in MEMORY_WEIGHTS:
                head.set_memory_weight(lam)
                reports[lam] = evaluate(fit_calibration_first=True, head_only=True)  # (dev read once)
            weight, se = smallest_within_one_se({lam: r["macro_f1"] for lam, r in reports.items()},
                                                reports[0.0]["n"])
            chosen = (f"; λ = {weight:g} chosen on dev, the smallest within one standard error ({se:.4f}) of the best "
                      "macro-F1 (by λ: " + ", ".join(f"{lam:g}: {r['macro_f1']:.4f}" for lam, r in reports.items())
                      + ")")
            self.fitted_options = {"memory_weight": weight}
        if weight == 0:
            head.forget_memory()  # nothing to mix in: nothing to save
        else:
            head.set_memory_weight(weight)
        seconds = time.perf_counter() - t0
        if log:
            kept = (f"{len(keep):,} training texts" + (f" of {len(labels):,}" if len(keep) < len(labels) else "")
                    + f" ({vectors.shape[-1]} floats each)")
            log("memory: " + (f"the head remembers {kept}, each class's nearest one weighing {weight:g} in its "
                              "score" if weight else f"none kept (read {kept})") + chosen + f" ({seconds:.0f} s)")
        return seconds


@STAGES.register("memory", MemoryOptions, description="a memory of the training texts after the main fine-tuning: "
                 "the cosine head mixes each class's nearest training text into its score, weight chosen on dev",
                 when="after", requires={"head": ("cosine",)}, fit_options=check_size)
def build_memory(opts: MemoryOptions) -> MemoryStage:
    return MemoryStage(opts)
