"""A cosine (normalised) classifier: ``s · cos(w_c, h)``, optionally started from class prototypes and optionally
after a LayerNorm."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import HEADS, BuildContext, check_choice, check_min
from .base import LAYER_NORM_TRAITS, Head, LayerNormOptions, build_layer_norm


class CosineHead(Head):
    """``scores_c = s · <w_c / ‖w_c‖, h / ‖h‖>`` (Gidaris & Komodakis, 2018; the normalised classifier of
    long-tail work such as Kang et al., 2020): every class weight has the same norm, so a head class
    cannot win by a larger weight, and the scale ``s`` (the inverse temperature) sets how peaked the
    softmax is. With ``init_from = prototypes`` each ``w_c`` starts as the mean read vector of class
    ``c``'s training texts: before the first step the head is the nearest-class-mean classifier of
    what the backbone already says.

    With a ``layer_norm``, ``h`` is ``LayerNorm(h)`` (and so are the prototypes): cosine similarity ignores the
    scale it sets, so what it adds is centring each vector and a learnt per-dimension gain and shift, which can
    take out the direction every sentence vector shares."""

    def __init__(self, hidden: int, n_classes: int, scale: float = 16.0, learn_scale: bool = False,
                 dropout: float = 0.0, prototypes: bool = True, layer_norm: nn.LayerNorm | None = None) -> None:
        super().__init__()
        self.layer_norm = layer_norm
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
            z = F.normalize(self._features(self.dropout(h.float())), dim=-1)
            return self.log_scale.exp() * z @ F.normalize(self.weight.float(), dim=-1).T

    def _features(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` in float32, through the LayerNorm if there is one (its weights in float32 too, as the class weights)."""
        ln = self.layer_norm
        return h if ln is None else F.layer_norm(h, ln.normalized_shape, ln.weight.float(), ln.bias.float(), ln.eps)

    def init_from_prototypes(self, prototypes: torch.Tensor) -> None:
        """``prototypes``: (classes, hidden) mean read vectors; a class without any keeps its random start. With a
        LayerNorm, each is passed through it (the mean of a class's normalised vectors, so nearly the mean of their
        LayerNorm'd directions)."""
        with torch.no_grad():
            found = prototypes.norm(dim=-1) > 0
            self.weight[found] = self._features(prototypes[found].float()).to(self.weight.dtype)

    def class_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = F.normalize(self.weight, dim=-1) * self.log_scale.exp()
        return w, torch.zeros(w.shape[0], device=w.device)


@dataclass
class CosineOptions(LayerNormOptions):
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
        super().__post_init__()
        check_min(self, "scale", 0.0, strict=True)
        check_min(self, "head_dropout", 0.0)
        check_choice(self, "init_from", ("prototypes", "random"))


@HEADS.register("cosine", CosineOptions, description="cosine classifier s·cos(w_c, h), started from class "
                "prototypes", reads="vector", **LAYER_NORM_TRAITS,
                # (options added after `auto` runs were recorded and saved)
                neutral_options={"layer_norm": "none", "layer_norm_from": 64.0})
def build_cosine(opts: CosineOptions, ctx: BuildContext) -> CosineHead:
    layer_norm = build_layer_norm(opts.layer_norm, ctx)
    return CosineHead(ctx.hidden, len(ctx.labels), opts.scale, opts.learn_scale, opts.head_dropout,
                      opts.init_from == "prototypes", layer_norm)
