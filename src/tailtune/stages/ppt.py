"""PPT (Gu et al., 2022): self-supervised tasks from unlabelled text for pre-training soft prompts,
and the unified multiple-choice format.

Documents are lines of a text file; sentences come from a rule-based splitter (below). Every
builder is seeded and returns a balanced ``TextDataset``:

1. ``sentence_pair``: (s, t) labelled ``yes`` when t follows s, ``maybe`` when t is another,
   non-adjacent sentence of the same document, ``no`` when t comes from another document.
   One third each.
2. ``multiple_choice``: which of ``options`` sentences follows s? One option is the next
   sentence; half the distractors come from the same document (non-adjacent), the rest from
   other documents. The answer's position cycles, so every option letter is equally often right.
3. ``single_sentence``: pseudo-labels from a small sentiment lexicon written for tailtune
   (``POSITIVE`` / ``NEGATIVE`` below): score = (#positive - #negative words) / sqrt(#words),
   binned into terrible < -0.6 <= bad < -0.2 <= okay <= 0.2 < good <= 0.6 < great. Sentences
   without a lexicon word are ``okay``; classes are balanced by sampling equally from each.
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter
from pathlib import Path
from typing import Callable

from ..api import TailtuneClassifier
from ..artefacts import save_prompt
from ..processes import is_main_process, prepare_output_once
from ..data import TextDataset
from ..errors import ConfigError, DataError
from ..loop import TrainConfig

_ABBREV = {"mr", "mrs", "ms", "dr", "prof", "inc", "co", "corp", "ltd", "jr", "sr", "st", "vs", "no", "u.s",
           "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "e.g", "i.e"}
_BOUNDARY = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str, min_words: int = 4) -> list[str]:
    """Split at ``.``, ``!`` or ``?`` followed by space and a capital or digit, unless the
    period ends a known abbreviation (Mr., Inc., U.S., Jan., ...); drop sentences shorter
    than ``min_words`` words."""
    out, start = [], 0
    for m in _BOUNDARY.finditer(text):
        piece = text[start:m.start()].strip()
        last = piece.rsplit(None, 1)[-1].rstrip(".").lower() if piece else ""
        if last in _ABBREV or (len(last) == 1 and last.isalpha()):
            continue
        out.append(piece)
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if len(s.split()) >= min_words]


def read_documents(paths: list[str], min_sentences: int = 3) -> list[list[str]]:
    """Documents (one per line; WikiText headings skipped) split into sentences."""
    docs = []
    for path in paths:
        if not Path(path).is_file():
            raise DataError(f"unlabelled text file not found: {path}")
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("="):
                sentences = split_sentences(line.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", "."))
                if len(sentences) >= min_sentences:
                    docs.append(sentences)
    if len(docs) < 2:
        raise DataError(f"{', '.join(paths)}: need at least two documents with {min_sentences}+ sentences")
    return docs


def _other_doc_sentence(docs: list[list[str]], d: int, rng: random.Random) -> str:
    e = rng.randrange(len(docs) - 1)
    e += e >= d
    return rng.choice(docs[e])


def sentence_pair(docs: list[list[str]], n: int, seed: int = 13) -> TextDataset:
    """``n`` pairs, a third each of yes (next sentence), maybe (same document), no (other document)."""
    rng = random.Random(seed)
    texts, texts_b, labels = [], [], []
    for k in range(n):
        d = rng.randrange(len(docs))
        doc = docs[d]
        i = rng.randrange(len(doc) - 1)
        label = ("yes", "maybe", "no")[k % 3]
        if label == "yes":
            other = doc[i + 1]
        elif label == "maybe":
            far = [j for j in range(len(doc)) if abs(j - i) > 1]
            if not far:
                label, other = "yes", doc[i + 1]  # rare: a 3-sentence document read from its middle
            else:
                other = doc[rng.choice(far)]
        else:
            other = _other_doc_sentence(docs, d, rng)
        texts.append(doc[i])
        texts_b.append(other)
        labels.append(label)
    return TextDataset(texts, labels, texts_b, source="ppt:sentence_pair")


def option_letters(n: int) -> list[str]:
    if n > 26:
        raise ConfigError(f"the multiple-choice format names options a-z: {n} options are too many")
    return [chr(ord("a") + i) for i in range(n)]


def format_options(options: list[str]) -> str:
    return " ".join(f"( {letter} ) {o}" for letter, o in zip(option_letters(len(options)), options))


def multiple_choice(docs: list[list[str]], n: int, options: int = 4, seed: int = 13) -> TextDataset:
    """``n`` questions: which option follows the sentence? Answer positions cycle evenly."""
    rng = random.Random(seed)
    letters = option_letters(options)
    texts, texts_b, labels = [], [], []
    for k in range(n):
        d = rng.randrange(len(docs))
        doc = docs[d]
        i = rng.randrange(len(doc) - 1)
        far = [doc[j] for j in range(len(doc)) if abs(j - i) > 1]
        distractors = rng.sample(far, min(len(far), (options - 1) // 2))
        while len(distractors) < options - 1:
            distractors.append(_other_doc_sentence(docs, d, rng))
        answer = k % options
        choice = distractors[:answer] + [doc[i + 1]] + distractors[answer:]
        texts.append(doc[i])
        texts_b.append(format_options(choice))
        labels.append(letters[answer])
    return TextDataset(texts, labels, texts_b, source="ppt:multiple_choice")


POSITIVE = set("""good great excellent best better strong gain gains gained rise rises rose higher up
record profit profits growth improve improved improvement success successful positive win won
favorable beautiful happy love loved wonderful fine nice pleasant popular benefit boost recovery
surge surged advance advanced robust healthy bright award praised""".split())
NEGATIVE = set("""bad worse worst poor weak loss losses lost fall falls fell lower down decline declined
drop dropped cut cuts deficit crisis fail failed failure negative problem problems risk concern
concerns war death died killed sad hate terrible awful difficult slump slumped plunge plunged
debt fear fears damage attack criticism criticised lawsuit""".split())
SENTIMENT = ["terrible", "bad", "okay", "good", "great"]


def pseudo_sentiment(sentence: str) -> str:
    words = re.findall(r"[a-z]+", sentence.lower())
    score = (sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)) / math.sqrt(max(1, len(words)))
    if score < -0.6:
        return "terrible"
    if score < -0.2:
        return "bad"
    if score <= 0.2:
        return "okay"
    return "good" if score <= 0.6 else "great"


def single_sentence(docs: list[list[str]], n: int, seed: int = 13) -> TextDataset:
    """Up to ``n`` sentences with lexicon pseudo-labels, the same number from each class."""
    rng = random.Random(seed)
    by_label: dict[str, list[str]] = {label: [] for label in SENTIMENT}
    for doc in docs:
        for s in doc:
            by_label[pseudo_sentiment(s)].append(s)
    per_class = min(n // len(SENTIMENT), *(len(v) for v in by_label.values()))
    if per_class == 0:
        empty = [label for label, v in by_label.items() if not v]
        raise DataError(f"no sentence got the pseudo-label(s) {empty}: give more or other unlabelled text")
    texts, labels = [], []
    for label in SENTIMENT:
        for s in rng.sample(by_label[label], per_class):
            texts.append(s)
            labels.append(label)
    order = list(range(len(texts)))
    rng.shuffle(order)
    return TextDataset([texts[i] for i in order], [labels[i] for i in order], source="ppt:single_sentence")


# templates (hard parts) of the three pre-training formats; soft tokens are prepended
TEMPLATES = {
    "sentence_pair": "{text} ? {mask} , {text_b}",
    "multiple_choice": "{text} {text_b} . Answer : {mask} .",
    "single_sentence": "{text} It was {mask} .",
}
VERBALIZERS = {
    "sentence_pair": {"yes": "yes", "maybe": "maybe", "no": "no"},
    "multiple_choice": None,  # the option letters themselves
    "single_sentence": {label: label for label in SENTIMENT},
}


def unified_template(words: dict[str, str], labels: list[str]) -> tuple[str, dict[str, str]]:
    """Cast a classification task as multiple choice: the label words become options
    ``( a ) word_a ( b ) word_b ...`` and the answer is the option letter, in the format of
    the ``multiple_choice`` pre-training task. Returns (template, verbalizer)."""
    letters = option_letters(len(labels))
    options = format_options([words.get(y, y) for y in labels])
    if any(c in options for c in "{}"):
        raise ConfigError("label words for the unified format cannot contain braces")
    template = TEMPLATES["multiple_choice"].replace("{text_b}", options)
    return template, dict(zip(labels, letters))


def split_documents(docs: list[list[str]], dev_share: float = 0.1,
                    seed: int = 13) -> tuple[list[list[str]], list[list[str]]]:
    """(train documents, dev documents): a seeded split by document (at least two in each), so the
    pre-training dev set shares no sentence with the training set."""
    if len(docs) < 4:
        raise DataError(f"need at least 4 documents to hold some out for dev, got {len(docs)}")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_dev = min(len(docs) - 2, max(2, round(dev_share * len(docs))))
    return [docs[i] for i in sorted(order[n_dev:])], [docs[i] for i in sorted(order[:n_dev])]


BUILDERS = {"sentence_pair": sentence_pair, "multiple_choice": multiple_choice, "single_sentence": single_sentence}


def pretrain_prompt(task: str, data: list[str], output: str | Path, backbone: str | None = None,
                    examples: int = 3000, dev_examples: int = 300, soft_tokens: int = 20, max_length: int = 128,
                    train_config: TrainConfig | None = None, log: Callable[[str], None] = print,
                    template: str | None = None, resume: bool = False, overwrite: bool = False) -> dict:
    """Pre-train ``soft_tokens`` prompt vectors on a self-supervised task with the backbone
    frozen, and save them (PPT). ``template`` replaces the task's hard template (its slots must
    match the task: ``{text_b}`` for the pair and multiple-choice tasks). Returns the dev report."""
    if task not in BUILDERS:
        raise ConfigError(f"unknown PPT task {task!r}; choose from {', '.join(BUILDERS)}")
    template = template or TEMPLATES[task]
    if task != "single_sentence" and "{text_b}" not in template:
        raise ConfigError(f"the {task} task has a second text: the template needs a {{text_b}} slot")
    tc = train_config or TrainConfig()
    ckpt = prepare_output_once(output, overwrite, resume, tc.device)
    docs = read_documents(data)
    train_docs, dev_docs = split_documents(docs, seed=tc.seed)
    train_ds = BUILDERS[task](train_docs, examples, seed=tc.seed)
    dev_ds = BUILDERS[task](dev_docs, dev_examples, seed=tc.seed + 1)
    log(f"{task}: {len(train_docs)} + {len(dev_docs)} documents (train + dev); "
        f"{len(train_ds)} training and {len(dev_ds)} dev examples; "
        f"labels {dict(sorted(Counter(train_ds.labels).items()))}")
    clf = TailtuneClassifier("soft-prompt", backbone, template=template, verbalizer=VERBALIZERS[task],
                             soft_tokens=soft_tokens, max_length=max_length, train_config=tc)
    clf.fit(train_ds, dev=dev_ds, checkpoint_dir=ckpt, resume=resume, log=log)
    report = clf.evaluate(dev_ds)
    if not is_main_process():  # under `accelerate launch` the main process saves
        return report
    save_prompt(clf.model_, output, {
        "task": task, "data": [str(p) for p in data], "documents": len(train_docs),
        "dev_documents": len(dev_docs), "examples": len(train_ds),
        "dev_examples": len(dev_ds), "label_counts": dict(Counter(train_ds.labels)),
        "dev_accuracy": report["accuracy"], "train_config": tc.to_dict(),
        "train_seconds": round(clf.train_result_.seconds, 1)})
    log(f"dev accuracy {report['accuracy']:.4f}; prompt saved to {output}")
    return report
