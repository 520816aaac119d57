"""The input-format axis: how a text (and an optional second text) becomes the tokens the encoder reads.

An input format turns texts into ``Encoded`` examples (token ids, the [MASK] position when it has
one, soft-token positions). ``attach`` adds what the format trains (soft prompt tokens) once the
rest of the classifier is built. A format may draw on a pool of labelled examples (``set_pool``,
called with the training set; e.g. demonstrations): ``encode`` then gets the epoch and, for texts
that come from the pool, their index in it (so an example never serves as its own demonstration).
A format whose ``resamples`` is true is re-encoded by ``train()`` every epoch; the formats here
encode once.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..backbone import embedding_rows
from ..errors import ConfigError
from ..registry import INPUT_FORMATS, BuildContext, NoOptions, check_choice, check_min
from ..text import Encoded, Template, TemplateError, encode_plain, special_tokens
from .verbalizer import Verbalizer, readable

DEFAULT_TEMPLATE = "{text} It is about {mask} ."

__all__ = ["Encoded", "Template", "TemplateError", "Verbalizer", "readable", "special_tokens", "encode_plain",
           "DEFAULT_TEMPLATE", "InputFormat", "PlainInput", "TemplateInput", "TemplateOptions"]


class InputFormat:
    """What every input format offers (the defaults: no [MASK], no pool, nothing to train)."""

    has_mask = False
    resamples = False  # True: inputs are drawn anew each epoch (train() re-encodes)
    max_length: int  # tokens per encoded input; prediction may raise it (TailtuneClassifier.set_max_length)

    def encode(self, texts: list[str], texts_b: list[str] | None = None, epoch: int | None = None,
               pool_index: list[int | None] | None = None) -> list[Encoded]:
        raise NotImplementedError

    def set_pool(self, examples: Any) -> None:
        """The labelled examples the format may draw on (the training set)."""

    def pool_state(self) -> dict | None:
        """What a save must hold for the format to encode again (its pool), as JSON; None: nothing."""
        return None

    def load_pool(self, state: dict) -> None:
        raise ConfigError(f"{type(self).__name__} draws on no pool")

    def attach(self, ctx: BuildContext, head: nn.Module) -> dict[str, nn.Parameter]:
        return {}


class PlainInput(InputFormat):
    """``[CLS] text [SEP] (text_b [SEP])``."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def encode(self, texts: list[str], texts_b: list[str] | None = None, epoch: int | None = None,
               pool_index: list[int | None] | None = None) -> list[Encoded]:
        return encode_plain(self.tokenizer, texts, texts_b, self.max_length)


@INPUT_FORMATS.register("plain", NoOptions, description="[CLS] text [SEP] (a second text after another [SEP])",
                        has_mask=False)
def build_plain(opts: NoOptions, ctx: BuildContext) -> PlainInput:
    return PlainInput(ctx.tokenizer, ctx.config.max_length)


@dataclass
class TemplateOptions:
    template: str = DEFAULT_TEMPLATE
    """prompt template with {text}, optional {text_b}, exactly one {mask}, and soft tokens anywhere: {soft}, {soft:N}
    or {soft:words} (started from these words' embeddings)"""
    soft_tokens: int = 0
    """soft prompt tokens prepended to the template"""
    soft_init: str = "vocab"
    """start of soft tokens without given words: vocab (random common words' embeddings) or random"""
    prompt_init: str | None = None
    """directory of a pre-trained prompt (tailtune pretrain-prompt): the prepended soft tokens start from it"""

    def __post_init__(self) -> None:
        check_min(self, "soft_tokens", 0)
        check_choice(self, "soft_init", ("vocab", "random"))
        if self.prompt_init and not self.soft_tokens:
            raise ConfigError("prompt_init needs soft_tokens > 0 (the pre-trained prompt's length)")
        Template(self.full_template)  # fail early on a bad template

    @property
    def full_template(self) -> str:
        """The template with the prepended soft tokens spelled out."""
        return (f"{{soft:{self.soft_tokens}}} " if self.soft_tokens else "") + self.template


class TemplateInput(InputFormat):
    """A prompt: the template's words, the text slots (the only part ever truncated), one [MASK]
    and optional trainable soft tokens (``Classifier.tuning.soft_prompt``)."""

    has_mask = True

    def __init__(self, opts: TemplateOptions, tokenizer: Any, max_length: int) -> None:
        self.opts, self.tokenizer, self.max_length = opts, tokenizer, max_length
        self.template = Template(opts.full_template)

    def encode(self, texts: list[str], texts_b: list[str] | None = None, epoch: int | None = None,
               pool_index: list[int | None] | None = None) -> list[Encoded]:
        if texts_b is not None and not self.template.uses_text_b:
            warnings.warn(f"the data has a second text but the template {self.opts.template!r} has no "
                          f"{{text_b}} slot: the second text is ignored", stacklevel=3)
        return self.template.encode(self.tokenizer, texts, texts_b, self.max_length)

    def attach(self, ctx: BuildContext, head: nn.Module) -> dict[str, nn.Parameter]:
        """The soft prompt ``(soft tokens, hidden)``: from the given words' embeddings, else by
        ``soft_init``; the prepended ones from a pre-trained prompt when ``prompt_init`` is set."""
        ids = self.template.soft_init_ids(ctx.tokenizer)
        if not ids:
            return {}
        emb = ctx.encoder.get_input_embeddings().weight.detach()
        missing = [k for k, i in enumerate(ids) if i is None]
        rows = emb[[i if i is not None else 0 for i in ids]].clone()
        if missing:
            rows[missing] = embedding_rows(ctx.encoder, ctx.tokenizer, len(missing), self.opts.soft_init)
        soft = nn.Parameter(rows)
        if self.opts.prompt_init and not ctx.loading:  # a saved classifier's weights already hold it
            self._load_prompt(ctx, soft, head)
        ctx.router.add_soft_prompt(ctx.task, soft)
        return {"soft_prompt": soft}

    def _load_prompt(self, ctx: BuildContext, soft: nn.Parameter, head: nn.Module) -> None:
        from ..artefacts import load_prompt
        tensors, _ = load_prompt(self.opts.prompt_init, ctx.encoder, self.opts.soft_tokens)
        own = dict(head.named_parameters())
        carried = {name[5:]: value for name, value in tensors.items() if name.startswith("head.")}
        # the head the prompt was pre-trained with (a verbalizer head's transform) starts this head too,
        # when it is the same kind of head
        fits = carried and all(k in own and own[k].shape == v.shape for k, v in carried.items())
        with torch.no_grad():
            soft[:self.opts.soft_tokens] = tensors["soft_prompt"]
            for name, value in (carried.items() if fits else ()):
                own[name].copy_(value)


@INPUT_FORMATS.register("template", TemplateOptions, description="a prompt template with a [MASK] (hard words, "
                        "soft tokens or both)", has_mask=True)
def build_template(opts: TemplateOptions, ctx: BuildContext) -> TemplateInput:
    return TemplateInput(opts, ctx.tokenizer, ctx.config.max_length)
