"""Automatic templates (in the spirit of LM-BFF's search, without T5): ``tailtune templates``.

LM-BFF generated candidate templates with T5, filling the words around each training text and its
label word, then ranked them on dev. T5 is not at hand offline, so the candidates here come from:

1. a bank of templates written for tailtune (sentiment, topic, question-type and generic phrasings);
2. templates whose connecting words the backbone's own MLM fills in: for each training example,
   ``text [MASK] x k label-word .`` (and ``label-word [MASK] x k : text``) is filled left to right,
   one [MASK] at a time, with the most probable whole word; the fillings that most training
   examples agree on become ``{text} <words> {mask} .`` (``{mask} <words> : {text}``).

Every candidate is ranked by zero-shot dev accuracy with the verbalizer (the untrained ``prompt``
preset: pretrained MLM head at [MASK]), one forward pass over dev per template. The result is an
ordinary template string, printed and written with the ranking.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from .errors import ConfigError

BANK = [
    "{text} It was {mask} .", "{text} It is {mask} .", "{text} This is {mask} .", "{text} A {mask} one .",
    "{text} All in all, it was {mask} .", "{text} In short, it is {mask} .", "{text} Overall, {mask} .",
    "{text} It is about {mask} .", "{text} This is about {mask} .", "{text} The topic is {mask} .",
    "{mask} : {text}", "[ {mask} ] {text}", "{mask} news : {text}", "{text} The answer is a {mask} .",
    "Question : {text} Type : {mask} .", "{text} I think it is {mask} .", "{text} In a word, {mask} .",
]


@torch.no_grad()
def _fill(model: Any, skeletons: list[str], k: int, vocab_ok: torch.Tensor, batch_size: int = 64) -> list[list[str]]:
    """Fill the ``k`` [MASK] tokens of each skeleton left to right with the MLM's best whole word (``vocab_ok``)."""
    from .batch import collate
    from .text import Encoded
    tok = model.tokenizer
    mlm = model.head
    device = next(model.parameters()).device
    with_ids = [tok(s)["input_ids"] for s in skeletons]
    words: list[list[str]] = [[] for _ in skeletons]
    for _ in range(k):
        for s in range(0, len(with_ids), batch_size):
            chunk = [Encoded(ids, ids.index(tok.mask_token_id)) for ids in with_ids[s:s + batch_size]]
            batch = collate(chunk, tok.pad_token_id, device)
            hidden = model.features(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            x = hidden[torch.arange(len(chunk)), batch["position"]]
            z = mlm.layer_norm(mlm.act(mlm.dense(x)))
            logits = (z @ mlm.decoder_weight.T + mlm.bias).float().cpu()
            logits[:, ~vocab_ok] = float("-inf")
            for j, best in enumerate(logits.argmax(-1).tolist()):
                ids = with_ids[s + j]
                ids[ids.index(tok.mask_token_id)] = best
                words[s + j].append(tok.decode([best]).strip())
    return words


def mlm_candidates(model: Any, train: Any, label_words: dict[str, str], lengths: tuple[int, ...] = (1, 2, 3),
                   per_shape: int = 3, max_examples: int = 64) -> list[str]:
    """Templates whose connecting words the MLM fills in, the most agreed-on fillings first."""
    from .labelwords import _whole_words
    tok = model.tokenizer
    mask = tok.mask_token
    vocab_ok = torch.zeros(len(tok), dtype=torch.bool)  # whole words only, found once for every filling
    vocab_ok[[i for i, _ in _whole_words(tok, list(range(len(tok))))]] = True
    rows = list(zip(train.texts, train.labels))[:max_examples]
    found = []
    for k in lengths:
        holes = " ".join([mask] * k)
        for shape in ("suffix", "prefix"):
            skeletons = [f"{t} {holes} {label_words[y]} ." if shape == "suffix" else f"{label_words[y]} {holes} : {t}"
                         for t, y in rows]
            votes = Counter(" ".join(w) for w in _fill(model, skeletons, k, vocab_ok))
            for filling, _n in votes.most_common(per_shape):
                found.append(f"{{text}} {filling} {{mask}} ." if shape == "suffix" else f"{{mask}} {filling} : {{text}}")
    return list(dict.fromkeys(found))


def search_templates(train: Any, dev: Any, backbone: str | None = None, verbalizer: dict | None = None,
                     bank: list[str] | None = None, generate: bool = True, max_length: int = 128,
                     batch_size: int = 64) -> dict:
    """{"template": the best, "ranking": [{"template", "dev_accuracy", "source"}], ...} by zero-shot dev accuracy."""
    from .backbone import load_backbone
    from .config import config_from_preset
    from .data import check_labels, label_space
    from .inputs import TemplateInput, TemplateOptions, Verbalizer
    from .model import build_classifier
    from .training import predict_logits
    labels = label_space(train.labels)
    if dev is None or not len(dev):
        raise ConfigError("template search ranks templates on dev accuracy: give a dev split (--dev)")
    check_labels(dev, labels, "dev")
    bb = load_backbone(backbone, with_mlm_head=True)
    if bb.mlm is None or bb.mlm.missing:
        raise ConfigError(f"template search reads the masked-LM head, and {bb.name} has none; use a backbone with its "
                          f"MLM head (e.g. bert-base-uncased, roberta-base)")
    verb = Verbalizer(labels, verbalizer)
    words = {y: ws[0] for y, ws in verb.words.items()}
    sources = {t: "bank" for t in (bank if bank is not None else BANK)}
    model = build_classifier(config_from_preset("prompt", max_length=max_length), labels, bb, verb.words)
    if generate:
        for t in mlm_candidates(model, train, words):
            sources.setdefault(t, "mlm")
    gold = torch.tensor([labels.index(y) for y in dev.labels])
    ranking = []
    for template in sources:  # one model; only its input format changes (the head reads the [MASK] wherever it is)
        try:
            model.input_format = TemplateInput(TemplateOptions(template=template), bb.tokenizer, max_length)
        except ConfigError:  # e.g. a filling that leaves no room for the text: skip it
            continue
        scores = predict_logits(model, model.encode(list(dev.texts), dev.texts_b), batch_size)
        ranking.append({"template": template, "dev_accuracy": float((scores.argmax(-1) == gold).float().mean()),
                        "source": sources[template]})
    if not ranking:
        raise ConfigError("no usable template among the candidates; give some with --bank")
    ranking.sort(key=lambda r: -r["dev_accuracy"])
    return {"template": ranking[0]["template"], "dev_accuracy": ranking[0]["dev_accuracy"], "ranking": ranking,
            "verbalizer": words}
