"""Long-tail evaluation: accuracy, macro-F1, head/tail F1, per-class report, weight norms."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from .data import head_tail_split


def long_tail_report(y_true: Sequence[str], y_pred: Sequence[str], theta: float = 0.65) -> dict:
    """Metrics of the long-tail paper on one evaluated split.

    - ``macro_f1``: scikit-learn's macro F1 over the classes seen in gold or predictions;
    - ``head_f1`` / ``tail_f1``: per-class F1 averaged over the head / tail classes of the
      evaluated split (``data.head_tail_split`` with ``theta``);
    - ``per_class``: precision, recall, F1, support and group of every gold class.
    """
    y_true, y_pred = list(y_true), list(y_pred)
    head, tail = head_tail_split(y_true, theta)
    gold = head + tail
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=gold, zero_division=0)
    per_class = {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                     "support": int(s[i]), "group": "head" if c in head else "tail"}
                 for i, c in enumerate(gold)}
    mean = lambda cs: float(np.mean([per_class[c]["f1"] for c in cs])) if cs else float("nan")  # noqa: E731
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "head_f1": mean(head),
        "tail_f1": mean(tail),
        "n": len(y_true),
        "theta": theta,
        "n_head": len(head),
        "n_tail": len(tail),
        "per_class": per_class,
    }


def format_report(report: dict) -> str:
    lines = [f"accuracy {report['accuracy']:.4f}   macro-F1 {report['macro_f1']:.4f}   "
             f"head-F1 {report['head_f1']:.4f} ({report['n_head']} classes)   "
             f"tail-F1 {report['tail_f1']:.4f} ({report['n_tail']} classes)   θ={report['theta']}",
             f"{'class':<28}{'group':>6}{'prec':>8}{'rec':>8}{'f1':>8}{'support':>9}"]
    for c, m in report["per_class"].items():
        lines.append(f"{c[:27]:<28}{m['group']:>6}{m['precision']:>8.3f}{m['recall']:>8.3f}"
                     f"{m['f1']:>8.3f}{m['support']:>9d}")
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
