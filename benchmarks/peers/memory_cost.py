"""What the memory stage's choice of λ costs on dev: six scorings through the whole classifier (as before) against one
read of dev's vectors and six passes of the head alone (as the stage does now), side by side in one process.

    python benchmarks/peers/memory_cost.py --only sst5-lt r52

For each set: a classifier of `auto`'s recipe after one optimisation step and without its stages (a pass costs the
same whatever the training did), a memory of every training text at λ = 0.5, then both ways of scoring dev at every
λ of ``MEMORY_WEIGHTS``, timed, and the largest difference between their scores (the two batch dev differently, so
they agree to float32 rounding, not bit for bit). Rows go to ``benchmarks/results/quality/memory_cost.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import load  # noqa: E402


def measure(data_dir: Path, name: str, seed: int) -> dict:
    import torch

    import tailtune as tt
    from tailtune.stages.memory import MEMORY_WEIGHTS
    train, dev, _, max_length, theta, _ = load(data_dir, name, seed)
    clf = tt.TailtuneClassifier("auto", max_length=max_length, theta=theta, stages=[],
                                train_config=tt.preset_train_config("auto", seed=seed, progress=False, steps=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(train, dev=dev if len(dev) else None)
    model = clf.model_
    index = {y: i for i, y in enumerate(model.labels)}
    model.head.set_memory(model.read_vectors(model.encode(train.texts, train.texts_b)),
                          torch.tensor([index[y] for y in train.labels]), 0.5)
    enc = model.encode(dev.texts, dev.texts_b)
    t0 = time.perf_counter()
    whole = []
    for lam in MEMORY_WEIGHTS:
        model.head.set_memory_weight(lam)
        whole.append(clf._scores(model, enc, calibrated=False))
    t1 = time.perf_counter()
    vectors, head = model.read_vectors(enc), []
    for lam in MEMORY_WEIGHTS:
        model.head.set_memory_weight(lam)
        head.append(model.head_scores(vectors))
    t2 = time.perf_counter()
    return {"dataset": name, "seed": seed, "n_dev": len(dev), "n_memory": len(train), "max_length": max_length,
            "torch_threads": torch.get_num_threads(), "whole_model_six_times_s": round(t1 - t0, 2),
            "read_once_head_six_times_s": round(t2 - t1, 2), "ratio": round((t1 - t0) / (t2 - t1), 2),
            "max_abs_score_difference": max(float((a - b).abs().max()) for a, b in zip(whole, head))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "quality"
                                        / "memory_cost.jsonl"))
    p.add_argument("--only", nargs="*", default=["sst5-lt", "r52"])
    p.add_argument("--seed", type=int, default=13)
    a = p.parse_args()
    for name in a.only:
        row = measure(Path(a.data_dir), name, a.seed)
        row["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
        print(json.dumps(row), flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
