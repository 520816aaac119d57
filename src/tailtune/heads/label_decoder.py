"""Y-Tuning's head: label embeddings and a small transformer decoder over frozen token features."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..backbone import embedding_rows
from ..errors import ConfigError
from ..inputs.verbalizer import Verbalizer
from ..registry import HEADS, BuildContext, check_choice, check_min
from .base import Head

POINTERS = ("linear", "task", "max")


class LabelDecoderHead(Head):
    """Y-Tuning (Liu et al., 2022): learn label representations that attend to frozen text features.

    Queries are a task embedding followed by ``vectors`` embeddings per label (in the backbone's
    hidden space, so they can start from label-word embeddings). A small transformer decoder
    lets them attend to each other (self-attention) and to the text's token features
    (cross-attention). The label pointer pools each label's output vectors (mean over its
    vectors) to one score: ``linear`` (default) ``s_k = w . z_k + b``, a learned pooling that
    starts as the mean over dimensions (plain mean pooling is no option: after the final
    LayerNorm it scores every label alike); ``task`` ``s_k = <z_task, z_k> / sqrt(width)``; ``max``
    over dimensions. On TREC-50 (frozen MiniLM, 10 epochs, lr 1e-3) the linear
    pointer beat the task dot product; see the README.
    """

    def __init__(self, hidden: int, label_init: torch.Tensor, vectors: int = 1, layers: int = 2,
                 heads: int = 4, width: int | None = None, dropout: float = 0.1, pointer: str = "linear") -> None:
        super().__init__()
        width = width or hidden
        if width % heads:
            raise ConfigError(f"label decoder: width {width} is not divisible by {heads} heads")
        self.n_labels, self.vectors, self.width = label_init.shape[0] // vectors, vectors, width
        self.task = nn.Parameter(label_init.mean(0, keepdim=True).clone())  # (1, hidden)
        self.labels = nn.Parameter(label_init.clone())  # (labels x vectors, hidden)
        self.proj = nn.Linear(hidden, width) if width != hidden else nn.Identity()
        layer = nn.TransformerDecoderLayer(width, heads, dim_feedforward=2 * width, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(width)
        if pointer not in POINTERS:
            raise ConfigError(f"label pointer {pointer!r} is not one of {', '.join(POINTERS)}")
        self.pointer = pointer
        if pointer == "linear":
            self.pointer_weight = nn.Parameter(torch.full((width,), 1.0 / width))
            self.pointer_bias = nn.Parameter(torch.zeros(()))

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, seq, hidden) token features and (batch, seq) mask -> (batch, labels) scores.

        Runs in float32 even under bf16 autocast: the head is small, float32 trained it faster on
        a CPU (TREC-50, 5 epochs: 50 s vs 70 s) and keeps small score gaps (the triplet margin is
        0.2) exact; accuracy moved either way by seed (README)."""
        with torch.autocast(features.device.type, enabled=False):
            return self._scores(features.float(), mask)

    def _scores(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch = features.shape[0]
        queries = self.proj(torch.cat([self.task, self.labels])).expand(batch, -1, -1)
        z = self.norm(self.decoder(queries, self.proj(features), memory_key_padding_mask=~mask.bool()))
        task, labels = z[:, 0], z[:, 1:].reshape(batch, self.n_labels, self.vectors, self.width).mean(2)
        if self.pointer == "linear":
            return labels @ self.pointer_weight + self.pointer_bias
        if self.pointer == "task":
            return torch.einsum("bd,bkd->bk", task, labels) / self.width ** 0.5
        return labels.amax(-1)

    def class_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each label's (mean) embedding: the analogue of a class weight vector."""
        w = self.labels.view(self.n_labels, self.vectors, -1).mean(1)
        return w, torch.zeros(self.n_labels, device=w.device)


@dataclass
class LabelDecoderOptions:
    label_vectors: int = 1
    """label decoder: embeddings per label"""
    label_init: str = "words"
    """label decoder: label embeddings start from the label words' token embeddings (words), random vocabulary
    words (vocab) or random vectors (random)"""
    decoder_layers: int = 2
    """label decoder: transformer decoder layers"""
    decoder_heads: int = 4
    """label decoder: attention heads"""
    decoder_width: int | None = None
    """label decoder: width (none: the backbone's hidden size; else text features and labels are projected)"""
    decoder_dropout: float = 0.0
    """label decoder: dropout inside the decoder layers"""
    label_pointer: str = "linear"
    """label decoder: how a label's output vector becomes its score: linear (learned pooling), task (dot product
    with the task vector) or max (max pooling)"""

    def __post_init__(self) -> None:
        for name in ("label_vectors", "decoder_layers", "decoder_heads"):
            check_min(self, name, 1)
        if self.decoder_width is not None:
            check_min(self, "decoder_width", 1)
            if self.decoder_width % self.decoder_heads:
                raise ConfigError(f"decoder_width={self.decoder_width} is not divisible by "
                                  f"decoder_heads={self.decoder_heads}")
        check_min(self, "decoder_dropout", 0.0)
        check_choice(self, "label_init", ("words", "vocab", "random"))
        check_choice(self, "label_pointer", POINTERS)


def label_init_rows(opts: LabelDecoderOptions, ctx: BuildContext, verbalizer: Verbalizer) -> torch.Tensor:
    """(labels x vectors, hidden) starting label embeddings."""
    n = len(ctx.labels) * opts.label_vectors
    if opts.label_init != "words":
        return embedding_rows(ctx.encoder, ctx.tokenizer, n, opts.label_init)
    emb = ctx.encoder.get_input_embeddings().weight.detach()
    token_map = verbalizer.token_ids(ctx.tokenizer)
    words = torch.stack([torch.stack([emb[w].mean(0) for w in token_map[y]]).mean(0) for y in ctx.labels])
    rows = words.repeat_interleave(opts.label_vectors, 0)
    if opts.label_vectors > 1:  # identical copies would receive identical gradients forever
        rows = rows + torch.randn_like(rows) * emb.std() * 0.1
    return rows


@HEADS.register("label-decoder", LabelDecoderOptions, description="Y-Tuning: label embeddings + a transformer "
                "decoder over every token's features, label pointer", reads="sequence", uses_label_words=True)
def build_label_decoder(opts: LabelDecoderOptions, ctx: BuildContext) -> LabelDecoderHead:
    verbalizer = ctx.verbalizer or Verbalizer(ctx.labels)
    return LabelDecoderHead(ctx.hidden, label_init_rows(opts, ctx, verbalizer), opts.label_vectors,
                            opts.decoder_layers, opts.decoder_heads, opts.decoder_width, opts.decoder_dropout,
                            opts.label_pointer)
