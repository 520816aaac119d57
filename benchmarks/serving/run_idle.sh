#!/usr/bin/env bash
# The serving benchmarks that need an idle machine, one after another (about 25 minutes on 2 cores):
# prediction throughput against the Hugging Face pipeline on R52, then the early-exit curves.
set -euo pipefail
cd "$(dirname "$0")/../.."
D="${TAILTUNE_DATA:-../shared/data}"
MODEL="${R52_MODEL:-/tmp/tailtune-r52-auto-len128}"
if [ ! -f "$MODEL/tailtune.json" ]; then  # a classifier for the quality check of each precision (1 epoch)
    tailtune train --train "$D/longtail/r52/train.tsv" --dev "$D/longtail/r52/dev.tsv" --max-length 128 \
        --epochs 1 --seed 13 --no-progress --output "$MODEL" --overwrite
fi
python benchmarks/serving/throughput.py "$MODEL" --data "$D/longtail/r52/test.tsv" --limit 1024 --batch 64 \
    --out benchmarks/results/serving/throughput.json
python benchmarks/serving/early_exit.py --data-dir "$D" --sets sst2 trec50
python benchmarks/serving/early_exit.py --data-dir "$D" --sets r52 --epochs 2
