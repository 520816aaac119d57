"""The early-exit loop's own cost: full depth against early exit with no row leaving, on a 6-layer BERT of
width 32 whose arithmetic is negligible, so the time is per-operation overhead (what a launch-bound GPU
sees with a small encoder). One torch thread, best of 5, 512 texts at batch 64 and 128 at batch 1.

    python benchmarks/serving/exit_overhead.py --out benchmarks/results/serving/exit_overhead.json
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))


def main() -> None:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    import tailtune as tt
    import tiny
    from throughput import best_of  # this folder's timing helper
    from tailtune.early_exit import predict_early_exit
    from tailtune.training import predict_logits
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/serving/exit_overhead.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(0)
    texts = [" ".join(rng.choice(tiny.WORDS) for _ in range(rng.randint(5, 30))) for _ in range(512)]
    labels = [f"c{i % 5}" for i in range(512)]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "bert6"
        tiny.make_bert(path)
        config = BertConfig.from_pretrained(path)
        config.num_hidden_layers = 6
        torch.manual_seed(0)
        BertForMaskedLM(config).save_pretrained(path)
        clf = tt.TailtuneClassifier("auto", str(path), head="early-exit", exit_head="cosine", stages=(),
                                    train_config=tt.TrainConfig(epochs=0.1, progress=False, device="cpu"))
        clf.fit(texts[:64], labels[:64])
    model, enc = clf.model_, clf.model_.encode(texts)

    rows = {}
    for batch, n in ((64, 512), (1, 128)):
        full = best_of(lambda: predict_logits(model, enc[:n], batch), 5)
        loop = best_of(lambda: predict_early_exit(model, enc[:n], "entropy", 0.0, batch_size=batch), 5)
        rows[str(batch)] = {"texts": n, "full_depth_seconds": full, "exit_loop_seconds": loop, "ratio": loop / full}
        print(f"batch {batch}: full depth {1000 * full:.0f} ms, exit loop (no row leaves) {1000 * loop:.0f} ms, "
              f"{loop / full:.2f}x", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"setup": {"layers": 6, "hidden": 32, "threads": 1}, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
