"""The README's parameter-efficient table from the PEFT and long-tail benchmark results.

    python benchmarks/peft_table.py      # -> benchmarks/results/peft/table.md

cls and prompt on R52 / TREC-50 fall back to benchmarks/results/longtail (same settings) if absent.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parent / "results"
ORDER = ["cls", "prompt", "bitfit", "adapter", "lora", "prefix", "soft-prompt"]
FEWSHOT = [("sst2", "SST-2"), ("sst5", "SST-5"), ("trec", "TREC")]


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def cell(values: list[float], std: bool = True) -> str:
    if not values:
        return "–"
    v = 100 * np.array(values)
    return f"{v.mean():.1f}" + (f" ({v.std():.1f})" if std and len(v) > 1 else "")


def main() -> None:
    peft = rows(ROOT / "peft" / "results.jsonl")
    longtail = [r for r in rows(ROOT / "longtail" / "results.jsonl")
                if r["preset"] in ("cls", "prompt") and r["seed"] == 13]
    runs = peft + [r for r in longtail if not any(
        (p["dataset"], p["preset"], p["seed"]) == (r["dataset"], r["preset"], r["seed"]) for p in peft)]
    # the base backbone (LoRA rows count their matrices into the encoder)
    base = min(r["parameters"]["backbone"] for r in runs if "parameters" in r)
    pick = lambda d, p: [r for r in runs if r["dataset"] == d and r["preset"] == p]  # noqa: E731
    head = ("| method | % trainable (head excl.) | R52 macro-F1 | R52 tail-F1 | TREC-50 macro-F1 | TREC-50 tail-F1 | "
            + " | ".join(f"{n} acc" for _, n in FEWSHOT) + " | R52 s/epoch | R52 peak MB |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for p in ORDER:
        counted = [r for r in runs if r["preset"] == p and "parameters" in r]
        if not counted:
            continue
        pct = 100 * counted[0]["parameters"]["trainable_without_head"] / base
        r52, trec50 = pick("r52", p), pick("trec50", p)
        cells = [f"{pct:.3g}", cell([r["macro_f1"] for r in r52]), cell([r["tail_f1"] for r in r52]),
                 cell([r["macro_f1"] for r in trec50]), cell([r["tail_f1"] for r in trec50])]
        for d, _ in FEWSHOT:
            got, most = pick(d, p), max((len(pick(d, q)) for q in ORDER), default=0)
            cells.append(cell([r["accuracy"] for r in got]) + (f" [{len(got)} seeds]" if 0 < len(got) < most else ""))
        cells += [f"{r52[0]['seconds_per_epoch']:.0f}" if r52 else "–",
                  f"{r52[0]['peak_memory_mb']:.0f}" if r52 and r52[0].get("peak_memory_mb") else "–"]
        out.append(f"| `{p}` | " + " | ".join(cells) + " |")
    seeds = {d: sorted({r["seed"] for r in runs if r["dataset"] == d}) for d, _ in FEWSHOT}
    out.append("")
    out.append(f"Mean (std) over seeds, in %. Few-shot seeds: {seeds}. R52 / TREC-50: seed 13.")
    (ROOT / "peft").mkdir(parents=True, exist_ok=True)
    (ROOT / "peft" / "table.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
