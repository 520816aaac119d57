"""What trains: everything, the head only, biases (BitFit), adapters, LoRA, prefixes, soft prompts.

Mechanisms never rename backbone parameters: adapters, prefixes and soft prompts keep their
parameters under ``Classifier.tuning`` and reach the encoder through ``routing.TaskRouter``
hooks; LoRA matrices sit inside the encoder's linear layers under the task's adapter name.
So the frozen backbone stays a plain Hugging Face model that many task modules can share.
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


def make_adapters(sites: dict[str, nn.Module], hidden: int, size: int, activation: str,
                  init: str) -> nn.ModuleDict:
    """One adapter per site (the router hooks them onto the sites' outputs)."""
    return nn.ModuleDict({key: Adapter(hidden, size, activation, init) for key in sorted(sites)})


class Prefix(nn.Module):
    """Prefix tuning (Li & Liang, 2021): ``length`` trainable key and value vectors per layer.

    With ``reparam_size`` > 0 the prefixes are produced by an MLP from ``length`` embeddings
    (the paper's reparameterisation, steadier training); the MLP is part of the saved module.
    """

    def __init__(self, layers: int, hidden: int, length: int, reparam_size: int = 0):
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


# attention projections LoRA adapts by default (query and value, as in Hu et al., 2021)
LORA_TARGETS = {"bert": "query,value", "roberta": "query,value", "xlm-roberta": "query,value",
                "electra": "query,value", "distilbert": "q_lin,v_lin"}


def add_lora(encoder: nn.Module, r: int, alpha: float, dropout: float, targets: str | None,
             name: str = "default") -> str:
    """Inject LoRA (``W + (α/r)·B·A``, B starting at zero) into ``encoder`` through PEFT, as
    adapter ``name``: several tasks' LoRA can sit side by side in one encoder."""
    from peft import LoraConfig, inject_adapter_in_model
    model_type = encoder.config.model_type
    targets = targets or LORA_TARGETS.get(model_type)
    if targets is None:
        raise ValueError(f"no default LoRA target modules for model type {model_type!r}; "
                         f"name them with lora_targets, e.g. 'query,value'")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=[t.strip() for t in targets.split(",")])
    try:
        inject_adapter_in_model(config, encoder, adapter_name=name)
    except ValueError as e:
        raise ValueError(f"LoRA: {e} (set lora_targets to module names of this model)") from None
    return targets


def is_bias(name: str) -> bool:
    return name.endswith(".bias")


def lora_task(name: str) -> str | None:
    """The adapter (task) name of a LoRA parameter, else None."""
    m = re.search(r"\.lora_[AB]\.([^.]+)\.", name)
    return m.group(1) if m else None


def rename_lora(name: str, task: str) -> str:
    """A LoRA parameter name with its adapter name replaced by ``task``."""
    return re.sub(r"(\.lora_[AB]\.)[^.]+\.", lambda m: f"{m.group(1)}{task}.", name)


def trainable_flags(model, trains: str) -> dict[str, bool]:
    """Which parameters train, by name: the head always; backbone according to ``trains``;
    of LoRA matrices in a shared encoder only the model's own task's."""
    flags = {}
    for name, p in model.named_parameters():
        if name.startswith("head."):
            # a tied decoder is the input embedding matrix: it trains only with the backbone
            tied = name == "head.decoder_weight" and not model.config.decouple_embeddings
            flags[name] = trains == "all" or not tied
        elif name.startswith("tuning."):
            flags[name] = True
        elif lora_task(name) is not None:  # LoRA matrices live inside the backbone's modules
            flags[name] = lora_task(name) == model.task
        else:  # backbone
            flags[name] = trains == "all" or (trains == "bitfit" and is_bias(name))
    return flags
