"""Verbalizers: each label -> one or more words -> their sub-token ids."""
from __future__ import annotations

import re
import warnings
from typing import Any, Mapping

from ..text import tokenizer_lock
from ..errors import ConfigError


def readable(label: str) -> str:
    """Default label word: underscores, hyphens and colons become spaces."""
    return re.sub(r"[_\-:]+", " ", label).strip()


class Verbalizer:
    """Maps each label to one or more words; each word to its sub-token ids.

    A class's score is the mean logit of its word's sub-tokens at [MASK], averaged over the
    class's words. A label the given words leave out gets its readable name (``money-fx`` ->
    ``money fx``), with a warning: a verbalizer that misses a label is usually a typo.
    """

    def __init__(self, labels: list[str], words: Mapping[str, list[str] | str] | None = None,
                 warn_missing: bool = True) -> None:
        words = {str(k): v for k, v in (words or {}).items()}
        extra = sorted(set(words) - set(labels))
        if extra:
            raise ConfigError(f"the verbalizer names labels that are not in the label space: {extra}; "
                              f"labels are {list(labels)[:10]}{' ...' if len(labels) > 10 else ''}")
        missing = [y for y in labels if y not in words]
        if words and missing and warn_missing:
            shown = ", ".join(f"{y!r} -> {readable(y)!r}" for y in missing[:8]) + (" ..." if len(missing) > 8 else "")
            warnings.warn(f"the verbalizer has no word for {len(missing)} label(s); they use their readable "
                          f"names: {shown}. Add them to the verbalizer to choose the words.", stacklevel=2)
        self.labels = list(labels)
        self.words: dict[str, list[str]] = {}
        for y in labels:
            w = words.get(y, readable(y))
            w = [w] if isinstance(w, str) else list(w)
            if not w or not all(isinstance(x, str) and x.strip() for x in w):
                raise ConfigError(f"verbalizer: label {y!r} needs at least one non-empty word, got {w!r}")
            self.words[y] = [x.strip() for x in w]

    def token_ids(self, tokenizer: Any) -> dict[str, list[list[int]]]:
        """Sub-token ids of every word, encoded as they appear after a space in a sentence."""
        with tokenizer_lock(tokenizer):
            return {y: [tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in ws]
                    for y, ws in self.words.items()}

    def describe(self, tokenizer: Any) -> list[dict]:
        """One row per (label, word): its sub-tokens and whether any is unknown."""
        rows = []
        for y, ids_list in self.token_ids(tokenizer).items():
            for w, ids in zip(self.words[y], ids_list):
                rows.append({"label": y, "word": w, "tokens": tokenizer.convert_ids_to_tokens(ids),
                             "unknown": tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids})
        return rows

    def check(self, tokenizer: Any) -> list[dict]:
        rows = self.describe(tokenizer)
        for r in rows:
            if not r["tokens"]:
                raise ConfigError(f"verbalizer word {r['word']!r} of label {r['label']!r} tokenizes to nothing; "
                                  f"pick another word")
            if r["unknown"]:
                warnings.warn(f"verbalizer word {r['word']!r} (label {r['label']!r}) contains a token unknown "
                              f"to the vocabulary: {r['tokens']}; pick another word", stacklevel=2)
        return rows

    def to_dict(self) -> dict[str, list[str]]:
        return dict(self.words)
