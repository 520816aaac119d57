"""A memory of the training texts for the cosine head, filled after the main fine-tuning.

The cosine head keeps one weight per class; a tail class of a few texts that do not look alike is then stood for by
their mean. Retrieval over the training set is the usual remedy in long-tail and few-shot work (kNN-augmented
classifiers; retrieval-augmented long-tail recognition, Long et al., 2022): here the head remembers every training
text's vector, as it reads it, and mixes each class's best cosine among its texts into its score with weight λ
(``CosineHead.set_memory``). Nothing trains; the memory is saved with the classifier (n × hidden floats).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import ConfigError
from ..loop import TrainConfig
from ..registry import STAGES, check_min


@dataclass
class MemoryOptions:
    memory_weight: float = 0.5
    """memory stage: λ, the weight of each class's nearest training text in the cosine head's scores (1 - λ: its
    class weight); 0.5 averages the two"""

    def __post_init__(self) -> None:
        check_min(self, "memory_weight", 0.0)
        if self.memory_weight > 1:
            raise ConfigError(f"memory_weight={self.memory_weight!r}: the weight of the memory in a mixture, "
                              f"from 0 (the class weights alone) to 1 (the nearest texts alone)")


class MemoryStage:
    when = "after"

    def __init__(self, opts: MemoryOptions) -> None:
        self.opts = opts

    def run(self, model: Any, examples: Any, cfg: TrainConfig, evaluate: Callable[[], dict] | None = None,
            log: Callable[[str], None] | None = None) -> float:
        t0 = time.perf_counter()
        index = {y: i for i, y in enumerate(model.labels)}
        vectors = model.read_vectors(model.encode(examples.texts, examples.texts_b), cfg.eval_batch_size, cfg.bf16)
        model.head.set_memory(vectors, torch.tensor([index[y] for y in examples.labels]), self.opts.memory_weight)
        seconds = time.perf_counter() - t0
        if log:
            log(f"memory: the head remembers {len(examples):,} training texts ({vectors.shape[-1]} floats each), "
                f"each class's nearest one weighing {self.opts.memory_weight:g} in its score ({seconds:.0f} s)")
        return seconds


@STAGES.register("memory", MemoryOptions, description="a memory of the training texts after the main fine-tuning: "
                 "the cosine head mixes each class's nearest training text into its score", when="after",
                 requires={"head": ("cosine",)})
def build_memory(opts: MemoryOptions) -> MemoryStage:
    return MemoryStage(opts)
