"""Prefix tuning (Li & Liang, 2021): trainable keys and values prepended in every self-attention layer.

The prefixes enter through a registered attention function over PyTorch SDPA that prepends the
routed rows' prefix keys/values and widens the padding mask, so position ids, padding and
templates (the [MASK] position) are untouched, and each row of a batch gets its own task's prefix.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import TRAINS, BuildContext, check_min
from .mechanisms import Mechanism
from .routing import TaskRouter

# the self-attention modules whose keys and values prefixes extend
_SELF_ATTN = (r"layer\.(\d+)\.attention\.self$", r"transformer\.layer\.(\d+)\.attention$")
PREFIX_ATTENTION = "tailtune_prefix"


class Prefix(nn.Module):
    """Prefix tuning (Li & Liang, 2021): ``length`` trainable key and value vectors per layer.

    With ``reparam_size`` > 0 the prefixes are produced by an MLP from ``length`` embeddings
    (the paper's reparameterisation, steadier training); the MLP is part of the saved module.
    """

    def __init__(self, layers: int, hidden: int, length: int, reparam_size: int = 0) -> None:
        super().__init__()
        self.shape = (layers, 2, length, hidden)
        if reparam_size:
            self.embedding = nn.Parameter(torch.randn(length, hidden) * 0.02)
            self.mlp = nn.Sequential(nn.Linear(hidden, reparam_size), nn.Tanh(),
                                     nn.Linear(reparam_size, layers * 2 * hidden))
        else:
            self.prefix = nn.Parameter(torch.randn(*self.shape) * 0.02)

    def forward(self) -> torch.Tensor:  # (layers, 2, length, hidden)
        if hasattr(self, "prefix"):
            return self.prefix
        layers, _, length, hidden = self.shape
        return self.mlp(self.embedding).view(length, layers, 2, hidden).permute(1, 2, 0, 3)


def prefix_kv(router: TaskRouter, layer: int, batch: int, heads: int, device: torch.device,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Keys, values ``(batch, heads, P, head dim)`` and validity ``(batch, P)`` of the routed
    prefixes at ``layer`` (validity None: every prefix position is valid); None when no row has a prefix."""
    current = router.current
    routes = [r for r in (current.routes if current else ()) if r.task in router.prefixes]
    if not routes:
        return None
    if "prefix" not in current.cache:  # each task's prefix is computed once per forward
        current.cache["prefix"] = {r.task: router.prefixes[r.task]() for r in routes}
    tables = current.cache["prefix"]  # task -> (layers, 2, P, hidden)
    hidden = next(iter(tables.values())).shape[-1]
    if len(routes) == 1 and routes[0].rows is None:  # one task for the whole batch: a view, no copy (and the
        t = tables[routes[0].task][layer].to(dtype)  # batch size stays symbolic in an ONNX export's trace)
        kv = t.view(2, 1, t.shape[1], heads, hidden // heads).transpose(2, 3).expand(-1, batch, -1, -1, -1)
        return kv[0], kv[1], None
    length = max(t.shape[2] for t in tables.values())
    kv = torch.zeros(2, batch, length, hidden, device=device, dtype=dtype)
    valid = torch.zeros(batch, length, dtype=torch.bool, device=device)
    for r in routes:
        t = tables[r.task][layer].to(dtype)  # (2, P, hidden)
        rows = slice(None) if r.rows is None else r.rows
        kv[:, rows, :t.shape[1]] = t[:, None]
        valid[rows, :t.shape[1]] = True
    kv = kv.view(2, batch, length, heads, hidden // heads).transpose(2, 3)
    return kv[0], kv[1], valid


def _prefix_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple:
    """SDPA attention whose keys and values start with the rows' routed prefixes."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    hook = module.__dict__.get("_tailtune_prefix")
    found = prefix_kv(hook[0], hook[1], query.shape[0], query.shape[1], query.device, key.dtype) if hook else None
    if found is not None:
        pk, pv, valid = found
        key, value = torch.cat([pk, key], 2), torch.cat([pv, value], 2)
        if valid is None:  # every row has its whole prefix: the mask (if any) gains P columns that are all on
            if attention_mask is not None:
                on = attention_mask[..., :1]
                on = torch.ones_like(on) if on.dtype == torch.bool else torch.zeros_like(on)
                attention_mask = torch.cat([on.expand(-1, -1, -1, pk.shape[2]), attention_mask], -1)
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        if attention_mask is None and not bool(valid.all()):
            attention_mask = torch.ones(query.shape[0], 1, query.shape[2], key.shape[2] - pk.shape[2],
                                        dtype=torch.bool, device=query.device)
        if attention_mask is not None:
            cols = valid[:, None, None, :].expand(-1, 1, attention_mask.shape[2], -1)
            if attention_mask.dtype != torch.bool:  # additive mask
                cols = torch.zeros_like(cols, dtype=attention_mask.dtype).masked_fill(
                    ~cols, torch.finfo(attention_mask.dtype).min)
            attention_mask = torch.cat([cols.expand(attention_mask.shape[0], -1, -1, -1), attention_mask], -1)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register_prefix_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(PREFIX_ATTENTION, _prefix_attention)
    AttentionMaskInterface.register(PREFIX_ATTENTION, sdpa_mask)


def _hook_attention(router: TaskRouter) -> None:
    """Send the encoder's self-attention through the prefix-aware attention function (once)."""
    if "prefix" in router.hooked:
        return
    _register_prefix_attention()
    layers = 0
    for name, module in router.encoder.named_modules():
        for pattern in _SELF_ATTN:
            m = re.search(pattern, name)
            if m:
                module.__dict__["_tailtune_prefix"] = (router, int(m.group(1)))
                layers += 1
    if not layers:
        raise ConfigError(f"prefix tuning: cannot find the self-attention modules of "
                          f"{type(router.encoder).__name__}; supported: BERT, RoBERTa, DistilBERT style models")
    router.encoder.config._attn_implementation = PREFIX_ATTENTION
    router.hooked.add("prefix")


@dataclass
class PrefixOptions:
    prefix_length: int = 4
    """prefix tuning: key/value vectors prepended in every layer"""
    prefix_reparam: int = 0
    """prefix tuning: width of the reparameterisation MLP (0: train the prefixes directly)"""

    def __post_init__(self) -> None:
        check_min(self, "prefix_length", 1)
        check_min(self, "prefix_reparam", 0)


@TRAINS.register("prefix", PrefixOptions, description="key/value prefixes in every self-attention layer "
                 "(backbone frozen)", shares_backbone=True, full_artefact=False, trains_body=True)
def build_prefix(opts: PrefixOptions, ctx: BuildContext) -> Mechanism:
    prefix = Prefix(ctx.layers, ctx.hidden, opts.prefix_length, opts.prefix_reparam)
    ctx.router.add_prefix(ctx.task, prefix)
    _hook_attention(ctx.router)
    return Mechanism({"prefix": prefix})
