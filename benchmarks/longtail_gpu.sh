#!/usr/bin/env bash
# Issue 10's GPU runs, in one go on the lent machine (README, "The long-tail paper's full protocol on a GPU"):
#   1. the default MiniLM rebuilt from the carried fp16 copy (benchmarks/device_prep.py);
#   2. the peer suite on R52 at the paper's max length 256, 5 seeds: tailtune's default (`auto`, bf16)
#      and the embeddings + logistic-regression peers in one process, the Hugging Face Trainer and
#      SetFit (carried as wheels: CARRY/whl) in another;
#   3. `tailtune run benchmarks/longtail_full.yaml` (the paper's grid, full protocol) in SHARDS processes.
# Usage: bash benchmarks/longtail_gpu.sh CARRY_DIR OUT_DIR [SHARDS] [SCALE] [DEADLINE_S]
# Everything stops DEADLINE_S seconds after the start (default 480); finished runs are kept.
# SCALE=smoke: R52 K=8 for the peer suite, 1 epoch of cls and prompt on R52 with dev as test, one seed,
# max length 32 (a CPU check of this script, a few minutes).
set -uo pipefail
CARRY=$1 OUT=$2 SHARDS=${3:-6} SCALE=${4:-full} DEADLINE=${5:-480}
export OMP_NUM_THREADS=2
L=runs/logs NEED="datasets, setfit"
. benchmarks/gpu_common.sh
Q="python3 benchmarks/peers/quality.py --data-dir $D --only r52 --max-length 256"
SEEDS="13 21 42 87 100" GRID=benchmarks/longtail_full.yaml
if [ "$SCALE" = smoke ]; then
  SEEDS=13 GRID=runs/longtail_smoke.yaml Q="$Q --only r52-k8 --max-length 32"
  python3 -c "import yaml; c = yaml.safe_load(open('benchmarks/longtail_full.yaml')); c['train']['epochs'] = 1
c['datasets'] = {'r52': {**c['datasets']['r52'], 'test': c['datasets']['r52']['dev'], 'max_length': 32}}
c['runs'] = [{'presets': ['cls', 'prompt'], 'seeds': [13]}]; yaml.safe_dump(c, open('$GRID', 'w'))"
fi
timeout $(left) $Q --seeds $SEEDS --methods auto lr-balanced lr --bf16 --out runs/quality > $L/quality_tailtune.log 2>&1 &
timeout $(left) $Q --seeds $SEEDS --methods hf-trainer setfit --out runs/quality_peers > $L/quality_peers.log 2>&1 &
for k in $(seq 0 $((SHARDS - 1))); do
  timeout $(left) python3 -m tailtune.cli run $GRID --data-dir $D --output-dir runs/longtail_full --shard $k/$SHARDS \
    > "$L/shard$k.log" 2>&1 &
done
wait; echo "all done after $(( $(date +%s) - t0 )) s"
cat runs/quality/results.jsonl runs/quality_peers/results.jsonl > "$OUT/quality.jsonl" 2>/dev/null
cp runs/longtail_full/results.jsonl "$OUT/longtail_full.jsonl" 2>/dev/null
tar czf "$OUT/logs.tgz" $L runs/longtail_full/runs/*/*/*/report.json 2>/dev/null
wc -l "$OUT"/*.jsonl; tail -n 3 $L/quality_*.log; grep -h -i "error\|Traceback" $L/*.log | head
