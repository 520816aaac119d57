"""The head axis: MLP, verbalizer (MLM head + label words) and label decoder (Y-Tuning)."""
from __future__ import annotations

from .base import Head
from .label_decoder import LabelDecoderHead
from .mlp import MLPHead
from .verbalizer import VerbalizerHead

__all__ = ["Head", "MLPHead", "VerbalizerHead", "LabelDecoderHead"]
