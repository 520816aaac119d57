"""One tailtune configuration on R52 or TREC-50 (seed 13 unless given): how the default was chosen.

    python benchmarks/peers/ablation.py trec50 NAME '{"readout": "mean", "head": "cosine"}' \
        '{"epochs": 5, "batch_size": 32, "lr": 5e-5, "head_lr": 1e-3}'
    (second JSON: TrainConfig fields, plus "max_length" (default 64) and "seed")

Prints one RESULT line; the ablation table of the README lists the commands and their results
(benchmarks/results/quality/ablation.md).
"""
import json
import os
import sys
import time
import warnings
warnings.filterwarnings("ignore")
import tailtune as tt
ds, name = sys.argv[1], sys.argv[2]
opts = json.loads(sys.argv[3]); train_opts = json.loads(sys.argv[4])
seed = train_opts.pop("seed", 13); maxlen = train_opts.pop("max_length", 64)
preset = opts.pop("preset", "cls")
base = os.environ.get("TAILTUNE_DATA", "../shared/data") + "/longtail/" + ds
train = tt.read_dataset(base + "/train.tsv"); test = tt.read_dataset(base + "/test.tsv")
dev = tt.read_dataset(base + "/dev.tsv") if os.path.exists(base + "/dev.tsv") else None
cfg = tt.config_from_preset(preset, max_length=maxlen, **opts)
clf = tt.TailtuneClassifier(preset, config=cfg, train_config=tt.TrainConfig(seed=seed, progress=False, **train_opts),
                            theta=0.55 if ds == "r52" else 0.65)
t0 = time.time()
clf.fit(train, dev=dev, log=lambda m: print("   ", m, flush=True) if m.startswith("step") else None)
r = clf.evaluate(test)
print(f"RESULT {ds} {name}: acc {r['accuracy']:.4f} macro {r['macro_f1']:.4f} tail {r['tail_f1']:.4f} train {clf.train_result_.seconds:.0f}s best_step {clf.train_result_.best_step}/{clf.train_result_.steps}", flush=True)
