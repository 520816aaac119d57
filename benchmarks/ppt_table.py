"""The README's few-shot table (issue 4) from benchmarks/results/ppt/results.jsonl.

    python benchmarks/ppt_table.py      # -> benchmarks/results/ppt/table.md
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parent / "results" / "ppt"
METHODS = [("cls", "CLS fine-tuning"), ("prompt", "prompt fine-tuning"), ("vanilla-pt", "vanilla soft PT"),
           ("hybrid-pt", "hybrid PT"), ("ppt", "PPT"), ("hybrid-ppt", "hybrid PPT"), ("unified-ppt", "unified PPT"),
           ("y-tuning", "Y-Tuning")]
TASKS = [("sst2", "SST-2"), ("sst5", "SST-5"), ("mr", "MR"), ("cr", "CR"), ("mpqa", "MPQA"), ("subj", "Subj"),
         ("trec", "TREC")]
BACKBONES = [("", "MiniLM"), ("@lm", "MiniLM + LM adaptation")]


def main() -> None:
    rows = [json.loads(x) for x in (ROOT / "results.jsonl").read_text().splitlines() if x.strip()]
    base = min(r["parameters"]["backbone"] for r in rows)
    head = ("| backbone | method | % trainable (w/o head) | " + " | ".join(n for _, n in TASKS)
            + " | avg | train s / run |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for suffix, bb in BACKBONES:
        for key, name in METHODS:
            got = [r for r in rows if r["preset"] == key + suffix]
            if not got:
                continue
            cells, means = [], []
            for task, _ in TASKS:
                acc = 100 * np.array([r["accuracy"] for r in got if r["dataset"] == task])
                means.append(acc.mean())
                cells.append(f"{acc.mean():.1f} ({acc.std():.1f})" + ("" if len(acc) == 5 else f" [{len(acc)}]"))
            p = got[0]["parameters"]
            pct = f"{100 * p['trainable'] / base:.3g} ({100 * p['trainable_without_head'] / base:.3g})"
            secs = np.mean([r["train_seconds"] for r in got])
            out.append(f"| {bb} | {name} | {pct} | " + " | ".join(cells) + f" | {np.mean(means):.1f} | {secs:.1f} |")
    seeds = sorted({r["seed"] for r in rows})
    out += ["", f"Accuracy, mean (std) over seeds {seeds}, in %, on each task's full test set. "
            f"% trainable: all trained parameters over the backbone's ({base:,}), then without the head. "
            "Training time: mean wall seconds of one run (20 epochs + a dev evaluation per epoch), "
            "16 runs sharing one H200."]
    ROOT.mkdir(parents=True, exist_ok=True)
    (ROOT / "table.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
