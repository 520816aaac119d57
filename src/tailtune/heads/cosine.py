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
    take out the direction every sentence vector shares.

    A **memory** of training texts (``set_memory``; the ``memory`` stage fills it after training) mixes in, for each
    class, the cosine of its nearest remembered text: ``s · ((1 − λ)·cos(w_c, h) + λ·max_{i in c} cos(v_i, h))``, the
    ``v_i`` and ``h`` taken the same way (through the LayerNorm, normalised). A class whose few texts do not look alike
    keeps each of them, where its one class weight stands for their mean. Empty, the head scores as above."""

    saved_buffers = ("memory", "memory_labels", "memory_weight")  # fitted after training; a task module saves them

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
        self.register_buffer("memory", torch.empty(0, hidden))
        self.register_buffer("memory_labels", torch.empty(0, dtype=torch.long))
        self.register_buffer("memory_weight", torch.tensor(0.0))

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, hidden) -> (batch, classes), computed in float32."""
        with torch.autocast(h.device.type, enabled=False):
            z = self.unit_vectors(self.dropout(h.float()))
            cos = z @ F.normalize(self.weight.float(), dim=-1).T
            if self.memory_labels.numel() and float(self.memory_weight) > 0:
                lam = self.memory_weight.float()
                cos = (1 - lam) * cos + lam * self.nearest(z, cos)
            return self.log_scale.exp() * cos

    def nearest(self, z: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        """(batch, classes): each class's best cosine between the unit vectors ``z`` and its remembered texts."""
        return nearest_cosines(z, self.memory.float(), self.memory_labels, cos)

    @torch.no_grad()
    def set_memory(self, h: torch.Tensor, labels: torch.Tensor, weight: float) -> None:
        """Remember read vectors ``h`` (n, hidden) of texts of class indices ``labels``, mixed in with weight λ."""
        self.memory = self.unit_vectors(h).to(self.memory.device)
        self.memory_labels = labels.to(self.memory_labels.device, torch.long).clone()  # (its own storage: a save)
        self.set_memory_weight(weight)

    def forget_memory(self) -> None:
        """Keep no memory: the scores are the class weights' alone, and a save holds none."""
        self.memory = self.memory[:0].clone()  # (empty tensors of their own storage: a save)
        self.memory_labels = self.memory_labels[:0].clone()
        self.set_memory_weight(0.0)

    def set_memory_weight(self, weight: float) -> None:
        """λ, the memory's weight in the scores (its texts kept)."""
        self.memory_weight = torch.tensor(float(weight), device=self.memory_weight.device)

    def unit_vectors(self, h: torch.Tensor) -> torch.Tensor:
        """(n, hidden) read vectors as the head compares them (and remembers them): through the LayerNorm if there
        is one, in float32, of unit length."""
        return F.normalize(self._features(h.float()), dim=-1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """The memory's size comes from what is loaded; a save without a memory (from before it existed, or a
        classifier without the stage) loads as an empty one."""
        for name in self.saved_buffers:
            current = getattr(self, name)
            loaded = state_dict.setdefault(prefix + name, torch.zeros_like(current) if name == "memory_weight"
                                           else current.new_empty((0, *current.shape[1:])))
            setattr(self, name, current.new_empty(loaded.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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


def nearest_cosines(z: torch.Tensor, memory: torch.Tensor, labels: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """(batch, classes): for each class, the best cosine between the unit vectors ``z`` (batch, dim) and the unit
    vectors of ``memory`` (n, dim) whose class index in ``labels`` (n,) it is; a class without any keeps ``cos``."""
    best = torch.full_like(cos, float("-inf")).scatter_reduce(1, labels.expand(z.shape[0], -1), z @ memory.T,
                                                              reduce="amax")
    return torch.where(torch.isinf(best), cos, best)


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
