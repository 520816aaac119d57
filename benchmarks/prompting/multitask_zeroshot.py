"""Leave-one-task-out multi-task prompted zero-shot on the classic sentence sets (issue 11).

For each held-out task T: train one masked-LM backbone on the other tasks' classic training sets
cast as prompts (``tailtune.multiprompt``), then classify T's test set zero-shot with T's manual
template and label words (LM-BFF's), with and without contextual calibration, beside zero-shot on the
untouched backbone. MR, Subj, SST-2 and SST-5 share their source (Rotten Tomatoes snippets), so when T
is one of them none of the four is trained on (``../shared/data/README.md``). TREC has no classic
training set here and is left out.

    python benchmarks/prompting/multitask_zeroshot.py --data-dir ../shared/data --backbone bert-base-uncased
    python benchmarks/prompting/multitask_zeroshot.py --max-per-task 64 --limit-test 200   # a quick smoke run

One JSON line per (held-out task, backbone state, calibration) in
``benchmarks/results/prompting/multitask_zeroshot.jsonl``, with the training wall time. On the
embedded MiniLM (no pretrained MLM head: the head's transform starts random) the untouched
backbone's zero-shot numbers are near chance by construction.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

# task -> (classic folder, file of the training texts, held-out test: 16-shot folder, ext), manual prompt
TASKS = {
    "sst2": ("sst2", "train.tsv", ("SST-2", "tsv"), "{text} It was {mask} .", {"0": "terrible", "1": "great"}),
    "sst5": ("sst5", "train.tsv", ("sst-5", "csv"), "{text} It was {mask} .",
             {"0": "terrible", "1": "bad", "2": "okay", "3": "good", "4": "great"}),
    "mr": ("mr", "all.tsv", ("mr", "csv"), "{text} It was {mask} .", {"0": "terrible", "1": "great"}),
    "cr": ("cr", "all.tsv", ("cr", "csv"), "{text} It was {mask} .", {"0": "terrible", "1": "great"}),
    "mpqa": ("mpqa", "all.tsv", ("mpqa", "csv"), "{text} It was {mask} .", {"0": "terrible", "1": "great"}),
    "subj": ("subj", "all.tsv", ("subj", "csv"), "{text} This is {mask} .", {"0": "subjective", "1": "objective"}),
}
SHARED_SOURCE = {"sst2", "sst5", "mr", "subj"}
EXTRA_TEMPLATES = ["{text} All in all, it was {mask} .", "{text} In a word, {mask} ."]


def test_set(data_dir: Path, task: str, limit: int | None):
    import tailtune as tt
    folder, ext = TASKS[task][2]
    path = data_dir / "fewshot" / "lmbff-16shot" / folder / "16-13" / f"test.{ext}"
    kw = {"text_col": "sentence"} if ext == "tsv" else {"header": False, "columns": ["label", "text"]}
    ds = tt.read_dataset(path, allow_empty=True, **kw)
    return ds.subset(list(range(min(len(ds), limit)))) if limit else ds


def main() -> None:
    import tailtune as tt
    from tailtune.loop import TrainConfig
    from tailtune.multiprompt import PromptTask, train_multitask_prompt
    from tailtune.zeroshot import ZeroShotClassifier
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--backbone", default=None, help="an MLM backbone (default: the embedded MiniLM)")
    p.add_argument("--only", nargs="*", default=list(TASKS), help="held-out tasks")
    p.add_argument("--max-per-task", type=int, default=2000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--limit-test", type=int, default=None, help="score only the first N test texts")
    p.add_argument("--out", default="benchmarks/results/prompting/multitask_zeroshot.jsonl")
    a = p.parse_args()
    data_dir = Path(a.data_dir)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for held in a.only:
        excluded = SHARED_SOURCE if held in SHARED_SOURCE else {held}
        sources = [t for t in TASKS if t not in excluded]
        tasks = []
        for t in sources:
            folder, file, _, template, words = TASKS[t]
            ds = tt.read_dataset(data_dir / "classic" / folder / file)
            tasks.append(PromptTask(t, ds, [template, *EXTRA_TEMPLATES], words))
        test = test_set(data_dir, held, a.limit_test)
        _, _, _, template, words = TASKS[held]
        labels = sorted(words)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            summary = train_multitask_prompt(tasks, a.backbone, Path(tmp) / "mt", TrainConfig(
                epochs=a.epochs, batch_size=16, lr=2e-5, progress=False), max_length=a.max_length,
                max_per_task=a.max_per_task, log=None)
            seconds = time.perf_counter() - t0
            for state, backbone in (("untouched", a.backbone), ("multi-task", str(Path(tmp) / "mt"))):
                for calibrate in (False, True):
                    try:
                        zs = ZeroShotClassifier(labels, backbone, method="prompt", template=template,
                                                verbalizer=words, calibrate=calibrate, max_length=a.max_length)
                    except tt.ConfigError as err:  # the untouched MiniLM has no MLM head to prompt
                        print(f"{held} {state}: skipped ({err})", flush=True)
                        break
                    pred = zs.predict(list(test.texts))
                    acc = sum(p == y for p, y in zip(pred, test.labels)) / len(test)
                    row = {"held_out": held, "trained_on": sources, "backbone": a.backbone or "default",
                           "state": state, "calibrated": calibrate, "accuracy": acc, "n_test": len(test),
                           "train_seconds": seconds if state == "multi-task" else 0.0,
                           "max_per_task": a.max_per_task, "epochs": a.epochs,
                           "train_accuracy": {t["name"]: t["train_accuracy"] for t in summary["tasks"]}}
                    print(f"{held} {state:<10} calibrated={calibrate!s:<5} accuracy {acc:.4f}", flush=True)
                    with out.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
