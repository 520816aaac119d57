"""Hugging Face Hub conventions: a model card in every saved classifier, loading by Hub repo id,
``push_to_hub`` through ``huggingface_hub``, and datasets named on the Hub (``hf:NAME[:CONFIG]:SPLIT``)."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

from .errors import ArtefactError, DataError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_UPLOADED = ("README.md", "tailtune.json", "model.safetensors", "module.safetensors", "backbone/*",
             "analysis/*.json", "analysis/*.csv", "analysis/*.png", "test_report.json")
_SUMMARY = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("head_f1", "head-F1"), ("tail_f1", "tail-F1"),
            ("many_f1", "many-shot F1 (>100 train)"), ("medium_f1", "medium-shot F1 (20-100)"),
            ("few_f1", "few-shot F1 (<20)"))
EMBEDDED = "sentence-transformers/all-MiniLM-L6-v2"


def _pct(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


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
        lines += ["", f"Best dev macro-F1 {_pct(result['best_dev_macro_f1'])} at step {result.get('best_step')} of "
                      f"{result.get('steps')} ({result.get('seconds', 0):.0f} s of training)."]
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


def resolve_classifier(ref: str | Path) -> Path:
    """A saved classifier's directory: a local path, or a Hub repo id (``owner/name``) downloaded once."""
    path = Path(ref)
    if path.exists() or not _REPO_ID.match(str(ref)):
        return path
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(str(ref), allow_patterns=list(_UPLOADED)))
    except Exception as e:  # offline, unknown repo, no access
        raise ArtefactError(f"{ref}: no such local directory, and the Hub repo could not be fetched "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check the path, "
                            f"the repo id, your network or HF_TOKEN") from None


def upload_plan(directory: str | Path, repo_id: str) -> dict:
    """What ``push_to_hub`` would upload: the safetensors + JSON artefact, its backbone files and card."""
    from .artefacts import read_classifier
    directory = Path(directory)
    read_classifier(directory)  # a complete classifier, or a clear error
    if not _REPO_ID.match(repo_id):
        raise ArtefactError(f"{repo_id!r} is not a Hub repo id; write owner/name")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and any(
        p.relative_to(directory).match(pattern) for pattern in _UPLOADED))
    return {"repo_id": repo_id, "files": [str(p.relative_to(directory)) for p in files],
            "bytes": sum(p.stat().st_size for p in files)}


def push_to_hub(directory: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                dry_run: bool = False) -> dict:
    """Upload a saved classifier to a Hub model repo (created if missing); ``dry_run`` only plans."""
    plan = upload_plan(directory, repo_id)
    if "README.md" not in plan["files"]:
        from .artefacts import atomic_write_text, read_classifier
        atomic_write_text(Path(directory) / "README.md", model_card(read_classifier(directory)))
        plan = upload_plan(directory, repo_id)
    if dry_run:
        return plan
    from huggingface_hub import HfApi
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(directory), allow_patterns=list(_UPLOADED),
                               commit_message="Upload a tailtune classifier")
    return {**plan, "url": str(getattr(commit, "commit_url", commit))}


def load_hub_dataset(spec: str, text_col: str = "text", label_col: str = "label",
                     text_b_col: str | None = None) -> Any:
    """``hf:NAME:SPLIT`` or ``hf:NAME:CONFIG:SPLIT`` -> TextDataset, through ``datasets.load_dataset``."""
    from .data import from_hf
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
