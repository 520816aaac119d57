"""Objectives and post-hoc calibration."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Focal loss (Lin et al., 2017): ``-(1 - p_t)^γ log p_t``, averaged over the batch."""
    logp = F.log_softmax(logits.float(), dim=-1).gather(1, target[:, None]).squeeze(1)  # (batch,)
    return (-(1 - logp.exp()) ** gamma * logp).mean()


def classification_loss(logits: torch.Tensor, target: torch.Tensor, loss: str,
                        focal_gamma: float) -> torch.Tensor:
    if loss == "ce":
        return F.cross_entropy(logits.float(), target)
    if loss == "focal":
        return focal_loss(logits, target, focal_gamma)
    raise ValueError(f"unknown loss {loss!r}")


def eta_norm(logits: torch.Tensor, class_weight: torch.Tensor, eta: float) -> torch.Tensor:
    """η-norm (Kang et al., 2020): divide each class score ``w_c·h + b_c`` by ``‖w_c‖^η``."""
    return logits / class_weight.norm(dim=-1).clamp_min(1e-12) ** eta
