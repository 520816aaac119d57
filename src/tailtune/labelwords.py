"""Automatic label words (LM-BFF's search, on an MLM backbone): ``tailtune label-words``.

1. Candidates: for each class, a plausible pool of the ``20 * top_k`` vocabulary words with the
   highest mean log-probability at the template's [MASK] over that class's training texts (the
   pretrained MLM head, no training), of which the ``top_k`` are kept by ``rank``:
   - ``"contrast"`` (default): the class's mean log-probability minus the class-balanced mean over all
     classes, so words the MLM puts at [MASK] for every input ("said", "the") do not crowd out the words
     that tell this class apart. A weak MLM (a small or briefly adapted one) ranks the same generic
     words first for every class, and LM-BFF's raw ranking then offers each class the same candidates;
   - ``"likelihood"``: LM-BFF's ranking, the class's mean log-probability alone.

   Only whole words count: a token that the tokenizer gives back as itself for " word" and that reads
   as letters.
2. Assignment: start from distinct words (classes in turn take their best candidate that no class took
   yet), then, class by class, take the candidate that gives the best zero-shot dev accuracy with the
   other classes' words fixed (a word serves one class); repeat until nothing changes (at most
   ``passes`` rounds). The MLM scores of the dev texts are computed once, so each tried assignment
   costs an index, not a forward pass.

The result is an ordinary verbalizer (label -> word): printed, written as JSON and used with
``--verbalizer`` like a hand-written one.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .errors import ConfigError


@torch.no_grad()
def mask_log_probs(model: Any, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """(n, vocab) log-probabilities of every vocabulary token at the template's [MASK]."""
    from .batch import collate
    head = model.head
    device = next(model.parameters()).device
    encoded = model.encode(texts)
    out = []
    model.eval()
    for s in range(0, len(encoded), batch_size):
        batch = collate(encoded[s:s + batch_size], model.tokenizer.pad_token_id, device)
        hidden = model.features(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                                batch.get("soft_positions"))
        x, _ = model.readout(hidden, batch["attention_mask"], batch["position"])
        z = head.layer_norm(head.act(head.dense(x)))
        out.append((z @ head.decoder_weight.T + head.bias).float().log_softmax(-1).cpu())
    return torch.cat(out)


def _whole_words(tokenizer: Any, ids: list[int]) -> list[tuple[int, str]]:
    special = set(tokenizer.all_special_ids)
    found = []
    for i in ids:
        word = tokenizer.decode([i]).strip()
        if i in special or len(word) < 2 or not word.isalpha():
            continue
        if tokenizer(" " + word, add_special_tokens=False)["input_ids"] == [i]:
            found.append((i, word))
    return found


RANKS = ("contrast", "likelihood")


def assign(candidates: list[list[int]], accuracy: Callable[[list[int]], float],
           passes: int = 3) -> tuple[list[int], float]:
    """One distinct token per class from its candidates (best first), improved by coordinate ascent on
    ``accuracy``; returns (tokens, their accuracy)."""
    choice: list[int] = []
    for c, cands in enumerate(candidates):
        free = [t for t in cands if t not in choice]
        if not free:
            raise ConfigError(f"class {c}'s candidate words are all taken by other classes; raise top_k")
        choice.append(free[0])
    best = accuracy(choice)
    for _ in range(passes):
        changed = False
        for c, cands in enumerate(candidates):
            for token in cands:
                if token in choice:
                    continue
                trial = choice[:c] + [token] + choice[c + 1:]
                score = accuracy(trial)
                if score > best:
                    choice, best, changed = trial, score, True
        if not changed:
            break
    return choice, best


def search_label_words(train: Any, dev: Any, backbone: str | None = None, template: str | None = None,
                       top_k: int = 10, passes: int = 3, max_length: int = 128, batch_size: int = 64,
                       rank: str = "contrast") -> dict:
    """{"verbalizer": label -> word, "candidates": label -> [words], "dev_accuracy": zero-shot accuracy}."""
    from .backbone import load_backbone
    from .config import config_from_preset
    from .data import check_labels, label_space
    from .model import build_classifier
    labels = label_space(train.labels)
    if dev is None or not len(dev):
        raise ConfigError("label-word search ranks assignments on dev accuracy: give a dev split (--dev)")
    check_labels(dev, labels, "dev")
    if top_k < 1 or passes < 1:
        raise ConfigError(f"need top_k >= 1 and passes >= 1, got {top_k} and {passes}")
    if rank not in RANKS:
        raise ConfigError(f"unknown candidate ranking {rank!r}; choose one of {', '.join(RANKS)}")
    config = config_from_preset("prompt", max_length=max_length, **({"template": template} if template else {}))
    bb = load_backbone(backbone, with_mlm_head=True)
    if bb.mlm is None or bb.mlm.missing:
        raise ConfigError(f"label-word search reads the masked-LM head, and {bb.name} has none "
                          f"({', '.join(bb.mlm.missing) if bb.mlm else 'not loaded'} missing); use a backbone with "
                          f"its MLM head (e.g. bert-base-uncased, roberta-base)")
    tokenizer = bb.tokenizer
    placeholder = tokenizer.decode([tokenizer(" the", add_special_tokens=False)["input_ids"][0]]).strip() or "the"
    model = build_classifier(config, labels, bb, {y: placeholder for y in labels})
    train_lp = mask_log_probs(model, list(train.texts), batch_size)
    dev_lp = mask_log_probs(model, list(dev.texts), batch_size)
    targets = torch.tensor([labels.index(y) for y in train.labels])
    means = torch.stack([train_lp[targets == c].mean(0) for c in range(len(labels))])
    contrast = means - means.mean(0)
    candidates: dict[str, list[tuple[int, str]]] = {}
    for c, y in enumerate(labels):
        pool = _whole_words(tokenizer, means[c].topk(min(means.shape[1], 20 * top_k)).indices.tolist())
        if rank == "contrast":
            pool.sort(key=lambda tw: -float(contrast[c, tw[0]]))
        candidates[y] = pool[:top_k]
        if not candidates[y]:
            raise ConfigError(f"no whole-word candidate for label {y!r}; try another template or backbone")
    gold = torch.tensor([labels.index(y) for y in dev.labels])

    def accuracy(choice: list[int]) -> float:
        return float((dev_lp[:, choice].argmax(-1) == gold).float().mean())

    choice, best = assign([[t for t, _ in candidates[y]] for y in labels], accuracy, passes)
    words = {y: tokenizer.decode([t]).strip() for y, t in zip(labels, choice)}
    return {"verbalizer": words, "candidates": {y: [w for _, w in cs] for y, cs in candidates.items()},
            "dev_accuracy": best, "template": config.options.get("template"), "rank": rank}
