#!/usr/bin/env bash
# The whole peer benchmark on a 2-core CPU (resumable: finished runs are skipped). About 6 hours idle.
# Order: the 16-shot sets, TREC-50, the K-shot subsets, R52 (whose `prompt` rows come from the long-tail grid).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA="${TAILTUNE_DATA:-../shared/data}"
Q="python benchmarks/peers/quality.py --data-dir $DATA"
$Q --only sst2 sst5 mr cr mpqa subj trec
$Q --only trec50
$Q --only trec50-k8 r52-k8 trec50-k32 r52-k32
$Q --only r52 --methods auto lr-balanced lr setfit hf-trainer
python benchmarks/peers/table.py
