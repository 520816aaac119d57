"""What every head offers the classifier and the training loop."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..registry import check_choice, check_min

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
    saved_buffers: tuple[str, ...] = ()  # state fitted after training, not trained: a task module saves it too

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


LAYER_NORMS = ("none", "fresh", "pretrained", "auto")


@dataclass
class LayerNormOptions:
    """The options of a head with an optional LayerNorm before its output layer; a head's options dataclass
    inherits them (calling this ``__post_init__`` from its own) and registers with ``**LAYER_NORM_TRAITS``."""

    layer_norm: str = "none"
    """LayerNorm before the output layer: none, fresh, pretrained (copied from the MLM head's), or auto (fresh where
    the classes average layer_norm_from training examples or more, else none)"""
    layer_norm_from: float = 64.0
    """layer_norm=auto: the examples per class, on average, from which the head has a fresh LayerNorm"""

    def __post_init__(self) -> None:
        check_choice(self, "layer_norm", LAYER_NORMS)
        check_min(self, "layer_norm_from", 0.0)


def layer_norm_for_data(opts: LayerNormOptions, facts: dict) -> dict[str, str]:
    """The ``fit_options`` trait of a head with ``LayerNormOptions``: ``layer_norm=auto``, chosen from the training
    data, is a fresh LayerNorm where the classes average ``layer_norm_from`` examples or more, else none. Its gain
    and shift per dimension are 2 × hidden parameters learnt from scratch: with enough examples per class they pay
    (R52, the held-out SST-5 long tails), with 8 to 24 per class they cost (the K-shot subsets; README, "The
    default")."""
    if opts.layer_norm != "auto":
        return {}
    return {"layer_norm": "fresh" if facts.get("per_class", 0.0) >= opts.layer_norm_from else "none"}


# the registry traits of a head with LayerNormOptions: ``pretrained`` copies the MLM head's LayerNorm, and ``auto``
# is chosen by ``fit`` from the training data
LAYER_NORM_TRAITS = {"needs_mlm_head": lambda o: o.layer_norm == "pretrained", "fit_options": layer_norm_for_data}


def build_layer_norm(choice: str, ctx: Any) -> nn.LayerNorm | None:
    """A head's LayerNorm over the hidden size: ``none``, ``fresh`` (γ = 1, β = 0) or ``pretrained`` (copied from
    the backbone's MLM-head transform, as the long-tail paper's "w/ pretrained LN" ablation does; fresh, with a
    warning, where the checkpoint has none). ``auto`` is chosen by ``fit`` from the training data
    (``layer_norm_for_data``); where no data chose (e.g. a zero-shot build), it is none."""
    if choice in ("none", "auto"):
        return None
    layer_norm = nn.LayerNorm(ctx.hidden, eps=ctx.ln_eps)
    if choice == "pretrained" and ctx.mlm is not None:
        if "LayerNorm" in ctx.mlm.missing:
            warnings.warn(f"backbone {ctx.backbone_name!r} has no pretrained MLM-head LayerNorm: the head's "
                          f"LayerNorm is initialised fresh (as layer_norm='fresh')", stacklevel=5)
        else:
            with torch.no_grad():
                layer_norm.load_state_dict(ctx.mlm.layer_norm.state_dict())
    return layer_norm
