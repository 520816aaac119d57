"""A cosine (normalised) classifier: ``s · cos(w_c, h)``, optionally started from class prototypes."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import HEADS, BuildContext, check_choice, check_min
from .base import Head


class CosineHead(Head):
    """``scores_c = s · <w_c / ‖w_c‖, h / ‖h‖>`` (Gidaris & Komodakis, 2018; the normalised classifier of
    long-tail work such as Kang et al., 2020): every class weight has the same norm, so a head class
    cannot win by a larger weight, and the scale ``s`` (the inverse temperature) sets how peaked the
    softmax is. With ``init_from = prototypes`` each ``w_c`` starts as the mean read vector of class
    ``c``'s training texts: before the first step the head is the nearest-class-mean classifier of
    what the backbone already says."""

    def __init__(self, hidden: int, n_classes: int, scale: float = 16.0, learn_scale: bool = False,
                 dropout: float = 0.0, prototypes: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, hidden) * 0.02)
        log_scale = torch.tensor(float(scale)).log()
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:  # a buffer: what trains is decided by the head's parameters alone
            self.register_buffer("log_scale", log_scale)
        self.dropout = nn.Dropout(dropout)
        self.wants_prototypes = prototypes

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, hidden) -> (batch, classes), computed in float32."""
        with torch.autocast(h.device.type, enabled=False):
            z = F.normalize(self.dropout(h.float()), dim=-1)
            return self.log_scale.exp() * z @ F.normalize(self.weight.float(), dim=-1).T

    def init_from_prototypes(self, prototypes: torch.Tensor) -> None:
        """``prototypes``: (classes, hidden) mean read vectors; a class without any keeps its random start."""
        with torch.no_grad():
            found = prototypes.norm(dim=-1) > 0
            self.weight[found] = prototypes[found].to(self.weight.dtype)

    def class_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = F.normalize(self.weight, dim=-1) * self.log_scale.exp()
        return w, torch.zeros(w.shape[0], device=w.device)


@dataclass
class CosineOptions:
    scale: float = 16.0
    """cosine head: scale s of the cosine scores (inverse temperature)"""
    learn_scale: bool = False
    """cosine head: train the scale too"""
    head_dropout: float = 0.0
    """cosine head: dropout on the read vector"""
    init_from: str = "prototypes"
    """cosine head: class weights start from the class prototypes (mean read vector of each class's training
    texts) or random"""

    def __post_init__(self) -> None:
        check_min(self, "scale", 0.0, strict=True)
        check_min(self, "head_dropout", 0.0)
        check_choice(self, "init_from", ("prototypes", "random"))


@HEADS.register("cosine", CosineOptions, description="cosine classifier s·cos(w_c, h), started from class "
                "prototypes", reads="vector")
def build_cosine(opts: CosineOptions, ctx: BuildContext) -> CosineHead:
    return CosineHead(ctx.hidden, len(ctx.labels), opts.scale, opts.learn_scale, opts.head_dropout,
                      opts.init_from == "prototypes")
