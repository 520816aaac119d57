"""Prompt-tuning's head: the MLM head restricted to the verbalizer's label words at [MASK]."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..errors import ConfigError
from ..inputs.verbalizer import Verbalizer
from ..registry import HEADS, INPUT_FORMATS, BuildContext
from .base import Head

if TYPE_CHECKING:
    from ..backbone import MLMParts


class VerbalizerHead(Head):
    """MLM head restricted to the verbalizer's tokens (prompt-tuning).

    ``z = LN(act(dense(h)))``; a token's logit is ``z · E_t + b_t`` with ``E`` the decoder
    (output embedding) matrix; a class's score is the mean logit over its words' sub-tokens,
    averaged over its words. Only the label tokens' rows of ``E`` are ever multiplied, never
    the whole vocabulary. With a tied ``E`` the decoder is the input embedding matrix; with
    decoupled embeddings ("w/ ed.") it is a trainable copy.
    """

    def __init__(self, hidden: int, decoder_weight: nn.Parameter, bias: nn.Parameter,
                 class_tokens: list[list[list[int]]], activation: str = "gelu", ln_eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.act = ACT2FN[activation]
        self.layer_norm = nn.LayerNorm(hidden, eps=ln_eps)
        self.decoder_weight = decoder_weight  # (vocab, hidden), maybe shared with the input embeddings
        self.bias = bias                      # (vocab,)
        token_ids = sorted({t for words in class_tokens for word in words for t in word})
        col = {t: j for j, t in enumerate(token_ids)}
        avg = torch.zeros(len(class_tokens), len(token_ids))
        for c, words in enumerate(class_tokens):
            for word in words:
                for t in word:
                    avg[c, col[t]] += 1.0 / (len(word) * len(words))
        self.register_buffer("token_ids", torch.tensor(token_ids, dtype=torch.long), persistent=False)
        self.register_buffer("token_to_class", avg, persistent=False)  # (classes, label tokens)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, hidden) -> (batch, classes)."""
        z = self.layer_norm(self.act(self.dense(h)))
        token_logits = z @ self.decoder_weight[self.token_ids].T + self.bias[self.token_ids]  # (batch, label tokens)
        return token_logits @ self.token_to_class.T

    def vocab_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The whole MLM head on hidden states ``(n, hidden)`` -> ``(n, vocab)`` (PET's auxiliary MLM loss)."""
        return self.layer_norm(self.act(self.dense(h))) @ self.decoder_weight.T + self.bias

    def class_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.token_to_class @ self.decoder_weight[self.token_ids]  # (classes, hidden)
        return w, self.token_to_class @ self.bias[self.token_ids]

    def load_pretrained(self, parts: "MLMParts") -> None:
        """Copy the pretrained transform (dense + LayerNorm) and output bias."""
        with torch.no_grad():
            self.dense.load_state_dict(parts.dense.state_dict())
            self.layer_norm.load_state_dict(parts.layer_norm.state_dict())
            self.bias.copy_(parts.bias)


@dataclass
class VerbalizerOptions:
    decouple_embeddings: bool = False
    """train a copy of the output embeddings apart from the input ones ("w/ ed.")"""


def _needs_template(config: Any) -> None:
    if not INPUT_FORMATS.get(config.input_format).trait("has_mask"):
        raise ConfigError(f"head='verbalizer' scores label words at the [MASK]: it needs an input with one "
                          f"(input_format='template', as in --preset prompt), not input_format={config.input_format!r}")


@HEADS.register("verbalizer", VerbalizerOptions, description="pretrained MLM head + verbalizer: label-word logits at "
                "[MASK]", reads="vector", requires={"readout": ("mask",)}, check=_needs_template,
                uses_label_words=True, needs_mlm_head=True,
                takes_unlabeled=lambda config, mlm_weight: bool(mlm_weight))  # (PET's auxiliary MLM loss)
def build_verbalizer(opts: VerbalizerOptions, ctx: BuildContext) -> VerbalizerHead:
    verbalizer = ctx.verbalizer or Verbalizer(ctx.labels)
    if verbalizer.labels != ctx.labels:
        raise ConfigError("the verbalizer's labels differ from the classifier's label space")
    emb = ctx.encoder.get_input_embeddings().weight
    decoder = nn.Parameter(emb.detach().clone()) if opts.decouple_embeddings else emb
    bias = nn.Parameter(torch.zeros(emb.shape[0]))
    token_map = verbalizer.token_ids(ctx.tokenizer)
    enc_cfg = ctx.encoder.config
    act = getattr(enc_cfg, "hidden_act", getattr(enc_cfg, "activation", "gelu"))
    head = VerbalizerHead(ctx.hidden, decoder, bias, [token_map[y] for y in ctx.labels],
                          act if isinstance(act, str) else "gelu", ctx.ln_eps)
    if ctx.mlm is not None:
        head.load_pretrained(ctx.mlm)
        if ctx.mlm.missing:
            warnings.warn(
                f"backbone {ctx.backbone_name!r} has no pretrained MLM head ({', '.join(ctx.mlm.missing)} missing): "
                f"the head's transform (dense + LayerNorm) is initialised randomly and the output bias is zero; "
                f"the decoder is the pretrained {'(copied) ' if opts.decouple_embeddings else '(tied) '}input "
                f"embedding matrix. Prompt-based results on this backbone are not those of a real MLM head.",
                stacklevel=4)
    return head
