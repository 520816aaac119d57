"""Labelled text: reading files, label spaces, class statistics, splits and k-shot sampling."""
from __future__ import annotations

import csv
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


class DataError(ValueError):
    """A problem with the user's data, worded so the user can fix it."""


@dataclass
class TextDataset:
    """Parallel lists of texts, optional second texts and string labels."""

    texts: list[str]
    labels: list[str]
    texts_b: list[str] | None = None
    source: str = "<memory>"

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise DataError(f"{self.source}: {len(self.texts)} texts but {len(self.labels)} labels")
        if self.texts_b is not None and len(self.texts_b) != len(self.texts):
            raise DataError(f"{self.source}: {len(self.texts)} texts but {len(self.texts_b)} second texts")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> "TextDataset":
        pick = lambda xs: [xs[i] for i in indices]  # noqa: E731
        return TextDataset(pick(self.texts), pick(self.labels),
                           pick(self.texts_b) if self.texts_b is not None else None, self.source)


# ---------------------------------------------------------------- reading

def read_dataset(path: str | Path, text_col: str = "text", label_col: str | None = "label",
                 text_b_col: str | None = None, header: bool = True,
                 columns: Sequence[str] | None = None, allow_empty: bool = False) -> TextDataset:
    """Read a .tsv, .csv or .jsonl file into a TextDataset.

    An empty text is an error unless ``allow_empty`` (published splits sometimes hold one, e.g.
    LM-BFF's CR 16-shot train sets; the model then sees only the template).

    TSV/CSV use standard CSV quoting. Files without a header row need ``header=False`` and
    ``columns`` naming each column in order (e.g. ``["label", "text"]``). ``label_col=None``
    reads unlabelled texts (labels become empty strings).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _read_jsonl(path)
    elif suffix in (".tsv", ".csv"):
        rows = _read_delimited(path, "\t" if suffix == ".tsv" else ",", header, columns)
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .tsv, .csv or .jsonl")
    return _rows_to_dataset(rows, str(path), text_col, label_col, text_b_col, allow_empty)


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}, line {lineno}: expected a JSON object per line")
            rows.append((lineno, obj))
    return rows


def _read_delimited(path: Path, delimiter: str, header: bool,
                    columns: Sequence[str] | None) -> list[tuple[int, dict]]:
    csv.field_size_limit(1 << 24)
    rows = []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            names = list(columns) if columns else None
            if header:
                first = next(reader, None)
                if first is None:
                    raise DataError(f"{path}: the file is empty")
                names = names or first
            if names is None:
                raise DataError(f"{path}: no header row; pass the column names (columns=[...])")
            for row in reader:
                lineno = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(names):
                    raise DataError(f"{path}, line {lineno}: expected {len(names)} fields "
                                    f"({', '.join(names)}) but found {len(row)}; check the "
                                    f"delimiter and quoting")
                rows.append((lineno, dict(zip(names, row))))
        except csv.Error as e:
            raise DataError(f"{path}, line {reader.line_num}: unreadable row ({e})") from None
    return rows


def _rows_to_dataset(rows, source, text_col, label_col, text_b_col, allow_empty=False) -> TextDataset:
    if not rows:
        raise DataError(f"{source}: no examples found")
    present = set(rows[0][1])
    for col in (text_col, label_col, text_b_col):
        if col is not None and col not in present:
            raise DataError(f"{source}: no column {col!r}; columns are {sorted(present)}. "
                            f"Choose the right one with --text-col/--text-b-col/--label-col")
    texts, labels, texts_b = [], [], [] if text_b_col else None
    for lineno, row in rows:
        text, label = row.get(text_col), row.get(label_col) if label_col else ""
        if text is None or (not str(text).strip() and not allow_empty):
            raise DataError(f"{source}, line {lineno}: empty text in column {text_col!r}; fix the file, or "
                            f"keep such rows with allow_empty (experiment YAML: allow_empty_text: true)")
        if label_col and (label is None or not str(label).strip()):
            raise DataError(f"{source}, line {lineno}: empty label in column {label_col!r}")
        texts.append(str(text))
        labels.append(str(label).strip())
        if texts_b is not None:
            b = row.get(text_b_col)
            if b is None or not str(b).strip():
                raise DataError(f"{source}, line {lineno}: empty second text in column {text_b_col!r}")
            texts_b.append(str(b))
    return TextDataset(texts, labels, texts_b, source)


def from_hf(dataset, text_col: str = "text", label_col: str = "label",
            text_b_col: str | None = None) -> TextDataset:
    """Convert a Hugging Face ``datasets.Dataset``; ClassLabel ids become their names."""
    names = None
    feature = dataset.features.get(label_col) if hasattr(dataset, "features") else None
    if feature is not None and hasattr(feature, "names"):
        names = feature.names
    rows = []
    for i, row in enumerate(dataset):
        row = dict(row)
        if names is not None and row.get(label_col) is not None:
            row[label_col] = names[row[label_col]]
        rows.append((i + 1, row))
    return _rows_to_dataset(rows, "<hf dataset>", text_col, label_col, text_b_col)


# ---------------------------------------------------------------- label space

def label_space(labels: Sequence[str]) -> list[str]:
    """The stable label order: sorted label names (saved with the model)."""
    return sorted(set(labels))


def check_labels(ds: TextDataset, labels: Sequence[str], split: str) -> None:
    """Every label of a dev/test split must have been seen in training."""
    known = set(labels)
    unknown = sorted({y for y in ds.labels if y not in known})
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise DataError(f"{ds.source}: the {split} split has {len(unknown)} label(s) never seen in "
                        f"training: {shown}. Add training examples for them or drop these rows.")


# ---------------------------------------------------------------- statistics

def head_tail_split(labels: Sequence[str], theta: float = 0.65) -> tuple[list[str], list[str]]:
    """The long-tail paper's head/tail rule.

    Sort the classes by frequency (largest first, ties by name) and accumulate their shares;
    a class is *head* while the running share including it stays below ``theta``, and every
    later class is *tail*.
    """
    if not 0 < theta <= 1:
        raise ValueError(f"theta must be in (0, 1], got {theta}")
    counts = Counter(labels)
    total = sum(counts.values())
    order = sorted(counts, key=lambda c: (-counts[c], c))
    head, tail, running, in_head = [], [], 0.0, True
    for c in order:
        running += counts[c] / total
        in_head = in_head and running < theta
        (head if in_head else tail).append(c)
    return head, tail


def class_stats(labels: Sequence[str], theta: float = 0.65) -> dict:
    """Count per class (largest first), imbalance ratio and the head/tail split."""
    counts = Counter(labels)
    order = sorted(counts, key=lambda c: (-counts[c], c))
    head, tail = head_tail_split(labels, theta)
    return {
        "n_examples": len(labels),
        "n_classes": len(counts),
        "counts": {c: counts[c] for c in order},
        "imbalance_ratio": counts[order[0]] / counts[order[-1]],
        "theta": theta,
        "head": head,
        "tail": tail,
    }


# ---------------------------------------------------------------- splits

def _by_class(labels: Sequence[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        groups.setdefault(y, []).append(i)
    return groups


def stratified_split(ds: TextDataset, dev_fraction: float = 0.1,
                     seed: int = 42) -> tuple[TextDataset, TextDataset]:
    """Carve a seeded, stratified dev split from ``ds``.

    Each class gives ``round(n * dev_fraction)`` examples to dev, but always keeps at least
    one for training; classes with a single example stay entirely in train.
    """
    if not 0 < dev_fraction < 1:
        raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
    rng = random.Random(seed)
    train_idx, dev_idx = [], []
    for y, idx in sorted(_by_class(ds.labels).items()):
        idx = idx[:]
        rng.shuffle(idx)
        n_dev = min(len(idx) - 1, max(1 if len(idx) >= 3 else 0, round(len(idx) * dev_fraction)))
        dev_idx += idx[:n_dev]
        train_idx += idx[n_dev:]
    return ds.subset(sorted(train_idx)), ds.subset(sorted(dev_idx))


def k_shot(ds: TextDataset, k: int, seed: int = 42,
           with_dev: bool = True) -> tuple[TextDataset, TextDataset | None]:
    """LM-BFF sampling: ``k`` examples per class for train and another ``k`` for dev, seeded."""
    rng = random.Random(seed)
    train_idx, dev_idx = [], []
    need = 2 * k if with_dev else k
    for y, idx in sorted(_by_class(ds.labels).items()):
        if len(idx) < need:
            raise DataError(f"{ds.source}: class {y!r} has {len(idx)} examples; {need} are needed "
                            f"for {k}-shot train{' + dev' if with_dev else ''}")
        idx = idx[:]
        rng.shuffle(idx)
        train_idx += idx[:k]
        dev_idx += idx[k:2 * k] if with_dev else []
    return ds.subset(sorted(train_idx)), (ds.subset(sorted(dev_idx)) if with_dev else None)


def check_trainable(ds: TextDataset) -> None:
    """A class with a single training example cannot be split or validated; say so."""
    singles = sorted(y for y, n in Counter(ds.labels).items() if n == 1)
    if singles:
        import warnings
        warnings.warn(f"{ds.source}: {len(singles)} class(es) have a single training example "
                      f"({', '.join(singles[:8])}{' ...' if len(singles) > 8 else ''}); they stay in "
                      f"train and cannot appear in a carved dev split", stacklevel=2)
