"""The README's Y-Tuning vs CLS-tuning table on R52 and TREC-50 (issue 4).

    tailtune run benchmarks/ytuning.yaml --data-dir ../shared/data
    python benchmarks/ytuning_table.py      # -> benchmarks/results/ytuning/table.md
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parent / "results" / "ytuning"
PRESETS = ["cls", "y-tuning", "y-tuning-ce", "y-tuning-uncached"]


def cell(values) -> str:
    v = 100 * np.array(values)
    return f"{v.mean():.1f}" + (f" ± {v.std():.1f}" if len(v) > 1 else "")


def main() -> None:
    rows = [json.loads(x) for x in (ROOT / "results.jsonl").read_text().splitlines() if x.strip()]
    base = min(r["parameters"]["backbone"] for r in rows)
    out = ["| dataset | method | seeds | acc | macro-F1 | head-F1 | tail-F1 | % trainable | epochs | "
           "train s | s / epoch | train s vs cls |", "|" + "---|" * 12]
    for ds in ("r52", "trec50"):
        cls_s = np.mean([r["train_seconds"] for r in rows if r["dataset"] == ds and r["preset"] == "cls"] or [np.nan])
        for p in PRESETS:
            got = [r for r in rows if r["dataset"] == ds and r["preset"] == p]
            if not got:
                continue
            secs = np.mean([r["train_seconds"] for r in got])
            per_epoch = np.mean([r["seconds_per_epoch"] for r in got])
            out.append(f"| {ds} | `{p}` | {len(got)} | {cell([r['accuracy'] for r in got])} | "
                       f"{cell([r['macro_f1'] for r in got])} | {cell([r['head_f1'] for r in got])} | "
                       f"{cell([r['tail_f1'] for r in got])} | {100 * got[0]['parameters']['trainable'] / base:.3g} | "
                       f"{got[0]['epochs_run']:g} | {secs:.0f} | {per_epoch:.1f} | {secs / cls_s:.2f}× |")
    (ROOT / "table.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
