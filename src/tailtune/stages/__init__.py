"""Training stages beyond one classifier fit.

Registered stages (``ClassifierConfig.stages``) run around the main fine-tuning: ``contrastive``
(SetFit-style pair tuning of the body, before) and ``crt`` (classifier re-training with class-balanced
sampling, after), ``memory`` (the cosine head remembers the training texts, after) and ``exit-heads`` (DeeBERT's second stage for early-exit heads). Masked-LM adaptation (``lm``) and prompt pre-training (``ppt``) are stages of their
own commands (``tailtune adapt-lm``, ``tailtune pretrain-prompt``).
"""
from __future__ import annotations

from . import contrastive, crt, exit_heads, memory  # noqa: F401  (register the stages)
