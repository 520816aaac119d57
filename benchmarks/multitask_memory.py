"""Memory and speed of N task modules on one backbone vs N separately loaded full models.

Each measurement runs in a fresh process and reports its resident memory (VmRSS) after
loading and after predicting. Task modules cycle through adapter, LoRA, prefix and soft
prompt (random parameters: memory and speed do not depend on training). Also times one
mixed-task pass over 512 texts against the same texts run task by task.

    python benchmarks/multitask_memory.py            # -> benchmarks/results/multitask_memory.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRESETS = ["adapter", "lora", "prefix", "soft-prompt"]
TEXTS = ["what is the price of oil in london", "the film was a delight", "who wrote the letter",
         "shares of the bank fell sharply after the report", "how far is the moon"]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_models(root: Path, n: int) -> None:
    import torch

    import tailtune as tt
    for i in range(n):
        for kind, preset in (("module", PRESETS[i % len(PRESETS)]), ("full", "cls")):
            path = root / kind / f"task{i}"
            if path.exists():
                continue
            torch.manual_seed(i)
            tt.save_classifier(tt.build_classifier(tt.config_from_preset(preset, max_length=64),
                                                   [f"c{j}" for j in range(4 + i)]), path, overwrite=True)


def measure(root: Path, mode: str, n: int) -> dict:
    """Runs in a child process: load N tasks, predict, report RSS."""
    import torch

    import tailtune as tt
    from tailtune.multitask import TaskSet
    torch.set_num_threads(2)
    base = rss_mb()
    t0 = time.perf_counter()
    tasks = [f"task{i}" for i in range(n)]
    texts = [TEXTS[i % len(TEXTS)] for i in range(512)]
    row_tasks = [tasks[i % n] for i in range(512)]
    if mode == "shared":
        task_set = TaskSet()
        for t in tasks:
            task_set.add(root / "module" / t, t)
    else:
        models = {t: tt.TailtuneClassifier.load(root / "full" / t, device="cpu") for t in tasks}
    load_s = time.perf_counter() - t0
    loaded = rss_mb()
    for t in tasks:  # warm-up: first calls allocate and initialise lazily
        (task_set.logits(TEXTS, [t] * len(TEXTS)) if mode == "shared" else models[t].decision_function(TEXTS))
    t0 = time.perf_counter()
    if mode == "shared":
        task_set.logits(texts, row_tasks, batch_size=64)
        mixed_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for t in tasks:
            task_set.logits([x for x, r in zip(texts, row_tasks) if r == t], [t] * row_tasks.count(t), batch_size=64)
    else:
        mixed_s = None
        for t in tasks:
            models[t].decision_function([x for x, r in zip(texts, row_tasks) if r == t])
    by_task_s = time.perf_counter() - t0
    return {"mode": mode, "tasks": n, "rss_before_mb": round(base), "rss_loaded_mb": round(loaded),
            "rss_after_predict_mb": round(rss_mb()), "load_s": round(load_s, 2),
            "mixed_batch_predict_s": mixed_s and round(mixed_s, 2), "task_by_task_predict_s": round(by_task_s, 2)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--out", default="benchmarks/results/multitask_memory.json")
    p.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(measure(Path(a.child[0]), a.child[1], int(a.child[2]))))
        return
    root = Path(tempfile.mkdtemp(prefix="tailtune-multitask-"))
    make_models(root, max(a.tasks))
    size = lambda d: round(sum(f.stat().st_size for f in d.rglob("*.safetensors")) / 1e6, 3)  # noqa: E731
    sizes = {"full (cls)": size(root / "full" / "task0"),
             **{p: size(root / "module" / f"task{i}") for i, p in enumerate(PRESETS) if i < max(a.tasks)}}
    rows = []
    for n in a.tasks:
        for mode in ("shared", "separate"):
            out = subprocess.run([sys.executable, __file__, "--child", str(root), mode, str(n)],
                                 capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    result = {"backbone": "default (all-MiniLM-L6-v2)", "module_presets": PRESETS,
              "saved_weights_mb": sizes, "runs": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
