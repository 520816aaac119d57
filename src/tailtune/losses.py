"""Objectives and post-hoc calibration."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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


def classification_loss(logits: torch.Tensor, target: torch.Tensor, loss: str,
                        focal_gamma: float, margin: float = 1.0) -> torch.Tensor:
    if loss == "triplet":
        return triplet_loss(logits, target, margin)
    if loss == "ce":
        return F.cross_entropy(logits.float(), target)
    if loss == "focal":
        return focal_loss(logits, target, focal_gamma)
    raise ValueError(f"unknown loss {loss!r}")


def eta_norm(logits: torch.Tensor, class_weight: torch.Tensor, eta: float) -> torch.Tensor:
    """η-norm (Kang et al., 2020): divide each class score ``w_c·h + b_c`` by ``‖w_c‖^η``."""
    return logits / class_weight.norm(dim=-1).clamp_min(1e-12) ** eta
