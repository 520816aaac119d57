#!/usr/bin/env bash
# Reproduce the long-tail benchmark (README table) on the embedded default backbone.
# Resumable: finished runs in benchmarks/results/longtail/results.jsonl are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${TAILTUNE_DATA:-../shared/data}"
[ -f benchmarks/results/speed_vs_hf.json ] || python benchmarks/speed_vs_hf.py --data-dir "$DATA"
tailtune run benchmarks/longtail.yaml --data-dir "$DATA"
