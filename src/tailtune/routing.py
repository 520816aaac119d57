"""Many task modules on one frozen encoder: per-row routing of adapters, LoRA, prefixes, soft prompts.

Every task module attaches to the shared encoder through hooks that one ``TaskRouter`` per
encoder installs once. During a forward pass the router knows which batch rows belong to
which task, so a single batch may mix tasks and each row sees only its own task's modules.
Outside a routed forward the hooks do nothing: the encoder is the plain pretrained model.
The router is a plain attribute, not a submodule, so the encoder's parameter names and
state dict are untouched. Not thread-safe: one routed forward per encoder at a time.
"""
from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import dataclass

import torch
from torch import nn

# the self-attention modules whose keys and values prefixes extend
_SELF_ATTN = (r"layer\.(\d+)\.attention\.self$", r"transformer\.layer\.(\d+)\.attention$")
PREFIX_ATTENTION = "tailtune_prefix"


@dataclass
class Route:
    """The rows of a batch that belong to one task (``rows=None``: all of them)."""

    task: str
    rows: torch.Tensor | None = None  # (n,) row indices
    soft_positions: torch.Tensor | None = None  # (n, soft tokens) placeholder positions


class TaskRouter:
    ATTR = "_tailtune_router"

    @classmethod
    def of(cls, encoder: nn.Module) -> "TaskRouter":
        router = encoder.__dict__.get(cls.ATTR)
        if router is None:
            router = cls(encoder)
            encoder.__dict__[cls.ATTR] = router
        return router

    def __init__(self, encoder: nn.Module):
        self.encoder = encoder
        self.adapters: dict[str, dict[str, nn.Module]] = {}  # site -> task -> adapter
        self.prefixes: dict[str, nn.Module] = {}  # task -> Prefix
        self.soft_prompts: dict[str, nn.Parameter] = {}  # task -> (tokens, hidden)
        self.lora_tasks: set[str] = set()
        self.tasks: set[str] = set()
        self.routes: list[Route] | None = None
        self._hooked: set[str] = set()
        self._cache: dict = {}  # per forward: adapter names per row, prefix tensors

    # -- registration ------------------------------------------------------------
    def add_adapters(self, task: str, sites: dict[str, nn.Module], adapters: nn.ModuleDict) -> None:
        for key, module in sites.items():
            self.adapters.setdefault(key, {})[task] = adapters[key]
            if f"adapter:{key}" not in self._hooked:
                module.register_forward_hook(lambda mod, args, out, k=key: self._adapt(k, out))
                self._hooked.add(f"adapter:{key}")

    def add_soft_prompt(self, task: str, soft: nn.Parameter) -> None:
        self.soft_prompts[task] = soft
        if "soft" not in self._hooked:
            self.encoder.get_input_embeddings().register_forward_hook(lambda mod, args, out: self._soften(out))
            self._hooked.add("soft")

    def add_lora(self, task: str) -> None:
        self.lora_tasks.add(task)
        for module in self.encoder.modules():
            if hasattr(module, "lora_A") and id(module) not in self._hooked:
                module.register_forward_pre_hook(self._lora_names, with_kwargs=True)
                self._hooked.add(id(module))

    def add_prefix(self, task: str, prefix: nn.Module) -> None:
        self.prefixes[task] = prefix
        if "prefix" in self._hooked:
            return
        _register_prefix_attention()
        layers = 0
        for name, module in self.encoder.named_modules():
            for pattern in _SELF_ATTN:
                m = re.search(pattern, name)
                if m:
                    module.__dict__["_tailtune_prefix"] = (self, int(m.group(1)))
                    layers += 1
        if not layers:
            raise ValueError(f"prefix tuning: cannot find the self-attention modules of "
                             f"{type(self.encoder).__name__}; supported: BERT, RoBERTa, DistilBERT style models")
        # attention through our wrapper (SDPA underneath) that prepends the routed prefixes
        self.encoder.config._attn_implementation = PREFIX_ATTENTION
        self._hooked.add("prefix")

    def remove(self, task: str) -> None:
        """Forget a task's modules (its LoRA matrices are deleted from the encoder)."""
        if task in self.lora_tasks:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PEFT says which adapter becomes active; we never use that
                for module in self.encoder.modules():
                    if hasattr(module, "lora_A") and task in module.lora_A:
                        module.delete_adapter(task)
        for per_task in self.adapters.values():
            per_task.pop(task, None)
        for table in (self.prefixes, self.soft_prompts):
            table.pop(task, None)
        self.lora_tasks.discard(task)
        self.tasks.discard(task)

    # -- routing -----------------------------------------------------------------
    @contextlib.contextmanager
    def route(self, routes: list[Route]):
        """Within this block, batch rows go through their own task's modules."""
        self.routes, self._cache = routes, {}
        try:
            yield
        finally:
            self.routes, self._cache = None, {}

    def encode(self, routes: list[Route], input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """The encoder's last hidden states ``(batch, seq, hidden)``, each row through its task."""
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        with self.route(routes):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state

    def _apply(self, out: torch.Tensor, modules: dict) -> torch.Tensor:
        """``module(out[rows])`` for each route with a module here; other rows pass through."""
        routes = [r for r in self.routes or () if r.task in modules]
        if len(routes) == 1 and routes[0].rows is None:
            return modules[routes[0].task](out)
        if not routes:
            return out
        new = out.clone()
        for r in routes:
            new[r.rows] = modules[r.task](out[r.rows])
        return new

    def _adapt(self, site: str, out: torch.Tensor) -> torch.Tensor:
        return self._apply(out, self.adapters.get(site, {}))

    def _soften(self, embeds: torch.Tensor) -> torch.Tensor:  # (batch, seq, hidden)
        routes = [r for r in self.routes or () if r.task in self.soft_prompts and r.soft_positions is not None]
        if not routes:
            return embeds
        embeds = embeds.clone()
        for r in routes:
            rows = torch.arange(len(embeds), device=embeds.device) if r.rows is None else r.rows
            soft = self.soft_prompts[r.task].to(embeds.dtype)
            embeds[rows[:, None], r.soft_positions] = soft.expand(len(rows), *soft.shape)
        return embeds

    def _lora_names(self, module, args, kwargs):
        batch = len(args[0]) if args else len(kwargs["x"])
        if self.routes is None:  # outside a routed pass: the plain model
            return args, {**kwargs, "adapter_names": ["__base__"] * batch}
        names = self._cache.get("lora")
        if names is None:
            names = ["__base__"] * batch
            for r in self.routes:
                if r.task in self.lora_tasks:
                    rows = range(batch) if r.rows is None else r.rows.tolist()
                    for i in rows:
                        names[i] = r.task
            self._cache["lora"] = names
        return args, {**kwargs, "adapter_names": names}

    def prefix_kv(self, layer: int, batch: int, heads: int, device, dtype):
        """Keys, values ``(batch, heads, P, head dim)`` and validity ``(batch, P)`` of the
        routed prefixes at ``layer``; None when no row has a prefix."""
        routes = [r for r in self.routes or () if r.task in self.prefixes]
        if not routes:
            return None
        if "prefix" not in self._cache:  # each task's prefix is computed once per forward
            self._cache["prefix"] = {r.task: self.prefixes[r.task]() for r in routes}
        tables = self._cache["prefix"]  # task -> (layers, 2, P, hidden)
        length = max(t.shape[2] for t in tables.values())
        hidden = next(iter(tables.values())).shape[-1]
        kv = torch.zeros(2, batch, length, hidden, device=device, dtype=dtype)
        valid = torch.zeros(batch, length, dtype=torch.bool, device=device)
        for r in routes:
            t = tables[r.task][layer].to(dtype)  # (2, P, hidden)
            rows = slice(None) if r.rows is None else r.rows
            kv[:, rows, :t.shape[1]] = t[:, None]
            valid[rows, :t.shape[1]] = True
        kv = kv.view(2, batch, length, heads, hidden // heads).transpose(2, 3)
        return kv[0], kv[1], valid


def _prefix_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA attention whose keys and values start with the rows' routed prefixes."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    hook = module.__dict__.get("_tailtune_prefix")
    found = hook[0].prefix_kv(hook[1], query.shape[0], query.shape[1], query.device, key.dtype) if hook else None
    if found is not None:
        pk, pv, valid = found
        key, value = torch.cat([pk, key], 2), torch.cat([pv, value], 2)
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
