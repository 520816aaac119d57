"""Issue 11's 16-shot table: the prompting methods (fewshot.jsonl) beside the default and the peers of the
same sets and seeds (benchmarks/results/quality/results.jsonl), and the multi-task prompted zero-shot
runs (multitask_zeroshot.jsonl) -> benchmarks/results/prompting/table.md.

    python benchmarks/prompting/table.py

Cells: test accuracy (macro-F1 on the long-tail K-shot subsets, as in the peer suite), mean ± population
std over the seeds the row ran (their count in brackets when it is not every seed of the set), then the
median training wall time per run in seconds.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from fewshot import KSHOT, METHODS
from quality import read_jsonl

NAMES = {"zero-shot": "zero-shot, manual prompt (no training)", "zero-shot-cal": "zero-shot + contextual calibration",
         "zero-shot-emb": "zero-shot, embedding method (label = the prompt without the text; no training)",
         "zero-shot-emb-cal": "zero-shot, embedding method + contextual calibration",
         "prompt": "prompt-based fine-tuning, manual prompt", "demo-random": "+ demonstrations, random",
         "demo-similar": "+ demonstrations, similar", "auto-template": "automatic template, then fine-tuning",
         "auto-labelwords": "automatic label words, then fine-tuning", "pet": "PET (3 patterns, distilled into `auto`)",
         "pet-mlm": "PET + auxiliary MLM loss (weight 1e-4)",
         "pet-uniform": "PET, patterns weighted alike (`--pattern-weights uniform`)",
         "ipet": "iPET (each generation: generation 0's steps)",
         "ipet-epochs": "iPET (each generation: generation 0's epochs)",
         "auto": "**tailtune default (`auto`)**, default MiniLM", "cls": "`cls`, default MiniLM",
         "setfit": "SetFit, default MiniLM", "lr-balanced": "embeddings + balanced LR, default MiniLM"}
PEERS = ["auto", "cls", "setfit", "lr-balanced"]


def table(fewshot: list[dict], quality: list[dict]) -> str:
    sets = list(dict.fromkeys(r["dataset"] for r in fewshot))
    backbones = list(dict.fromkeys(r["backbone"] for r in fewshot))
    lines = []
    for s in sets:
        seeds = sorted({r["seed"] for r in fewshot if r["dataset"] == s})
        key, what = ("macro_f1", "macro-F1") if s in KSHOT else ("accuracy", "accuracy")  # as the peer suite
        lines += [f"**{s}** (seeds {', '.join(map(str, seeds))}; {what}, then median seconds per run)", "",
                  f"| method | backbone | {what} | seconds |", "|---|---|---|---|"]

        def line(name: str, backbone: str, got: list[dict]) -> None:
            if not got:
                return
            acc = [100 * r[key] for r in got]
            n = "" if len(got) == len(seeds) else f" [{len(got)}]"
            std = f" ± {statistics.pstdev(acc):.1f}" if len(acc) > 1 else ""
            lines.append(f"| {name} | {backbone} | {statistics.mean(acc):.1f}{std}{n} | "
                         f"{statistics.median(r['train_seconds'] for r in got):.0f} |")
        for b in backbones:
            for m in METHODS:
                line(NAMES[m], f"`{b}`", [r for r in fewshot if (r["dataset"], r["method"], r["backbone"]) == (s, m, b)])
        for m in PEERS:
            line(NAMES[m], "MiniLM", [r for r in quality if r["dataset"] == s and r["method"] == m and r["seed"] in seeds])
        lines.append("")
    return "\n".join(lines)


def multitask_table(rows: list[dict]) -> str:
    """Leave-one-task-out multi-task prompted zero-shot (multitask_zeroshot.jsonl): test accuracy."""
    if not rows:
        return ""
    backbones = ", ".join(f"`{b}`" for b in dict.fromkeys(r["backbone"] for r in rows))
    lines = [f"**Multi-task prompted zero-shot** on {backbones} (leave one task out; test accuracy, no example of the "
             f"held-out task; {rows[0]['max_per_task']} examples per training task, {rows[0]['epochs']:g} epoch)",
             "", "| held-out task | trained on | untouched | untouched + calibration | multi-task | multi-task + "
             "calibration | training seconds |", "|---|---|---|---|---|---|---|"]
    for held in dict.fromkeys(r["held_out"] for r in rows):
        got = {(r["state"], r["calibrated"]): r for r in rows if r["held_out"] == held}
        cells = [f"{100 * got[k]['accuracy']:.1f}" if k in got else "–"
                 for k in (("untouched", False), ("untouched", True), ("multi-task", False), ("multi-task", True))]
        first = next(iter(got.values()))
        seconds = got.get(("multi-task", False), first)["train_seconds"]
        lines.append(f"| {held} | {', '.join(first['trained_on'])} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--results", default="benchmarks/results/prompting/fewshot.jsonl")
    p.add_argument("--quality", default="benchmarks/results/quality/results.jsonl")
    p.add_argument("--multitask", default="benchmarks/results/prompting/multitask_zeroshot.jsonl")
    p.add_argument("--out", default="benchmarks/results/prompting/table.md")
    a = p.parse_args()
    text = table(read_jsonl(Path(a.results)), read_jsonl(Path(a.quality))) + "\n" + multitask_table(
        read_jsonl(Path(a.multitask)))
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
