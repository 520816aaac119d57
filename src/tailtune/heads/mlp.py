"""The MLP head of CLS-tuning: ``Linear -> act -> Dropout [-> LayerNorm] -> Linear``."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..registry import HEADS, BuildContext, check_choice, check_min
from .base import LAYER_NORM_TRAITS, Head, LayerNormOptions, build_layer_norm


class MLPHead(Head):
    """``Linear -> act -> Dropout [-> LayerNorm] -> Linear`` (CLS-tuning; "w/ LN" adds the LayerNorm)."""

    def __init__(self, hidden: int, n_classes: int, activation: str = "tanh",
                 dropout: float = 0.1, layer_norm: nn.LayerNorm | None = None) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.act = ACT2FN[activation]
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = layer_norm
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        z = self.dropout(self.act(self.dense(h)))  # (batch, hidden)
        if self.layer_norm is not None:
            z = self.layer_norm(z)
        return self.out(z)  # (batch, classes)

    def class_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.out.weight, self.out.bias


@dataclass
class MLPOptions(LayerNormOptions):
    activation: str = "tanh"
    """activation of the MLP head: tanh, relu or gelu"""
    dropout: float = 0.1
    """dropout of the MLP head"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self, "activation", ("tanh", "relu", "gelu"))
        check_min(self, "dropout", 0.0)


@HEADS.register("mlp", MLPOptions, description="Linear -> act -> Dropout [-> LayerNorm] -> Linear on the read vector",
                reads="vector", **LAYER_NORM_TRAITS,
                # (an option added after runs were recorded and saved)
                neutral_options={"layer_norm_from": 64.0})
def build_mlp(opts: MLPOptions, ctx: BuildContext) -> MLPHead:
    return MLPHead(ctx.hidden, len(ctx.labels), opts.activation, opts.dropout,
                   build_layer_norm(opts.layer_norm, ctx))
