"""Many task modules on one frozen encoder: per-row routing, safe from many threads.

Every task module reaches the shared encoder through hooks installed once per encoder. During a
forward pass the router knows which batch rows belong to which task, so one batch may mix tasks
and each row sees only its own task's modules. Outside a routed forward the hooks do nothing:
the encoder is the plain pretrained model.

The routes of a forward pass live in a ``contextvars.ContextVar``, not on the router: each thread
(and each asyncio task) sees only its own, so one model or ``TaskSet`` may serve several threads
at once. The router is a plain attribute of the encoder, not a submodule, so parameter names and
the state dict are untouched.
"""
from __future__ import annotations

import contextlib
import contextvars
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

_ids = itertools.count()


@dataclass
class Route:
    """The rows of a batch that belong to one task (``rows=None``: all of them)."""

    task: str
    rows: torch.Tensor | None = None  # (n,) row indices
    soft_positions: torch.Tensor | None = None  # (n, soft tokens) placeholder positions


@dataclass
class Pass:
    """One routed forward pass: its routes and what mechanisms computed once for it."""

    routes: list[Route]
    cache: dict = field(default_factory=dict)


@dataclass
class Owner:
    """Parameters that live inside the encoder but belong to one task (LoRA matrices)."""

    task_of: Callable[[str], "str | None"]  # parameter name -> its task, or None
    rename: Callable[[str, str], str]  # (name, task) -> the same parameter under another task
    delete: Callable[[str], None]  # drop a task's parameters from the encoder


class TaskRouter:
    ATTR = "_tailtune_router"

    @classmethod
    def of(cls, encoder: nn.Module) -> "TaskRouter":
        router = encoder.__dict__.get(cls.ATTR)
        if router is None:
            router = cls(encoder)
            encoder.__dict__[cls.ATTR] = router
        return router

    def __init__(self, encoder: nn.Module) -> None:
        self.encoder = encoder
        self.adapters: dict[str, dict[str, nn.Module]] = {}  # site -> task -> module on the site's output
        self.prefixes: dict[str, nn.Module] = {}  # task -> Prefix
        self.soft_prompts: dict[str, nn.Parameter] = {}  # task -> (tokens, hidden)
        self.owners: list[Owner] = []
        self.tasks: set[str] = set()
        self.hooked: set[Any] = set()  # which hooks are installed
        self.state: dict[str, Any] = {}  # mechanisms' own per-encoder bookkeeping
        self.compiled: tuple[nn.Module, tuple] | None = None  # (compiled encoder, the weights' versions it holds)
        self._pass: contextvars.ContextVar[Pass | None] = contextvars.ContextVar(f"tailtune_route_{next(_ids)}",
                                                                              default=None)

    # -- the current pass (per thread / task) ----------------------------------------
    @property
    def current(self) -> Pass | None:
        return self._pass.get()

    @contextlib.contextmanager
    def route(self, routes: list[Route]) -> Iterator[Pass]:
        """Within this block (in this thread), batch rows go through their own task's modules."""
        token = self._pass.set(Pass(routes))
        try:
            yield self._pass.get()
        finally:
            self._pass.reset(token)

    def encode(self, routes: list[Route], input_ids: torch.Tensor, attention_mask: torch.Tensor,
               token_type_ids: torch.Tensor | None = None, all_layers: bool = False) -> torch.Tensor:
        """The encoder's last hidden states ``(batch, seq, hidden)``, each row through its task; with
        ``all_layers`` every layer's, ``(batch, seq, layers + 1, hidden)`` (embeddings first)."""
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        run, frozen = self.encoder, contextlib.nullcontext()
        if self.compiled is not None and not torch.is_grad_enabled():  # (training always runs the eager encoder)
            from ..device import frozen_weights, reset_compiled
            if self.compiled[1] != self._versions():  # a weight changed since: the cached graphs hold the old one, and
                reset_compiled()  # a new torch.compile would find them; dropped (every compiled graph recompiles)
                self.compile()
            run, frozen = self.compiled[0], frozen_weights()
        with self.route(routes), frozen:
            out = run(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=all_layers, **kwargs)
        return torch.stack(out.hidden_states, 2) if all_layers else out.last_hidden_state

    def compile(self, on: bool = True) -> None:
        """Inference through ``torch.compile`` (``device.compile_encoder``) from the next forward pass without
        gradients; ``on=False`` goes back to the eager encoder. Compile once the weights are final: the compiled
        graphs hold the weights they were first run with, so a change to any encoder weight (in place: training,
        loading; or a new task's LoRA) compiles afresh at the next pass."""
        from ..device import compile_encoder
        self.compiled = (compile_encoder(self.encoder), self._versions()) if on else None

    def _versions(self) -> tuple:
        return tuple((id(p), p._version) for p in self.encoder.parameters())

    # -- registration ------------------------------------------------------------------
    def add_adapters(self, task: str, sites: dict[str, nn.Module], adapters: nn.ModuleDict) -> None:
        """Apply ``adapters[site]`` to the output of ``sites[site]`` for this task's rows."""
        for key, module in sites.items():
            self.adapters.setdefault(key, {})[task] = adapters[key]
            if ("adapter", key) not in self.hooked:
                module.register_forward_hook(lambda mod, args, out, k=key: self._apply(out, self.adapters.get(k, {})))
                self.hooked.add(("adapter", key))

    def add_soft_prompt(self, task: str, soft: nn.Parameter) -> None:
        self.soft_prompts[task] = soft
        if "soft" not in self.hooked:
            self.encoder.get_input_embeddings().register_forward_hook(lambda mod, args, out: self._soften(out))
            self.hooked.add("soft")

    def add_prefix(self, task: str, prefix: nn.Module) -> None:
        self.prefixes[task] = prefix

    def add_owner(self, owner: Owner) -> None:
        if owner not in self.owners:
            self.owners.append(owner)

    def owner_of(self, name: str) -> str | None:
        """The task that owns an encoder parameter (LoRA matrices), or None for the base model's."""
        for owner in self.owners:
            task = owner.task_of(name)
            if task is not None:
                return task
        return None

    def rename(self, name: str, task: str) -> str:
        """An owned parameter's name as it would be under ``task`` (module files store "default")."""
        for owner in self.owners:
            if owner.task_of(name) is not None:
                return owner.rename(name, task)
        return name

    def remove(self, task: str) -> None:
        """Forget a task's modules (parameters it owns inside the encoder are deleted)."""
        for owner in self.owners:
            owner.delete(task)
        for per_task in self.adapters.values():
            per_task.pop(task, None)
        for table in (self.prefixes, self.soft_prompts):
            table.pop(task, None)
        self.tasks.discard(task)

    # -- routing -------------------------------------------------------------------------
    def _apply(self, out: torch.Tensor, modules: dict) -> torch.Tensor:
        """``module(out[rows])`` for each route with a module here; other rows pass through."""
        current = self.current
        routes = [r for r in (current.routes if current else ()) if r.task in modules]
        if len(routes) == 1 and routes[0].rows is None:
            return modules[routes[0].task](out)
        if not routes:
            return out
        new = out.clone()
        for r in routes:
            new[r.rows] = modules[r.task](out[r.rows])
        return new

    def _soften(self, embeds: torch.Tensor) -> torch.Tensor:  # (batch, seq, hidden)
        current = self.current
        routes = [r for r in (current.routes if current else ())
                  if r.task in self.soft_prompts and r.soft_positions is not None]
        if not routes:
            return embeds
        embeds = embeds.clone()
        for r in routes:
            # (shapes, not len(): an ONNX export traces these with a dynamic batch size)
            rows = torch.arange(embeds.shape[0], device=embeds.device) if r.rows is None else r.rows
            soft = self.soft_prompts[r.task].to(embeds.dtype)
            embeds[rows[:, None], r.soft_positions] = soft.expand(rows.shape[0], *soft.shape)
        return embeds

    def rows_by_task(self, batch: int) -> list[str | None] | None:
        """The task of every row of the current pass (None outside a routed pass)."""
        current = self.current
        if current is None:
            return None
        names = current.cache.get("rows")
        if names is None:
            names = [None] * batch
            for r in current.routes:
                for i in (range(batch) if r.rows is None else r.rows.tolist()):
                    names[i] = r.task
            current.cache["rows"] = names
        return names
