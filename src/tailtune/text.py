"""Tokenising inputs: plain ``[CLS] text [SEP]`` and templates with a [MASK] and soft tokens.

Pure Python over a Hugging Face tokenizer (no PyTorch), so the ONNX runtime path
(``tailtune.deploy``) encodes texts exactly as training did.
"""
from __future__ import annotations

import dataclasses
import re
import threading
from dataclasses import dataclass
from typing import Any, Iterator

from .errors import ConfigError

_LOCK_GUARD = threading.Lock()


def tokenizer_lock(tokenizer: Any) -> threading.Lock:
    """A lock per tokenizer: a fast (Rust) tokenizer called from several threads with truncation
    settings fails with "Already borrowed", so every call goes through this lock."""
    lock = tokenizer.__dict__.get("_tailtune_lock")
    if lock is None:
        with _LOCK_GUARD:
            lock = tokenizer.__dict__.setdefault("_tailtune_lock", threading.Lock())
    return lock

SLOTS = ("text", "text_b", "mask", "soft")
_SLOT_RE = re.compile(r"\{([^{}]*)\}")


class TemplateError(ConfigError):
    """A template that cannot work: a missing or repeated slot, or no room for the text."""


@dataclass
class Encoded:
    """One tokenized example: token ids, optional segment ids, and the position the head reads."""

    input_ids: list[int]
    position: int
    token_type_ids: list[int] | None = None
    soft_positions: list[int] | None = None  # where the soft prompt tokens sit, in order
    views: list["Encoded"] | None = None  # more encodings of the same text whose scores are averaged with this one's


def sorted_batches(encoded: list[Encoded], batch_size: int) -> Iterator[list[int]]:
    """Positions of ``encoded`` in batches of ``batch_size``, by token count (batches of similar lengths pad less)."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    for s in range(0, len(order), batch_size):
        yield order[s:s + batch_size]


def expand_views(encoded: list[Encoded]) -> tuple[list[Encoded], list[int]]:
    """Every encoding with its views as rows of their own, and the input each row belongs to."""
    rows, owner = [], []
    for i, e in enumerate(encoded):
        for view in [dataclasses.replace(e, views=None), *(e.views or [])]:
            rows.append(view)
            owner.append(i)
    return rows, owner


@dataclass(frozen=True)
class _Piece:
    kind: str          # "lit", "text", "text_b", "mask" or "soft"
    content: str = ""  # literal words (stripped); for soft: a count or init words
    space: bool = False  # whitespace before this piece in the template


class Template:
    """A prompt such as ``"{text} This is {mask} news ."``.

    Slots: ``{text}``, optional ``{text_b}`` (a second text, e.g. an entity), exactly one
    ``{mask}``, and soft (trainable) prompt tokens anywhere: ``{soft}`` (one token),
    ``{soft:4}`` (four) or ``{soft:It was}`` (one per sub-token of these words, initialised
    from their embeddings). Only the text slots are truncated, so the [MASK], the template
    words and the soft tokens always survive ``max_length``.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        self.pieces = self._parse(template)

    @staticmethod
    def _parse(template: str) -> list[_Piece]:
        pieces, pos = [], 0
        for m in _SLOT_RE.finditer(template):
            lit = template[pos:m.start()]
            if lit.strip():
                pieces.append(_Piece("lit", lit.strip(), pos > 0 and lit[:1].isspace()))
            slot, _, arg = m.group(1).partition(":")
            slot = slot.strip()
            if slot not in SLOTS:
                raise TemplateError(f"template {template!r}: unknown slot {{{slot}}}; "
                                    f"use {{text}}, {{text_b}}, {{mask}} and {{soft}} / {{soft:N}} / {{soft:words}}")
            if slot == "soft":
                arg = arg.strip() or "1"
                if arg.isdigit() and int(arg) < 1:
                    raise TemplateError(f"template {template!r}: {{soft:{arg}}} needs at least one token")
            elif arg:
                raise TemplateError(f"template {template!r}: {{{slot}}} takes no argument")
            before = template[:m.start()]
            pieces.append(_Piece(slot, arg.strip(), space=bool(before) and before[-1].isspace()))
            pos = m.end()
        if template[pos:].strip():
            pieces.append(_Piece("lit", template[pos:].strip(), template[pos:][:1].isspace()))
        kinds = [p.kind for p in pieces]
        if kinds.count("mask") != 1:
            raise TemplateError(f"template {template!r} needs exactly one {{mask}} slot "
                                f"(found {kinds.count('mask')}), e.g. \"{{text}} It is about {{mask}} .\"")
        if "text" not in kinds:
            raise TemplateError(f"template {template!r} has no {{text}} slot")
        for slot in ("text", "text_b"):
            if kinds.count(slot) > 1:
                raise TemplateError(f"template {template!r} uses {{{slot}}} more than once")
        return pieces

    @property
    def uses_text_b(self) -> bool:
        return any(p.kind == "text_b" for p in self.pieces)

    def soft_init_ids(self, tokenizer: Any) -> list[int | None]:
        """One entry per soft token, in order: the vocabulary id it starts from (None: default init)."""
        out = []
        for p in self.pieces:
            if p.kind == "soft":
                if p.content.isdigit():
                    out += [None] * int(p.content)
                else:
                    with tokenizer_lock(tokenizer):
                        out += tokenizer(" " + p.content, add_special_tokens=False)["input_ids"]
        return out

    def encode(self, tokenizer: Any, texts: list[str], texts_b: list[str] | None,
               max_length: int) -> list[Encoded]:
        if self.uses_text_b and texts_b is None:
            raise TemplateError(f"template {self.template!r} has a {{text_b}} slot but the data has "
                                f"no second text column (set --text-b-col)")
        def tok(strings: list[str]) -> list[list[int]]:
            with tokenizer_lock(tokenizer):
                return tokenizer(strings, add_special_tokens=False, verbose=False)["input_ids"]
        lits = {p: tok([(" " if p.space else "") + p.content])[0] for p in self.pieces if p.kind == "lit"}
        slot_ids = {}
        for slot, values in (("text", texts), ("text_b", texts_b)):
            piece = next((p for p in self.pieces if p.kind == slot), None)
            if piece is not None:
                slot_ids[slot] = tok([(" " if piece.space else "") + v.strip() for v in values])
        prefix, suffix = special_tokens(tokenizer)
        soft_n = {p: int(p.content) if p.content.isdigit() else len(tok([" " + p.content])[0])
                  for p in self.pieces if p.kind == "soft"}
        n_soft = sum(soft_n[p] for p in self.pieces if p.kind == "soft")
        budget = max_length - len(prefix) - len(suffix) - 1 - n_soft - sum(len(v) for v in lits.values())
        if budget < 1 + ("text_b" in slot_ids):
            raise TemplateError(f"template {self.template!r} leaves no room for the text at "
                                f"max_length={max_length}; raise max_length or shorten the template")
        out = []
        for i in range(len(texts)):
            a = slot_ids["text"][i]
            b = slot_ids["text_b"][i] if "text_b" in slot_ids else []
            b_keep = min(len(b), max(budget - len(a), budget // 2))
            a_keep = min(len(a), budget - b_keep)
            body, mask_at, soft_at = [], -1, []
            for p in self.pieces:
                if p.kind == "lit":
                    body += lits[p]
                elif p.kind == "text":
                    body += a[:a_keep]
                elif p.kind == "text_b":
                    body += b[:b_keep]
                elif p.kind == "soft":  # placeholders: the classifier swaps in the soft vectors
                    soft_at += [len(prefix) + len(body) + k for k in range(soft_n[p])]
                    body += [tokenizer.pad_token_id] * soft_n[p]
                else:
                    mask_at = len(body)
                    body.append(tokenizer.mask_token_id)
            out.append(Encoded(prefix + body + suffix, len(prefix) + mask_at,
                               soft_positions=soft_at or None))
        return out

    def __repr__(self) -> str:
        return f"Template({self.template!r})"


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text (e.g. [CLS] ... [SEP])."""
    with tokenizer_lock(tokenizer):
        bare = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a")["input_ids"]
    for k in range(len(full) - len(bare) + 1):
        if full[k:k + len(bare)] == bare:
            return full[:k], full[k + len(bare):]
    raise TemplateError(f"cannot locate the special tokens of {type(tokenizer).__name__}")


def encode_plain(tokenizer: Any, texts: list[str], texts_b: list[str] | None,
                 max_length: int) -> list[Encoded]:
    """``[CLS] text [SEP] (text_b [SEP])``; position 0 ([CLS]) is the read position."""
    with tokenizer_lock(tokenizer):
        enc = tokenizer(texts, texts_b, truncation=True, max_length=max_length)
    types = enc.get("token_type_ids") if texts_b is not None else None
    return [Encoded(ids, 0, types[i] if types is not None else None)
            for i, ids in enumerate(enc["input_ids"])]
