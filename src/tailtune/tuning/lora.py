"""LoRA (Hu et al., 2021) through PEFT: ``W + (α/r)·B·A`` in named linear layers, one adapter name per task."""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from ..registry import TRAINS, BuildContext, check_min
from .mechanisms import Mechanism
from .routing import Owner, TaskRouter

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
        raise ConfigError(f"no default LoRA target modules for model type {model_type!r}; "
                          f"name them with lora_targets, e.g. 'query,value'")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=[t.strip() for t in targets.split(",")])
    try:
        inject_adapter_in_model(config, encoder, adapter_name=name)
    except ValueError as e:
        raise ConfigError(f"LoRA: {e} (set lora_targets to module names of this model)") from None
    return targets


def lora_task(name: str) -> str | None:
    """The adapter (task) name of a LoRA parameter, else None."""
    m = re.search(r"\.lora_[AB]\.([^.]+)\.", name)
    return m.group(1) if m else None


def rename_lora(name: str, task: str) -> str:
    """A LoRA parameter name with its adapter name replaced by ``task``."""
    return re.sub(r"(\.lora_[AB]\.)[^.]+\.", lambda m: f"{m.group(1)}{task}.", name)


def delete_lora(encoder: nn.Module, task: str) -> None:
    """Remove a task's LoRA matrices from the encoder."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT says which adapter becomes active; tailtune never uses that
        for module in encoder.modules():
            if hasattr(module, "lora_A") and task in module.lora_A:
                module.delete_adapter(task)


def merge_lora(router: TaskRouter, task: str) -> int:
    """Fold ``task``'s LoRA update into the weights it adapts (``W += (α/r)·B·A``) and put the plain base
    layers back in place of PEFT's LoRA layers, so the encoder computes that task's function with plain
    linear layers (for a model used by this task alone: an export's own copy). Returns the layers merged."""
    import torch
    merged = 0
    for name, module in list(router.encoder.named_modules()):
        if hasattr(module, "lora_A") and task in module.lora_A:
            base = module.get_base_layer()
            with torch.no_grad():
                base.weight += module.get_delta_weight(task).to(base.weight.dtype)
            parent = router.encoder.get_submodule(name.rpartition(".")[0]) if "." in name else router.encoder
            setattr(parent, name.rpartition(".")[2], base)
            merged += 1
    if "lora_owner" in router.state:
        router.owners.remove(router.state.pop("lora_owner"))
        router.state.pop("lora_tasks", None)
    return merged


def _route_lora(router: TaskRouter) -> None:
    """Give every LoRA layer PEFT's per-row ``adapter_names`` from the current routed pass
    (``__base__`` = the plain model, also outside a routed pass)."""
    lora_tasks = router.state.setdefault("lora_tasks", set())

    def names(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
        batch = len(args[0]) if args else len(kwargs["x"])
        rows = router.rows_by_task(batch)
        per_row = ["__base__"] * batch if rows is None else [t if t in lora_tasks else "__base__" for t in rows]
        return args, {**kwargs, "adapter_names": per_row}

    for module in router.encoder.modules():
        if hasattr(module, "lora_A") and ("lora", id(module)) not in router.hooked:
            module.register_forward_pre_hook(names, with_kwargs=True)
            router.hooked.add(("lora", id(module)))


def _owner(router: TaskRouter) -> Owner:
    """The LoRA matrices of every task in this encoder, named by their task."""
    if "lora_owner" not in router.state:
        def delete(task: str) -> None:
            delete_lora(router.encoder, task)
            router.state["lora_tasks"].discard(task)
        router.state["lora_owner"] = Owner(lora_task, rename_lora, delete)
    return router.state["lora_owner"]


@dataclass
class LoraOptions:
    lora_r: int = 8
    """LoRA rank"""
    lora_alpha: float = 16.0
    """LoRA scaling α (the update is scaled by α/r)"""
    lora_dropout: float = 0.1
    """dropout on the LoRA input"""
    lora_targets: str | None = None
    """comma-separated module names LoRA adapts (none: per architecture, query,value)"""

    def __post_init__(self) -> None:
        check_min(self, "lora_r", 1)
        check_min(self, "lora_alpha", 0.0, strict=True)
        check_min(self, "lora_dropout", 0.0)


@TRAINS.register("lora", LoraOptions, description="LoRA in the attention projections, via PEFT (backbone frozen)",
                 shares_backbone=True, full_artefact=False, trains_body=True, inside_encoder=True)
def build_lora(opts: LoraOptions, ctx: BuildContext) -> Mechanism:
    add_lora(ctx.encoder, opts.lora_r, opts.lora_alpha, opts.lora_dropout, opts.lora_targets, name=ctx.task)
    ctx.router.state.setdefault("lora_tasks", set()).add(ctx.task)
    ctx.router.add_owner(_owner(ctx.router))
    _route_lora(ctx.router)
    return Mechanism()
