"""What trains: everything, the head only, biases (BitFit), bottleneck adapters, LoRA, soft prompt tokens.

Mechanisms never rename backbone parameters: adapters attach through forward hooks and keep
their own parameters under ``Classifier.tuning``, so the frozen backbone stays a plain
Hugging Face model that many task modules can share.
"""
from __future__ import annotations

import re

import torch
from torch import nn
from transformers.activations import ACT2FN

# sublayer output projections, after which Houlsby (attn + ffn) and Pfeiffer (ffn) adapters sit
_ATTN_OUT = (r"layer\.(\d+)\.attention\.output\.dense$", r"layer\.(\d+)\.attention\.out_lin$")
_FFN_OUT = (r"layer\.(\d+)\.output\.dense$", r"layer\.(\d+)\.ffn\.lin2$")


class Adapter(nn.Module):
    """Bottleneck adapter (Houlsby et al., 2019): ``h + up(act(down(h)))``.

    ``init="near-identity"`` draws both projections from N(0, 1e-3²) and zero biases, so the
    adapter starts as (almost) the identity and the pretrained network is undisturbed.
    """

    def __init__(self, hidden: int, size: int, activation: str = "relu", init: str = "near-identity"):
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = ACT2FN[activation]
        self.up = nn.Linear(size, hidden)
        std = {"near-identity": 1e-3, "normal": 0.02}.get(init)
        if std is None and init != "zero":
            raise ValueError(f"adapter init {init!r} is not one of near-identity, normal, zero")
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
        raise ValueError(f"adapters: cannot find the attention/FFN output projections of "
                         f"{type(encoder).__name__}; supported: BERT, RoBERTa, DistilBERT style models")
    return sites


def add_adapters(encoder: nn.Module, hidden: int, kind: str, size: int, activation: str,
                 init: str) -> nn.ModuleDict:
    """Create one adapter per site and hook it onto the site's output."""
    adapters = nn.ModuleDict()
    for key, module in sorted(adapter_sites(encoder, kind).items()):
        adapter = Adapter(hidden, size, activation, init)
        adapters[key] = adapter
        module.register_forward_hook(lambda mod, args, out, a=adapter: a(out))
    return adapters


# attention projections LoRA adapts by default (query and value, as in Hu et al., 2021)
LORA_TARGETS = {"bert": "query,value", "roberta": "query,value", "xlm-roberta": "query,value",
                "electra": "query,value", "distilbert": "q_lin,v_lin"}


def add_lora(encoder: nn.Module, r: int, alpha: float, dropout: float, targets: str | None) -> str:
    """Inject LoRA (``W + (α/r)·B·A``, B starting at zero) into ``encoder`` through PEFT."""
    from peft import LoraConfig, inject_adapter_in_model
    model_type = encoder.config.model_type
    targets = targets or LORA_TARGETS.get(model_type)
    if targets is None:
        raise ValueError(f"no default LoRA target modules for model type {model_type!r}; "
                         f"name them with lora_targets, e.g. 'query,value'")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=[t.strip() for t in targets.split(",")])
    try:
        inject_adapter_in_model(config, encoder)
    except ValueError as e:
        raise ValueError(f"LoRA: {e} (set lora_targets to module names of this model)") from None
    return targets


def is_bias(name: str) -> bool:
    return name.endswith(".bias")


def trainable_flags(model, trains: str) -> dict[str, bool]:
    """Which parameters train, by name: the head always; backbone according to ``trains``."""
    flags = {}
    for name, p in model.named_parameters():
        if name.startswith("head."):
            # a tied decoder is the input embedding matrix: it trains only with the backbone
            tied = name == "head.decoder_weight" and not model.config.decouple_embeddings
            flags[name] = trains == "all" or not tied
        elif name.startswith("tuning."):
            flags[name] = True
        elif ".lora_" in name:  # LoRA matrices live inside the backbone's modules
            flags[name] = True
        else:  # backbone
            flags[name] = trains == "all" or (trains == "bitfit" and is_bias(name))
    return flags
