"""The objective axis (training losses) and the calibration axis (post-hoc score adjustments).

An objective builder returns a callable ``(logits (batch, classes), target (batch,)) -> loss``;
losses compute in float32 whatever the autocast dtype. A calibration builder returns a callable
``(logits, classifier) -> logits`` applied at prediction time only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .registry import CALIBRATIONS, OBJECTIVES, BuildContext, NoOptions, check_min

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Calibration = Callable[[torch.Tensor, Any], torch.Tensor]


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Focal loss (Lin et al., 2017): ``-(1 - p_t)^γ log p_t``, averaged over the batch."""
    logp = F.log_softmax(logits.float(), dim=-1).gather(1, target[:, None]).squeeze(1)  # (batch,)
    return (-(1 - logp.exp()) ** gamma * logp).mean()


def triplet_loss(scores: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Y-Tuning's margin loss: the gold label must outscore every other label by ``margin``;
    ``max(0, margin - s_gold + s_k)`` averaged over the other labels and the batch."""
    scores = scores.float()
    gold = scores.gather(1, target[:, None])  # (batch, 1)
    hinge = (margin - gold + scores).clamp_min(0)
    others = torch.ones_like(hinge, dtype=torch.bool).scatter_(1, target[:, None], False)
    return (hinge * others).sum(1).mean() / max(1, scores.shape[1] - 1)


def eta_norm(logits: torch.Tensor, class_weight: torch.Tensor, eta: float) -> torch.Tensor:
    """η-norm (Kang et al., 2020): divide each class score ``w_c·h + b_c`` by ``‖w_c‖^η``."""
    return logits / class_weight.norm(dim=-1).clamp_min(1e-12) ** eta


# ---------------------------------------------------------------- objectives

@OBJECTIVES.register("ce", NoOptions, description="cross-entropy")
def build_ce(opts: NoOptions, ctx: BuildContext) -> Loss:
    return lambda logits, target: F.cross_entropy(logits.float(), target)


@dataclass
class FocalOptions:
    focal_gamma: float = 1.0
    """γ of the focal loss (0: cross-entropy)"""

    def __post_init__(self) -> None:
        check_min(self, "focal_gamma", 0.0)


@OBJECTIVES.register("focal", FocalOptions, description="focal loss (Lin et al., 2017)")
def build_focal(opts: FocalOptions, ctx: BuildContext) -> Loss:
    return lambda logits, target: focal_loss(logits, target, opts.focal_gamma)


@dataclass
class TripletOptions:
    margin: float = 1.0
    """margin of the triplet loss: how far the gold label's score must lead every other"""

    def __post_init__(self) -> None:
        check_min(self, "margin", 0.0, strict=True)


@OBJECTIVES.register("triplet", TripletOptions, description="margin (triplet) loss of Y-Tuning")
def build_triplet(opts: TripletOptions, ctx: BuildContext) -> Loss:
    return lambda logits, target: triplet_loss(logits, target, opts.margin)


# ---------------------------------------------------------------- calibration

@CALIBRATIONS.register("none", NoOptions, description="raw class scores")
def build_no_calibration(opts: NoOptions, ctx: BuildContext) -> Calibration:
    return lambda logits, model: logits


@dataclass
class EtaNormOptions:
    eta: float = 1.1
    """η of η-norm: class scores are divided by ||w_c||^η at prediction"""

    def __post_init__(self) -> None:
        check_min(self, "eta", 0.0)


@CALIBRATIONS.register("eta-norm", EtaNormOptions, description="η-norm: scores divided by the class weight norm^η "
                       "(Kang et al., 2020)")
def build_eta_norm(opts: EtaNormOptions, ctx: BuildContext) -> Calibration:
    return lambda logits, model: eta_norm(logits, model.head.class_weights()[0].detach().float(), opts.eta)
