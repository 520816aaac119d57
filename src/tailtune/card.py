"""The model card (README.md) every saved classifier carries, in the Hugging Face Hub's format."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

_SUMMARY = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("head_f1", "head-F1"), ("tail_f1", "tail-F1"),
            ("many_f1", "many-shot F1 (>100 train)"), ("medium_f1", "medium-shot F1 (20-100)"),
            ("few_f1", "few-shot F1 (<20)"))
EMBEDDED = "sentence-transformers/all-MiniLM-L6-v2"


def _pct(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def kept_text(best_dev_macro_f1: str, best_step: int, steps: int, select_metric: str | None) -> str:
    """What a run kept: "best dev macro-F1 X at step B of S", or, where another dev score picked the step
    (TrainConfig.select_metric), that step's dev macro-F1 and what picked it."""
    where = f"{best_dev_macro_f1} at step {best_step} of {steps}"
    by = select_metric or "macro_f1"
    return f"best dev macro-F1 {where}" if by == "macro_f1" else \
        f"dev macro-F1 {where}, " + ("the last evaluation" if by == "last" else f"the best dev {by}")


def model_card(meta: Mapping[str, Any]) -> str:
    """README.md of a saved classifier: what it is, what it was trained on, how well it did, how to use it."""
    config, labels = meta["config"], meta["labels"]
    name = meta["backbone"]["name"]
    base = EMBEDDED if "minilm" in name.lower() and Path(name).exists() else name
    stats = meta.get("class_stats") or {}
    counts, tail = stats.get("counts") or {}, set(stats.get("tail") or ())
    metrics, result = meta.get("test_metrics") or {}, meta.get("train_result") or {}
    tc = meta.get("train_config") or {}
    few = bool(counts) and len(counts) and stats.get("n_examples", 0) / len(counts) < 64
    lines = ["---", "library_name: tailtune", "pipeline_tag: text-classification", f"base_model: {base}",
             "tags:", "- text-classification", "- tailtune", f"- {'few-shot' if few else 'long-tail'}", "---", "",
             f"# A tailtune text classifier ({len(labels)} classes)", "",
             f"Preset `{meta.get('preset') or 'custom'}` on `{base}`, saved by tailtune {meta.get('tailtune_version')} "
             f"as a {'full model' if meta.get('artefact') == 'full' else 'task module for the base backbone'}.", "",
             "| axis | entry |", "|---|---|"]
    lines += [f"| {axis} | `{config[axis]}` |" for axis in ("input_format", "readout", "head", "trains", "objective",
                                                            "calibration") if axis in config]
    if config.get("stages"):
        lines.append(f"| stages | `{', '.join(config['stages'])}` |")
    lines += ["", "## Evaluation", ""]
    if metrics:
        lines += [f"On the test split given to `tailtune train` ({metrics.get('n', '?')} texts; head/tail by the "
                  f"{metrics.get('group_rule', '?')} rule, θ={metrics.get('theta', '?')}):", "",
                  "| metric | value |", "|---|---|"] + [f"| {label} | {_pct(metrics.get(k))} |" for k, label in _SUMMARY]
    else:
        lines.append("No test split was evaluated when this classifier was saved.")
    if result.get("best_dev_macro_f1") is not None:
        kept = kept_text(_pct(result["best_dev_macro_f1"]), result.get("best_step"), result.get("steps"),
                         (meta.get("train_config") or {}).get("select_metric"))
        lines += ["", f"{kept[0].upper()}{kept[1:]} ({result.get('seconds', 0):.0f} s of training)."]
    lines += ["", "## Training data", ""]
    if counts:
        lines += [f"{stats.get('n_examples')} texts, {len(counts)} classes, imbalance ratio "
                  f"{stats.get('imbalance_ratio', 0):.1f}; classes by training count (tail classes marked):", "",
                  ", ".join(f"`{c}` {n}{' (tail)' if c in tail else ''}" for c, n in counts.items())]
    else:
        lines.append(f"Labels: {', '.join(f'`{y}`' for y in labels)}.")
    if tc:
        lines += ["", "Training settings: " + ", ".join(f"{k} {tc[k]}" for k in ("epochs", "batch_size", "lr", "head_lr",
                                                                                  "seed") if tc.get(k) is not None)
                  + "."]
    lines += ["", "## How to use", "", "```python", "import tailtune as tt",
              'clf = tt.TailtuneClassifier.load("PATH_OR_REPO_ID")', 'clf.predict(["a text to classify"])', "```", "",
              "```bash", "tailtune predict PATH_OR_REPO_ID \"a text to classify\"", "```", "",
              "## Intended use and limits", "",
              "- It knows only the labels above; every text gets one of them, whatever it is about.",
              "- Classes with few training examples (the tail) are the least reliable: check their per-class scores "
              "(`tailtune evaluate`) before relying on them.",
              f"- Texts are cut to {config.get('max_length', 128)} tokens; it saw only the training data's language and "
              "domain.",
              "- Not for decisions about people without human review."]
    return "\n".join(lines) + "\n"
