"""What users pick instead of tailtune, run on the same backbone, splits and seeds.

Each peer takes (train, dev, test) TextDatasets, the seed and the max length, and returns its test
predictions and its training wall time (what it needs to be ready to predict: encoding the training
texts and fitting, or fine-tuning; test-set prediction is not counted).

- ``lr-balanced`` / ``lr``: frozen sentence embeddings of the backbone (sentence-transformers, its
  mean pooling, L2-normalised) + scikit-learn ``LogisticRegression(C=10, class_weight="balanced" /
  None, max_iter=2000)``: the "ten-line script".
- ``setfit``: SetFit 1.x with its defaults (body lr 2e-5, 1 epoch, batch 16, "oversampling" pairs,
  logistic-regression head) and the set's max length, except where its default sampling would make
  more than 8,000 pairs (anything beyond the 16-shot sets): there ``max_steps=500`` (8,000 pairs)
  bounds it, because the number of pairs grows with the square of the data.
- ``hf-trainer``: Hugging Face ``Trainer`` + ``AutoModelForSequenceClassification`` (the checkpoint's
  pooler + a new linear layer) with the Trainer's defaults: lr 5e-5, 3 epochs, AdamW, linear decay;
  batch 16 (8 on the 16-shot sets), no evaluation, last checkpoint.

Peers install as an extra: ``pip install -e ".[peers]"``.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import numpy as np
import torch


def _backbone(backbone: str | None) -> str:
    from tailtune.backbone import resolve_name
    return resolve_name(backbone)


def embeddings_lr(train: Any, test: Any, seed: int, max_length: int, backbone: str | None = None,
                  balanced: bool = True) -> dict:
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression
    torch.manual_seed(seed)
    model = SentenceTransformer(_backbone(backbone), device="cuda" if torch.cuda.is_available() else "cpu")
    model.max_seq_length = max_length
    t0 = time.perf_counter()
    x = model.encode(train.texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    clf = LogisticRegression(C=10, class_weight="balanced" if balanced else None, max_iter=2000, random_state=seed)
    clf.fit(x, train.labels)
    seconds = time.perf_counter() - t0
    xt = model.encode(test.texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    return {"predictions": list(clf.predict(xt)), "train_seconds": seconds}


def setfit(train: Any, test: Any, seed: int, max_length: int, backbone: str | None = None,
           max_pairs: int = 8000, num_iterations: int | None = None) -> dict:
    """SetFit with its defaults (pairs capped at ``max_pairs``), or with ``num_iterations`` set: 2 pairs per text
    and iteration, SetFit's paper's setting and the count `auto`'s contrastive stage draws."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments
    labels = sorted(set(train.labels))
    counts = np.bincount([labels.index(y) for y in train.labels])
    positive = int(sum(n * (n + 1) // 2 for n in counts))  # unordered same-class pairs, a text with itself included
    negative = int(len(train) ** 2 - sum(n * n for n in counts)) // 2  # unordered pairs across classes
    # "oversampling" (the default): the larger kind, both kinds as many (544 at 16 + 16); else 2 per text and iteration
    default_pairs = 2 * num_iterations * len(train) if num_iterations else 2 * max(positive, negative)
    capped = default_pairs > max_pairs
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, seed=seed, max_length=max_length, report_to="none",
                                 show_progress_bar=False, save_strategy="no", logging_strategy="no",
                                 **({"num_iterations": num_iterations} if num_iterations else {}),
                                 **({"max_steps": max_pairs // 16} if capped else {}))
        model = SetFitModel.from_pretrained(_backbone(backbone), labels=labels)
        model.model_body.max_seq_length = max_length  # the same text the other methods see
        ds = Dataset.from_dict({"text": train.texts, "label": list(train.labels)})
        trainer = Trainer(model=model, args=args, train_dataset=ds)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        pred = model.predict(test.texts, batch_size=64, show_progress_bar=False)
    return {"predictions": [str(p) for p in pred], "train_seconds": seconds,
            "notes": f"max_steps={max_pairs // 16} ({max_pairs} pairs; default sampling: {default_pairs})" if capped
            else f"num_iterations={num_iterations} ({default_pairs} pairs)" if num_iterations
            else f"defaults ({default_pairs} pairs)"}


def hf_trainer(train: Any, test: Any, seed: int, max_length: int, backbone: str | None = None,
               batch_size: int = 16) -> dict:
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    path = _backbone(backbone)
    labels = sorted(set(train.labels))
    index = {y: i for i, y in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(path)

    def dataset(ds: Any) -> Dataset:
        d = Dataset.from_dict({"text": ds.texts, "label": [index.get(y, 0) for y in ds.labels]})
        return d.map(lambda b: tok(b["text"], truncation=True, max_length=max_length), batched=True,
                     remove_columns=["text"])
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch_size,
                                 per_device_eval_batch_size=128, seed=seed, report_to=[], save_strategy="no",
                                 eval_strategy="no", logging_strategy="no", disable_tqdm=True,
                                 use_cpu=not torch.cuda.is_available())
        trainer = Trainer(model=model, args=args, train_dataset=dataset(train), data_collator=DataCollatorWithPadding(tok))
        trainer.train()
        seconds = time.perf_counter() - t0
        pred = trainer.predict(dataset(test)).predictions.argmax(-1).tolist()
    return {"predictions": [labels[i] for i in pred], "train_seconds": seconds}


PEERS = {
    "lr-balanced": lambda tr, dev, te, seed, ml, bb, few: embeddings_lr(tr, te, seed, ml, bb, balanced=True),
    "lr": lambda tr, dev, te, seed, ml, bb, few: embeddings_lr(tr, te, seed, ml, bb, balanced=False),
    "setfit": lambda tr, dev, te, seed, ml, bb, few: setfit(tr, te, seed, ml, bb),
    "setfit-iter20": lambda tr, dev, te, seed, ml, bb, few: setfit(tr, te, seed, ml, bb, num_iterations=20),
    "hf-trainer": lambda tr, dev, te, seed, ml, bb, few: hf_trainer(tr, te, seed, ml, bb, 8 if few else 16),
}
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
