"""The readout axis: what the head reads from the encoder's token vectors.

A readout maps token features ``(batch, seq, hidden)`` (or ``(batch, seq, layers, hidden)`` when
the head asks for every layer), the attention mask ``(batch, seq)`` and the input format's read
position ``(batch,)`` to ``(x, mask)``: a vector per example (``mask`` None) or the whole sequence
with its mask, for heads that read every token.
"""
from __future__ import annotations

from typing import Any

import torch

from .errors import ConfigError
from .registry import INPUT_FORMATS, READOUTS, BuildContext, NoOptions

Read = tuple[torch.Tensor, "torch.Tensor | None"]


class FirstToken:
    """The first token's vector ([CLS] for BERT, <s> for RoBERTa)."""

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor, position: torch.Tensor) -> Read:
        return hidden[:, 0], None  # (batch, [layers,] hidden)


class AtPosition:
    """The vector at the input format's read position: the [MASK] of a template."""

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor, position: torch.Tensor) -> Read:
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), position], None


class MeanPool:
    """The mean of the token vectors under the attention mask (sentence-transformers' mean pooling)."""

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor, position: torch.Tensor) -> Read:
        weights = mask.to(hidden.dtype).reshape(*mask.shape, *([1] * (hidden.dim() - 2)))  # (batch, seq, [1,] 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1), None


class MaxPool:
    """The elementwise maximum of the token vectors under the attention mask."""

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor, position: torch.Tensor) -> Read:
        keep = mask.bool().reshape(*mask.shape, *([1] * (hidden.dim() - 2)))
        return hidden.masked_fill(~keep, torch.finfo(hidden.dtype).min).amax(1), None


class EveryToken:
    """All token vectors and the attention mask, for heads that attend over the sequence."""

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor, position: torch.Tensor) -> Read:
        return hidden, mask  # (batch, seq, [layers,] hidden), (batch, seq)


def resolve_auto(config: Any, backbone: Any) -> str:
    """What ``readout='auto'`` reads: every token for a head that reads the sequence, the [MASK] of a
    template, else the pooling the backbone declares (a sentence-transformers model's pooling
    config: mean or max), else [CLS]."""
    if config.entry("head").trait("reads") == "sequence":
        return "tokens"
    if INPUT_FORMATS.get(config.input_format).trait("has_mask"):
        return "mask"
    declared = getattr(backbone, "pooling", None)
    return declared if declared in READOUTS else "cls"


def _needs_mask_slot(config: Any) -> None:
    if not INPUT_FORMATS.get(config.input_format).trait("has_mask"):
        raise ConfigError(f"readout='mask' reads the [MASK] vector, but input_format={config.input_format!r} has "
                          f"no [MASK]; use a template input (input_format='template')")


@READOUTS.register("auto", NoOptions, description="chosen when the classifier is built: every token for a head that "
                   "reads the sequence, else the template's [MASK], else the pooling the backbone declares, else "
                   "[CLS]", reads="any", resolve=resolve_auto)
def build_auto(opts: NoOptions, ctx: BuildContext) -> Any:
    raise ConfigError("readout='auto' is resolved before the classifier is built")  # pragma: no cover


@READOUTS.register("cls", NoOptions, description="[CLS] (the first token)", reads="vector")
def build_cls(opts: NoOptions, ctx: BuildContext) -> FirstToken:
    return FirstToken()


@READOUTS.register("mask", NoOptions, description="the [MASK] of the template", reads="vector",
                   check=_needs_mask_slot)
def build_mask(opts: NoOptions, ctx: BuildContext) -> AtPosition:
    return AtPosition()


@READOUTS.register("mean", NoOptions, description="mean of the token vectors (padding left out)", reads="vector")
def build_mean(opts: NoOptions, ctx: BuildContext) -> MeanPool:
    return MeanPool()


@READOUTS.register("max", NoOptions, description="elementwise max of the token vectors (padding left out)",
                   reads="vector")
def build_max(opts: NoOptions, ctx: BuildContext) -> MaxPool:
    return MaxPool()


@READOUTS.register("tokens", NoOptions, description="every token, with the attention mask", reads="sequence")
def build_tokens(opts: NoOptions, ctx: BuildContext) -> EveryToken:
    return EveryToken()
