"""The head axis: MLP, cosine classifier, verbalizer (MLM head + label words) and label decoder (Y-Tuning)."""
from __future__ import annotations

from .base import Head
from .cosine import CosineHead
from .early_exit import EarlyExitHead
from .label_decoder import LabelDecoderHead
from .mlp import MLPHead
from .verbalizer import VerbalizerHead

__all__ = ["Head", "CosineHead", "EarlyExitHead", "MLPHead", "VerbalizerHead", "LabelDecoderHead"]
