"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2020) after sublayer outputs."""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..errors import ConfigError
from ..registry import TRAINS, BuildContext, check_choice, check_min
from .mechanisms import Mechanism

# sublayer output projections, after which Houlsby (attn + ffn) and Pfeiffer (ffn) adapters sit
_ATTN_OUT = (r"layer\.(\d+)\.attention\.output\.dense$", r"layer\.(\d+)\.attention\.out_lin$")
_FFN_OUT = (r"layer\.(\d+)\.output\.dense$", r"layer\.(\d+)\.ffn\.lin2$")


class Adapter(nn.Module):
    """Bottleneck adapter (Houlsby et al., 2019): ``h + up(act(down(h)))``.

    ``init="near-identity"`` draws both projections from N(0, 1e-3²) and zero biases, so the
    adapter starts as (almost) the identity and the pretrained network is undisturbed.
    """

    def __init__(self, hidden: int, size: int, activation: str = "relu", init: str = "near-identity") -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = ACT2FN[activation]
        self.up = nn.Linear(size, hidden)
        std = {"near-identity": 1e-3, "normal": 0.02}.get(init)
        if std is None and init != "zero":
            raise ConfigError(f"adapter init {init!r} is not one of near-identity, normal, zero")
        for lin in (self.down, self.up):
            nn.init.normal_(lin.weight, std=std or 0.02)
            nn.init.zeros_(lin.bias)
        if init == "zero":
            nn.init.zeros_(self.up.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (batch, seq, hidden)
        return h + self.up(self.act(self.down(h)))


def adapter_sites(encoder: nn.Module, kind: str) -> dict[str, nn.Module]:
    """``{"<layer>_attn" | "<layer>_ffn": module}``: the projections adapters follow."""
    patterns = [("ffn", p) for p in _FFN_OUT] + ([("attn", p) for p in _ATTN_OUT] if kind == "houlsby" else [])
    sites = {}
    for name, module in encoder.named_modules():
        for where, pattern in patterns:
            m = re.search(pattern, name)
            if m:
                sites[f"{m.group(1)}_{where}"] = module
    if not sites:
        raise ConfigError(f"adapters: cannot find the attention/FFN output projections of "
                         f"{type(encoder).__name__}; supported: BERT, RoBERTa, DistilBERT style models")
    return sites


def make_adapters(sites: dict[str, nn.Module], hidden: int, size: int, activation: str,
                  init: str) -> nn.ModuleDict:
    """One adapter per site (the router hooks them onto the sites' outputs)."""
    return nn.ModuleDict({key: Adapter(hidden, size, activation, init) for key in sorted(sites)})


@dataclass
class AdapterOptions:
    adapter_kind: str = "houlsby"
    """houlsby (after the attention and FFN outputs) or pfeiffer (after the FFN output only)"""
    adapter_size: int = 64
    """adapter bottleneck width"""
    adapter_activation: str = "relu"
    """adapter activation"""
    adapter_init: str = "near-identity"
    """adapter initialisation: near-identity, normal or zero (up-projection zero)"""

    def __post_init__(self) -> None:
        check_choice(self, "adapter_kind", ("houlsby", "pfeiffer"))
        check_choice(self, "adapter_init", ("near-identity", "normal", "zero"))
        check_choice(self, "adapter_activation", tuple(ACT2FN))
        check_min(self, "adapter_size", 1)


@TRAINS.register("adapter", AdapterOptions, description="bottleneck adapters after sublayer outputs (backbone frozen)",
                 shares_backbone=True, full_artefact=False, trains_body=True)
def build_adapters(opts: AdapterOptions, ctx: BuildContext) -> Mechanism:
    sites = adapter_sites(ctx.encoder, opts.adapter_kind)
    adapters = make_adapters(sites, ctx.hidden, opts.adapter_size, opts.adapter_activation, opts.adapter_init)
    ctx.router.add_adapters(ctx.task, sites, adapters)
    return Mechanism({"adapters": adapters})
