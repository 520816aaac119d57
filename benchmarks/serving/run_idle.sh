#!/usr/bin/env bash
# The serving benchmarks that need an idle machine, one after another (hours on 2 cores: each early-exit set
# trains an early-exit `auto` on its full training set first; the throughput part took 11 minutes, its
# classifier's training included):
# prediction throughput against the Hugging Face pipeline on R52, then the early-exit curves.
set -euo pipefail
cd "$(dirname "$0")/../.."
D="${TAILTUNE_DATA:-../shared/data}"
MODEL="${R52_MODEL:-/tmp/tailtune-r52-short}"
if [ ! -f "$MODEL/tailtune.json" ]; then  # a classifier for the quality check of each precision (0.3 epoch:
    # early stopping ended the README's run at step 42, 353 s)
    tailtune train --train "$D/longtail/r52/train.tsv" --dev "$D/longtail/r52/dev.tsv" --max-length 128 \
        --epochs 0.3 --seed 13 --no-progress --output "$MODEL" --overwrite
fi
python benchmarks/serving/throughput.py "$MODEL" --data "$D/longtail/r52/test.tsv" --limit 1024 --batch 64 \
    --out benchmarks/results/serving/throughput.json
python benchmarks/serving/early_exit.py --data-dir "$D" --sets sst2 trec50
python benchmarks/serving/early_exit.py --data-dir "$D" --sets r52 --epochs 2
