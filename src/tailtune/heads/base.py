"""What every head offers the classifier and the training loop."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Head(nn.Module):
    """Maps what the readout gives (a vector per example, or the sequence and its mask) to one
    score per class.

    ``layers`` is ``"last"`` (the encoder's last hidden states) or ``"all"`` (every layer's, stacked
    as ``(batch, seq, layers + 1, hidden)``, e.g. for one classifier per layer). ``loss`` is the
    training loss; a head with an auxiliary loss (per-layer classifiers, a regulariser) overrides it.
    ``class_weights()`` gives the effective per-class weight vectors and biases of the last linear
    map (η-norm calibration, the weight-norm analysis of the long-tail paper). A head with
    ``wants_prototypes`` is started by ``train()`` from the mean read vector of each class.
    """

    layers = "last"
    wants_prototypes = False  # True: training starts the class weights from the class prototypes

    def init_from_prototypes(self, prototypes: torch.Tensor) -> None:
        """Start the class weights from ``prototypes`` (classes, dim): each class's mean read vector."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None, target: torch.Tensor,
             objective: Objective) -> torch.Tensor:
        return objective(logits, target)

    def class_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def layer_weights(self) -> torch.Tensor | None:
        """For a head that reads every layer: how much each layer's read vector (layers 1..L) counts in a
        loss on the representation, such as the contrastive stage's pair loss; None: the last layer only."""
        return None
