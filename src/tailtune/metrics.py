"""Long-tail evaluation: accuracy, macro-F1, head/tail F1, per-class report, weight norms."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from .data import head_tail_split
from .errors import ConfigError


GROUP_RULES = ("auto", "split", "train")
SHOT_BANDS = (("many", 101, None), ("medium", 20, 100), ("few", 0, 19))  # training examples per class


def near_balanced(labels: Sequence[str], ratio: float = 1.5) -> bool:
    """Is the largest class at most ``ratio`` times the smallest?"""
    counts = Counter(labels).values()
    return max(counts) <= ratio * min(counts)


def long_tail_report(y_true: Sequence[str], y_pred: Sequence[str], theta: float = 0.65,
                     train_counts: Mapping[str, int] | None = None, groups: str = "auto") -> dict:
    """Metrics of the long-tail paper on one evaluated split, and the long-tail literature's shot bands.

    - ``macro_f1``: scikit-learn's macro F1 over the classes seen in gold or predictions (the long-tail paper's
      figure): a class the split does not contain but the model predicts enters the average with F1 0;
    - ``macro_f1_split_classes``: macro F1 over the classes the split contains only, and ``absent_predicted``: how
      often each class the split lacks was predicted. They differ from ``macro_f1`` only where a small test set
      lacks some training classes (TREC-50's test set has 42 of its 50), so that predicting a rare class at all
      costs a whole class's F1; a classifier tuned for a class-balanced target predicts rare classes more often;
    - ``head_f1`` / ``tail_f1``: per-class F1 averaged over the head / tail classes. The paper's rule
      (``data.head_tail_split`` with ``theta``) runs on the class counts of the evaluated split
      (``groups="split"``) or of the training data (``"train"``); ``"auto"`` uses the training counts
      when they are given and the evaluated split is (near) balanced (largest class at most 1.5x the
      smallest), where the split's own counts say nothing about head and tail. ``group_rule`` says
      which rule ran; ``groups_by_name`` is True when every class of that basis has the same count (balanced
      training data), where the rule can only order the classes by name and head/tail F1 mean nothing;
    - ``many_f1`` / ``medium_f1`` / ``few_f1``: per-class F1 averaged over classes with more than 100,
      20 to 100, and fewer than 20 training examples (with ``train_counts``; NaN for an empty band);
    - ``per_class``: precision, recall, F1, support, group (and training count and band) of every gold class;
    - ``confusions``: [gold, predicted, count] of every error pair, most frequent first.
    """
    if groups not in GROUP_RULES:
        raise ConfigError(f"groups={groups!r} is not one of {', '.join(GROUP_RULES)}")
    y_true, y_pred = list(y_true), list(y_pred)
    rule = groups
    if rule == "auto":
        rule = "train" if train_counts and near_balanced(y_true) else "split"
    if rule == "train" and not train_counts:
        raise ConfigError("groups='train' needs the training label counts")
    basis = [y for y, n in train_counts.items() for _ in range(n)] if rule == "train" else y_true
    head, tail = head_tail_split(basis, theta)
    gold = sorted(set(y_true), key=lambda c: (-Counter(y_true)[c], c))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=gold, zero_division=0)
    per_class = {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i]),
                     "group": "head" if c in head else "tail"} for i, c in enumerate(gold)}
    bands: dict[str, list[str]] = {name: [] for name, _, _ in SHOT_BANDS}
    for c in gold:
        if train_counts:
            n = int(train_counts.get(c, 0))
            band = next(name for name, low, high in SHOT_BANDS if n >= low and (high is None or n <= high))
            per_class[c].update(train_count=n, band=band)
            bands[band].append(c)
    mean = lambda cs: float(np.mean([per_class[c]["f1"] for c in cs])) if cs else float("nan")  # noqa: E731
    heads, tails = [c for c in gold if c in head], [c for c in gold if c not in head]
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "macro_f1_split_classes": float(np.mean(f)) if len(f) else float("nan"),
        "absent_predicted": dict(Counter(q for q in y_pred if q not in per_class).most_common()),
        "head_f1": mean(heads),
        "tail_f1": mean(tails),
        "many_f1": mean(bands["many"]), "medium_f1": mean(bands["medium"]), "few_f1": mean(bands["few"]),
        "n": len(y_true),
        "theta": theta,
        "group_rule": rule,
        "groups_by_name": len(set(Counter(basis).values())) == 1,
        "n_head": len(heads),
        "n_tail": len(tails),
        "n_many": len(bands["many"]), "n_medium": len(bands["medium"]), "n_few": len(bands["few"]),
        "per_class": per_class,
        "confusions": [[g, q, n] for (g, q), n in Counter(
            (g, q) for g, q in zip(y_true, y_pred) if g != q).most_common()],
    }


def _classes(n: int) -> str:
    return f"{n} class{'' if n == 1 else 'es'}"


def format_report(report: dict) -> str:
    rule = {"split": "class counts of this split", "train": "training class counts"}[report.get("group_rule", "split")]
    lines = [f"accuracy {report['accuracy']:.4f}   macro-F1 {report['macro_f1']:.4f}   "
             f"head-F1 {report['head_f1']:.4f} ({_classes(report['n_head'])})   "
             f"tail-F1 {report['tail_f1']:.4f} ({_classes(report['n_tail'])})   θ={report['theta']} on the {rule}"
             + (" (all equal: head and tail are split by class name, not size)" if report.get("groups_by_name") else "")]
    absent = report.get("absent_predicted") or {}
    if absent:
        n, times, own = len(absent), sum(absent.values()), len(report["per_class"])
        lines.append(f"macro-F1 counts {_classes(n)} this split does not contain but the model "
                     f"predicted ({times} time{'s' if times > 1 else ''}; F1 0 each: " + ", ".join(list(absent)[:5])
                     + (", ..." if n > 5 else "") + f"); over the split's own {_classes(own)} "
                     f"it is {report['macro_f1_split_classes']:.4f}")
    if report.get("n_many", 0) + report.get("n_medium", 0) + report.get("n_few", 0):
        lines.append("   ".join(f"{band}-shot F1 {report[f'{band}_f1']:.4f} ({_classes(report[f'n_{band}'])})"
                               for band, _, _ in SHOT_BANDS) + "   (>100 / 20-100 / <20 training examples)")
    lines.append(f"{'class':<28}{'group':>6}{'train':>7}{'prec':>8}{'rec':>8}{'f1':>8}{'support':>9}")
    for c, m in report["per_class"].items():
        lines.append(f"{c[:27]:<28}{m['group']:>6}{m.get('train_count', ''):>7}{m['precision']:>8.3f}"
                     f"{m['recall']:>8.3f}{m['f1']:>8.3f}{m['support']:>9d}")
    return "\n".join(lines)


def weight_norms(labels: list[str], norms: list[float], train_labels: Sequence[str]) -> list[dict]:
    """Per-class classifier weight norm against training frequency, largest class first."""
    counts = Counter(train_labels)
    rows = [{"label": y, "train_count": counts.get(y, 0), "weight_norm": float(n)}
            for y, n in zip(labels, norms)]
    return sorted(rows, key=lambda r: (-r["train_count"], r["label"]))


def export_weight_norms(rows: list[dict], out_dir: str | Path, title: str = "") -> dict:
    """Write ``weight_norms.csv`` / ``.json`` and a ``weight_norms.png`` bar plot (the paper's picture)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "weight_norms.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["label", "train_count", "weight_norm"])
        w.writeheader()
        w.writerows(rows)
    (out_dir / "weight_norms.json").write_text(json.dumps(rows, indent=2))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax1 = plt.subplots(figsize=(max(6, len(rows) * 0.18), 3.5))
    x = np.arange(len(rows))
    ax1.bar(x, [r["train_count"] for r in rows], color="#cccccc", label="train examples")
    ax1.set_yscale("log")
    ax1.set_ylabel("train examples (log)")
    ax1.set_xlabel("classes, most frequent first")
    ax2 = ax1.twinx()
    ax2.plot(x, [r["weight_norm"] for r in rows], "o-", color="#c0392b", ms=3, label="weight norm")
    ax2.set_ylabel("classifier weight norm")
    ax1.set_title(title or "class weight norm vs. frequency")
    fig.tight_layout()
    fig.savefig(out_dir / "weight_norms.png", dpi=120)
    plt.close(fig)
    return {"csv": str(out_dir / "weight_norms.csv"), "png": str(out_dir / "weight_norms.png")}
