"""Heads: map the vector at the read position (CLS or [MASK]) to one score per class.

Every head exposes ``class_weights()``: the effective per-class weight vectors and biases of
its last linear map, used for η-norm calibration and the weight-norm analysis of the
long-tail paper.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN


class MLPHead(nn.Module):
    """``Linear -> act -> Dropout [-> LayerNorm] -> Linear`` (CLS-tuning; "w/ LN" adds the LayerNorm)."""

    def __init__(self, hidden: int, n_classes: int, activation: str = "tanh",
                 dropout: float = 0.1, layer_norm: bool = False, ln_eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.act = ACT2FN[activation]
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(hidden, eps=ln_eps) if layer_norm else None
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (batch, hidden) -> (batch, classes)
        z = self.dropout(self.act(self.dense(h)))
        if self.layer_norm is not None:
            z = self.layer_norm(z)
        return self.out(z)

    def class_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.out.weight, self.out.bias


class VerbalizerHead(nn.Module):
    """MLM head restricted to the verbalizer's tokens (prompt-tuning).

    ``z = LN(act(dense(h)))``; a token's logit is ``z · E_t + b_t`` with ``E`` the decoder
    (output embedding) matrix; a class's score is the mean logit over its words' sub-tokens,
    averaged over its words. Only the label tokens' rows of ``E`` are ever multiplied, never
    the whole vocabulary. With a tied ``E`` the decoder is the input embedding matrix; with
    decoupled embeddings ("w/ ed.") it is a trainable copy.
    """

    def __init__(self, hidden: int, decoder_weight: nn.Parameter, bias: nn.Parameter,
                 class_tokens: list[list[list[int]]], activation: str = "gelu", ln_eps: float = 1e-12):
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

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (batch, hidden) -> (batch, classes)
        z = self.layer_norm(self.act(self.dense(h)))
        token_logits = z @ self.decoder_weight[self.token_ids].T + self.bias[self.token_ids]  # (batch, label tokens)
        return token_logits @ self.token_to_class.T

    def class_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.token_to_class @ self.decoder_weight[self.token_ids]  # (classes, hidden)
        return w, self.token_to_class @ self.bias[self.token_ids]

    def load_pretrained(self, parts) -> None:
        """Copy the pretrained transform (dense + LayerNorm) and output bias."""
        with torch.no_grad():
            self.dense.load_state_dict(parts.dense.state_dict())
            self.layer_norm.load_state_dict(parts.layer_norm.state_dict())
            self.bias.copy_(parts.bias)


POINTERS = ("linear", "task", "max")


class LabelDecoderHead(nn.Module):
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
                 heads: int = 4, width: int | None = None, dropout: float = 0.1, pointer: str = "linear"):
        super().__init__()
        width = width or hidden
        if width % heads:
            raise ValueError(f"label decoder: width {width} is not divisible by {heads} heads")
        self.n_labels, self.vectors, self.width = label_init.shape[0] // vectors, vectors, width
        self.task = nn.Parameter(label_init.mean(0, keepdim=True).clone())  # (1, hidden)
        self.labels = nn.Parameter(label_init.clone())  # (labels x vectors, hidden)
        self.proj = nn.Linear(hidden, width) if width != hidden else nn.Identity()
        layer = nn.TransformerDecoderLayer(width, heads, dim_feedforward=2 * width, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(width)
        if pointer not in POINTERS:
            raise ValueError(f"label pointer {pointer!r} is not one of {', '.join(POINTERS)}")
        self.pointer = pointer
        if pointer == "linear":
            self.pointer_weight = nn.Parameter(torch.full((width,), 1.0 / width))
            self.pointer_bias = nn.Parameter(torch.zeros(()))

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
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
