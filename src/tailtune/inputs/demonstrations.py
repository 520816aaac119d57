"""LM-BFF demonstrations (Gao et al., 2021): the prompt followed by one example per class.

Each input is rendered with the template (its own [MASK] kept), then one demonstration per class
drawn from the training set (the pool) is appended, rendered with the same template and the
class's label word in place of the [MASK]::

    [CLS] a gripping film . It was [MASK] . [SEP] a dull mess . It was terrible . [SEP] a delight . It was great . [SEP]

Selection is ``random`` (uniform within each class) or ``similar`` (uniform among the most similar
``demo_top`` share of each class, by the cosine of mean-pooled backbone embeddings; LM-BFF's
filtered sampling with SBERT). Demonstrations are drawn anew every epoch (``train()`` re-encodes),
a training example never serves as its own demonstration, and at prediction the class scores are
averaged over ``demo_sets`` sampled sets (``Encoded.views``). Only demonstrations are truncated: a
demonstration that does not fit is shortened (when at least ``MIN_TEXT`` of its text tokens fit) or
dropped, and the counts are reported. The pool (the training texts and labels) is saved with the
classifier, since predicting needs it.
"""
from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..registry import INPUT_FORMATS, BuildContext, check_choice, check_min
from ..text import Encoded, encode_plain, special_tokens, tokenizer_lock
from . import TemplateInput, TemplateOptions
from .verbalizer import readable

MIN_TEXT = 4  # a shortened demonstration keeps at least this many of its text's tokens


@dataclass
class DemonstrationOptions(TemplateOptions):
    demo_selection: str = "similar"
    """demonstrations: random (uniform within each class) or similar (uniform among the most similar demo_top of each
    class, by mean-pooled backbone embeddings)"""
    demo_top: float = 0.5
    """demonstrations: with demo_selection=similar, the share of each class's most similar examples drawn from"""
    demo_sets: int = 16
    """demonstrations: sampled demonstration sets whose class scores are averaged at prediction"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self, "demo_selection", ("random", "similar"))
        check_min(self, "demo_sets", 1)
        if not 0 < self.demo_top <= 1:
            raise ConfigError(f"demo_top={self.demo_top}: give a share in (0, 1], e.g. 0.5")


class DemonstrationInput(TemplateInput):
    """A template input followed by one demonstration per class from the pool (the training set)."""

    resamples = True

    def __init__(self, opts: DemonstrationOptions, ctx: BuildContext) -> None:
        super().__init__(opts, ctx.tokenizer, ctx.config.max_length)
        self.ctx = ctx
        verb = ctx.verbalizer
        self.words = {y: (verb.words[y][0] if verb is not None else readable(y)) for y in ctx.labels}
        self.pool: dict | None = None
        self._pieces: list[tuple[list[int], list[int], list[int]]] = []  # per pool example: before, text, after
        self._embeddings: torch.Tensor | None = None

    # -- the pool ------------------------------------------------------------------------
    def set_pool(self, examples: Any) -> None:
        self.load_pool({"texts": list(examples.texts), "texts_b": examples.texts_b and list(examples.texts_b),
                        "labels": list(examples.labels)})

    def pool_state(self) -> dict | None:
        return self.pool

    def load_pool(self, state: dict) -> None:
        unknown = sorted(set(state["labels"]) - set(self.words))
        if unknown:
            raise ConfigError(f"demonstration pool: labels {unknown[:5]} are not in the classifier's label space")
        self.pool, self._embeddings = state, None
        self._by_class: dict[str, list[int]] = {}
        for j, y in enumerate(state["labels"]):
            self._by_class.setdefault(y, []).append(j)
        self._pieces = [self._render(j) for j in range(len(state["texts"]))]

    def _render(self, j: int) -> tuple[list[int], list[int], list[int]]:
        """Pool example ``j`` in the template with its label word for the [MASK]: (before, text, after) ids,
        the text the only part a lack of room may shorten; soft tokens are left out of demonstrations."""
        tok = self.tokenizer
        texts_b = self.pool["texts_b"]
        parts: list[list[int]] = [[]]
        text: list[int] = []
        with tokenizer_lock(tok):
            for p in self.template.pieces:
                lead = " " if p.space else ""
                if p.kind == "lit":
                    parts[-1] += tok(lead + p.content, add_special_tokens=False)["input_ids"]
                elif p.kind == "mask":
                    parts[-1] += tok(" " + self.words[self.pool["labels"][j]], add_special_tokens=False)["input_ids"]
                elif p.kind == "text_b" and texts_b is not None:
                    parts[-1] += tok(lead + texts_b[j].strip(), add_special_tokens=False)["input_ids"]
                elif p.kind == "text":
                    text = tok(lead + self.pool["texts"][j].strip(), add_special_tokens=False)["input_ids"]
                    parts.append([])
        return parts[0], text, parts[-1] + special_tokens(tok)[1]

    # -- similarity ----------------------------------------------------------------------
    @torch.no_grad()
    def _embed(self, texts: list[str], texts_b: list[str] | None) -> torch.Tensor:
        """Mean-pooled, normalised embeddings from the backbone as it is now (this task's modules included)."""
        from ..batch import collate
        from ..tuning.routing import Route
        encoder = self.ctx.encoder
        device = next(encoder.parameters()).device
        was_training = encoder.training
        encoder.eval()
        out = []
        enc = encode_plain(self.tokenizer, texts, texts_b, self.max_length)
        for s in range(0, len(enc), 64):
            b = collate(enc[s:s + 64], self.tokenizer.pad_token_id, device)
            h = self.ctx.router.encode([Route(self.ctx.task, None, None)], b["input_ids"], b["attention_mask"],
                                       b.get("token_type_ids"))
            m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
            out.append(torch.nn.functional.normalize(((h * m).sum(1) / m.sum(1)).float(), dim=-1).cpu())
        encoder.train(was_training)
        return torch.cat(out)

    # -- encoding ------------------------------------------------------------------------
    def encode(self, texts: list[str], texts_b: list[str] | None = None, epoch: int | None = None,
               pool_index: list[int | None] | None = None) -> list[Encoded]:
        if self.pool is None:
            raise ConfigError("input_format='demonstrations' draws on the training set: fit the classifier first "
                              "(a saved one carries its pool)")
        queries = super().encode(texts, texts_b)
        index = pool_index or [None] * len(texts)
        sims = None
        if self.opts.demo_selection == "similar":
            # training (an epoch given) moves the weights: embed the pool anew; at prediction, once
            if epoch is not None or self._embeddings is None:
                self._embeddings = self._embed(self.pool["texts"], self.pool["texts_b"])
            pool_emb = self._embeddings
            if epoch is not None:
                self._embeddings = None
            own = [i for i, j in enumerate(index) if j is None]
            q = torch.zeros(len(texts), pool_emb.shape[1])
            if own:
                q[own] = self._embed([texts[i] for i in own], [texts_b[i] for i in own] if texts_b else None)
            known = [i for i, j in enumerate(index) if j is not None]
            if known:
                q[known] = pool_emb[[index[i] for i in known]]
            sims = q @ pool_emb.T
        draws = [epoch] if epoch is not None else [-1 - k for k in range(self.opts.demo_sets)]
        counts = {"shortened": 0, "dropped": 0, "demonstrations": 0}
        out = []
        for i, query in enumerate(queries):
            views = [self._with_demos(query, self._choose(i, texts[i], index[i], d, sims), counts) for d in draws]
            out.append(Encoded(views[0].input_ids, views[0].position, views[0].token_type_ids,
                               views[0].soft_positions, views=views[1:] or None))
        if (counts["shortened"] or counts["dropped"]) and epoch in (None, 0):
            warnings.warn(f"demonstrations: {counts['shortened']} shortened and {counts['dropped']} dropped of "
                          f"{counts['demonstrations']} for lack of room at max_length={self.max_length} (the inputs "
                          f"themselves are kept whole); raise max_length to keep them", stacklevel=3)
        return out

    def _choose(self, i: int, text: str, own: int | None, draw: int, sims: torch.Tensor | None) -> list[int]:
        """One pool example per class (label order) for query ``i`` in draw ``draw``; never the query itself.
        The draw depends on the text, not on its place in a batch: a text predicts the same alone or in company."""
        rng = random.Random(f"{draw}:{own}:{text}")
        chosen = []
        for y in self.words:
            candidates = [j for j in self._by_class.get(y, []) if j != own]
            if not candidates:
                continue
            if sims is not None:
                candidates.sort(key=lambda j: -float(sims[i, j]))
                candidates = candidates[:max(1, math.ceil(self.opts.demo_top * len(candidates)))]
            chosen.append(rng.choice(candidates))
        return chosen

    def _with_demos(self, query: Encoded, chosen: list[int], counts: dict) -> Encoded:
        ids = list(query.input_ids)
        for j in chosen:
            before, text, after = self._pieces[j]
            room = self.max_length - len(ids) - len(before) - len(after)
            counts["demonstrations"] += 1
            if room >= len(text):
                ids += before + text + after
            elif room >= min(MIN_TEXT, len(text)) and room > 0:
                ids += before + text[:room] + after
                counts["shortened"] += 1
            else:
                counts["dropped"] += 1
        return Encoded(ids, query.position, None, query.soft_positions)


@INPUT_FORMATS.register("demonstrations", DemonstrationOptions, description="a prompt template followed by one "
                        "demonstration per class from the training set (LM-BFF), re-drawn every epoch; scores averaged "
                        "over sampled sets at prediction", has_mask=True)
def build_demonstrations(opts: DemonstrationOptions, ctx: BuildContext) -> DemonstrationInput:
    return DemonstrationInput(opts, ctx)
