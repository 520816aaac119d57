"""Labelled text: reading files, label spaces, class statistics, splits and k-shot sampling."""
from __future__ import annotations

import csv
import io
import json
import random
import shlex
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import ConfigError, DataError


@dataclass
class TextDataset:
    """Parallel lists of texts, optional second texts and string labels."""

    texts: list[str]
    labels: list[str]
    texts_b: list[str] | None = None
    source: str = "<memory>"
    ids: list[str] | None = None
    written: list[bool] | None = None
    """True where an example was written for its label (a description, ``with_descriptions``) rather than observed:
    counts of the data (examples per class, which choose a recipe's regime) leave those out."""
    column_names: dict[str, str | None] | None = None
    """The file columns it was read from (``text_col``, ``text_b_col``, ``label_col``); a classifier fitted on it
    saves them, and ``tailtune evaluate`` / ``predict`` read its data from the same columns."""

    def __post_init__(self) -> None:
        self.labels = [str(y) for y in self.labels]  # labels are strings (numpy or int labels too)
        if len(self.texts) != len(self.labels):
            raise DataError(f"{self.source}: {len(self.texts)} texts but {len(self.labels)} labels")
        if self.texts_b is not None and len(self.texts_b) != len(self.texts):
            raise DataError(f"{self.source}: {len(self.texts)} texts but {len(self.texts_b)} second texts")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> "TextDataset":
        pick = lambda xs: [xs[i] for i in indices] if xs is not None else None  # noqa: E731
        return TextDataset(pick(self.texts), pick(self.labels), pick(self.texts_b), self.source, pick(self.ids),
                           pick(self.written), self.column_names)

    def observed(self) -> int:
        """How many examples are observed data (not ``written`` for a label)."""
        return len(self.texts) - sum(self.written or ())


def texts_of(X: Any, name: str = "X") -> list[str]:
    """``X`` as a list of texts, refused with a message when it is one string (which would be read character by
    character) or holds something other than strings."""
    if isinstance(X, (str, bytes)):
        raise DataError(f"{name} must be a list of texts, not a single string: wrap it, [text]")
    try:
        X = list(X)
    except TypeError:
        raise DataError(f"{name} must be a list of texts; got a {type(X).__name__}") from None
    bad = next((x for x in X if not isinstance(x, str)), None)
    if bad is not None:
        raise DataError(f"{name} must hold texts (strings); found a {type(bad).__name__}: {str(bad)[:40]!r}")
    return X


def per_class(examples: TextDataset) -> float:
    """Observed training examples per class, on average: label descriptions that joined them
    (``with_descriptions``) do not move the recipe out of the few-shot regime."""
    return examples.observed() / max(1, len(set(examples.labels)))


def with_descriptions(ds: TextDataset, descriptions: Mapping[str, Any], copies: int = 4,
                      known: Sequence[str] | None = None) -> TextDataset:
    """``ds`` plus each label's description(s) as training examples, ``copies`` times each (a label
    description as a prior: SetFit's templated examples). ``descriptions``: label -> text or list of texts;
    labels without one get none. A label outside ``known`` (default: those ``ds`` holds), a pair task or a
    blank text is refused."""
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ConfigError(f"description copies={copies!r}: must be an integer >= 1")
    known = set(ds.labels if known is None else known)
    unknown = sorted(str(y) for y in descriptions if str(y) not in known)
    if unknown:
        raise ConfigError(f"descriptions name labels the training data does not have: {unknown[:5]}"
                          f"{' ...' if len(unknown) > 5 else ''}; training labels: {sorted(known)[:10]}")
    if ds.texts_b is not None:
        raise ConfigError("label descriptions are single texts; this task has text pairs (--text-b-col), so they "
                          "cannot join its training examples")
    texts: list[str] = []
    labels: list[str] = []
    for label, given in descriptions.items():
        if not isinstance(given, (str, list, tuple)):
            raise ConfigError(f"the description of label {label!r} is {given!r}: give a text or a list of texts")
        for text in [given] if isinstance(given, str) else given:
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(f"the description of label {label!r} is {text!r}: give a non-blank text")
            texts += [text] * copies
            labels += [str(label)] * copies
    return TextDataset(ds.texts + texts, ds.labels + labels, None, ds.source,
                       None if ds.ids is None else ds.ids + [f"description:{y}" for y in labels],
                       (ds.written or [False] * len(ds)) + [True] * len(texts))


def check_descriptions(ds: TextDataset, descriptions: Mapping[str, Any], copies: int = 4) -> None:
    """Refuse, before any expensive work, what ``with_descriptions`` would refuse: labels ``ds`` does not have, a
    pair task, a blank or non-text description, copies < 1 (the entry points call it before the backbone loads)."""
    with_descriptions(ds, descriptions, copies)


# ---------------------------------------------------------------- reading

def read_dataset(path: str | Path, text_col: str = "text", label_col: str | None = "label",
                 text_b_col: str | None = None, header: bool = True,
                 columns: Sequence[str] | None = None, allow_empty: bool = False,
                 id_col: str | None = None, keep_blank_rows: bool = False) -> TextDataset:
    """Read a .tsv, .csv or .jsonl file (or a Hub dataset, ``hf:NAME[:CONFIG]:SPLIT``) into a TextDataset; a .txt
    file is one text per line, without labels (``label_col=None``).

    TSV/CSV use standard CSV quoting; a quote that is never closed (rows merged into one) is an
    error naming the line where it opened. Files without a header row need ``header=False`` and
    ``columns`` naming each column in order (e.g. ``["label", "text"]``). ``label_col=None`` reads
    unlabelled texts (labels become empty strings). An empty text is an error unless
    ``allow_empty`` (published splits sometimes hold one, e.g. LM-BFF's CR 16-shot train sets).
    ``id_col`` keeps an id per row; ``keep_blank_rows`` keeps blank lines as rows with empty fields
    (for prediction, so outputs line up with inputs). UTF-8, with or without a byte-order mark.
    """
    if str(path).startswith("hf:"):  # a dataset on the Hugging Face Hub: hf:NAME[:CONFIG]:SPLIT
        return load_hub_dataset(str(path), text_col, label_col or "label", text_b_col)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    text = _read_text(path)
    if suffix == ".jsonl":
        rows = _read_jsonl(path, text)
    elif suffix in (".tsv", ".csv"):
        rows = _read_delimited(path, text, "\t" if suffix == ".tsv" else ",", header, columns, keep_blank_rows)
    elif suffix == ".txt":  # plain text, one text per line: texts only (prediction, unlabelled pools)
        if label_col is not None or text_b_col is not None or id_col is not None:
            wanted = "a label" if label_col is not None else "a second text" if text_b_col is not None else "ids"
            raise DataError(f"{path}: a .txt file holds one text per line and nothing else, but this needs "
                            f"{wanted}; use a .tsv, .csv or .jsonl file with {wanted} column")
        rows = [(lineno, {text_col: line}) for lineno, line in enumerate(text.splitlines(), 1)
                if keep_blank_rows or line.strip()]
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .tsv, .csv, .jsonl (or .txt, one text per "
                        f"line, for texts without labels)")
    return _rows_to_dataset(rows, str(path), text_col, label_col, text_b_col, allow_empty, id_col)


def columns(path: str | Path) -> list[str]:
    """The column names of a data file with a header row (a .jsonl file: the keys of its first object)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.suffix.lower() == ".txt":  # one text per line: no columns
        return []
    text = _read_text(path)
    if path.suffix.lower() == ".jsonl":
        rows = _read_jsonl(path, text)
        return list(rows[0][1]) if rows else []
    first = next(csv.reader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ","),
                 [])
    return list(first)


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte {data[e.start]:#04x}); save the file as "
                        f"UTF-8") from None


def _read_jsonl(path: Path, text: str) -> list[tuple[int, dict]]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}, line {lineno}: expected a JSON object per line, found a {type(obj).__name__}")
        rows.append((lineno, obj))
    return rows


def _read_delimited(path: Path, text: str, delimiter: str, header: bool, columns: Sequence[str] | None,
                    keep_blank: bool = False) -> list[tuple[int, dict]]:
    csv.field_size_limit(1 << 24)
    rows: list[tuple[int, dict]] = []
    lines = text.splitlines()
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    names = list(columns) if columns else None
    try:
        if header:
            first = next(reader, None)
            if first is None:
                raise DataError(f"{path}: the file is empty")
            names = names or first
        if names is None:
            raise DataError(f"{path}: no header row; pass the column names (columns=[...])")
        blank: list[int] = []  # blank lines kept as rows, unless nothing follows them
        previous = reader.line_num
        for row in reader:
            start, end = previous + 1, reader.line_num
            previous = end
            if not row or (len(row) == 1 and not row[0].strip() and len(names) > 1):
                if keep_blank:
                    blank.append(start)
                continue
            _check_quotes(path, row, start, end, len(lines), delimiter, len(names))
            if len(row) != len(names):
                raise DataError(f"{path}, line {start}: expected {len(names)} fields ({', '.join(names)}) but "
                                f"found {len(row)}; check the delimiter and quoting")
            rows += [(n, dict.fromkeys(names, "")) for n in blank]
            blank = []
            rows.append((start, dict(zip(names, row))))
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: unreadable row ({e})") from None
    return rows


def _check_quotes(path: Path, row: list[str], start: int, end: int, n_lines: int, delimiter: str,
                  n_fields: int) -> None:
    """Refuse a row that a quote left open has merged with the lines after it."""
    if end == start:
        return
    for field in row:
        if "\n" not in field:
            continue
        looks_like_rows = any(delimiter in line and (delimiter == "\t" or len(next(csv.reader([line]))) == n_fields)
                              for line in field.splitlines())
        if looks_like_rows or (end >= n_lines and field.endswith("\n")):
            raise DataError(f"{path}, line {start}: a quote opened on this line is not closed before line {end}"
                            f"{' (the end of the file)' if end >= n_lines else ''}, so {end - start + 1} lines were "
                            f"read as one row; close the quote, or double a quote that belongs to the text (\"\")")


def _value(source: str, lineno: int, column: str, value: object, what: str) -> str:
    """A cell as a string; JSON lists, objects, booleans and nulls are refused, not stringified."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and what == "label":
        return str(value)
    kind = "null" if value is None else type(value).__name__
    raise DataError(f"{source}, line {lineno}: column {column!r} holds a {kind} ({str(value)[:40]}), not a "
                    f"{'string or integer' if what == 'label' else 'string'}; fix the file")


def _rows_to_dataset(rows: list[tuple[int, dict]], source: str, text_col: str, label_col: str | None,
                     text_b_col: str | None, allow_empty: bool = False, id_col: str | None = None) -> TextDataset:
    if not rows:
        raise DataError(f"{source}: no examples found")
    present = set(rows[0][1])
    for col, role in ((text_col, "text"), (label_col, "label"), (text_b_col, "text-b"), (id_col, "id")):
        if col is not None and col not in present:
            same = [c for c in sorted(present) if c.strip().lower() == col.strip().lower()]
            raise DataError(f"{source}: no {role} column {col!r}; columns are {sorted(present)}. "
                            f"Name the {role} column with --{role}-col" + (f" {shlex.quote(same[0])}" if same else ""))
    texts, labels = [], []
    texts_b: list[str] | None = [] if text_b_col else None
    ids: list[str] | None = [] if id_col else None
    for lineno, row in rows:
        text = _value(source, lineno, text_col, row.get(text_col), "text")
        if not text.strip() and not allow_empty:
            raise DataError(f"{source}, line {lineno}: empty text in column {text_col!r}; fix the file, or "
                            f"keep such rows with allow_empty (experiment YAML: allow_empty_text: true)")
        label = _value(source, lineno, label_col, row.get(label_col), "label") if label_col else ""
        if label_col and not label.strip():
            raise DataError(f"{source}, line {lineno}: empty label in column {label_col!r}")
        texts.append(text)
        labels.append(label.strip())
        if texts_b is not None:
            b = _value(source, lineno, text_b_col, row.get(text_b_col), "text")
            if not b.strip() and not allow_empty:
                raise DataError(f"{source}, line {lineno}: empty second text in column {text_b_col!r}")
            texts_b.append(b)
        if ids is not None:
            ids.append(str(row.get(id_col)))
    return TextDataset(texts, labels, texts_b, source, ids,
                       column_names={"text_col": text_col, "text_b_col": text_b_col, "label_col": label_col})


def from_hf(dataset: Any, text_col: str = "text", label_col: str = "label",
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


def load_hub_dataset(spec: str, text_col: str = "text", label_col: str = "label",
                     text_b_col: str | None = None) -> Any:
    """``hf:NAME:SPLIT`` or ``hf:NAME:CONFIG:SPLIT`` -> TextDataset, through ``datasets.load_dataset``."""
    parts = spec[3:].split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise DataError(f"{spec!r}: write hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT (e.g. hf:SetFit/sst2:train)")
    try:
        import datasets
    except ImportError:
        raise DataError(f"{spec}: Hub datasets need the datasets package: pip install 'tailtune[datasets]'") from None
    name, config, split = parts[0], (parts[1] if len(parts) == 3 else None), parts[-1]
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:
        raise DataError(f"{spec}: could not load it from the Hub ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return from_hf(ds, text_col, label_col, text_b_col)


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
        raise ConfigError(f"theta={theta!r}: must be in (0, 1]")
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
    one for training; classes with a single example stay entirely in train. A dev example whose
    text (and second text) also occurs in the training part is left out of dev, with a warning:
    it would be scored on what the model trained on.
    """
    if not 0 < dev_fraction < 1:
        raise DataError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
    rng = random.Random(seed)
    train_idx, dev_idx = [], []
    for y, idx in sorted(_by_class(ds.labels).items()):
        idx = idx[:]
        rng.shuffle(idx)
        n_dev = min(len(idx) - 1, max(1 if len(idx) >= 3 else 0, round(len(idx) * dev_fraction)))
        dev_idx += idx[:n_dev]
        train_idx += idx[n_dev:]
    in_train = {_key(ds, i) for i in train_idx}
    leaked = [i for i in dev_idx if _key(ds, i) in in_train]
    if leaked:
        warnings.warn(f"{ds.source}: {len(leaked)} example(s) carved for dev also occur in the training part "
                      f"(duplicate rows); they were left out of dev", stacklevel=2)
        dev_idx = [i for i in dev_idx if _key(ds, i) not in in_train]
    return ds.subset(sorted(train_idx)), ds.subset(sorted(dev_idx))


def _key(ds: TextDataset, i: int) -> tuple[str, str | None]:
    return ds.texts[i].strip(), ds.texts_b[i].strip() if ds.texts_b is not None else None


def duplicates(ds: TextDataset) -> dict[str, int]:
    """How many texts occur more than once, in how many rows, and how many with different labels."""
    rows: dict[tuple, list[int]] = {}
    for i in range(len(ds)):
        rows.setdefault(_key(ds, i), []).append(i)
    repeated = [idx for idx in rows.values() if len(idx) > 1]
    return {"texts": len(repeated), "rows": sum(len(idx) for idx in repeated),
            "conflicting": sum(len({ds.labels[i] for i in idx}) > 1 for idx in repeated)}


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
    """Warn about what training data can hold but should not: duplicate rows (and the same text under
    different labels) and classes with a single example (they cannot be split or validated)."""
    dup = duplicates(ds)
    if dup["texts"]:
        warnings.warn(f"{ds.source}: {dup['texts']} text(s) occur more than once ({dup['rows']} rows)"
                      + (f", {dup['conflicting']} of them with different labels" if dup["conflicting"] else "")
                      + "; all rows stay in training, and a carved dev split leaves out copies of training texts", stacklevel=2)
    singles = sorted(y for y, n in Counter(ds.labels).items() if n == 1)
    if singles:
        warnings.warn(f"{ds.source}: {len(singles)} class(es) have a single training example "
                      f"({', '.join(singles[:8])}{' ...' if len(singles) > 8 else ''}); they stay in "
                      f"train and cannot appear in a carved dev split", stacklevel=2)
