#!/usr/bin/env bash
# The runs the README leaves to the next lent GPU, in one call of at most 10 minutes:
#   1. issue 10, goal 2 under the long-tail paper's full protocol (R52, max length 256, bf16, 5 seeds): what
#      separates `auto-ln-b16` (84.8) from `cls-ln` / `prompt` (86.9 / 86.1): the [CLS] readout (`auto-ln-b16-cls`),
#      cls-ln's MLP head (`auto-ln-b16-mlp`) or both (`auto-ln-b16-cls-mlp`); one process per run (15), side by side
#      on the GPU, for at most QCAP seconds (a run cut short leaves no row). Earlier sessions ran METHODS="auto-nostop
#      auto-b16" and "auto-ln auto-ln-b16 auto-ln-nostop" (15 processes: 259 s in all);
#   2. issue 12 (closed), the early-exit curves on SST-2 (16-shot), TREC-50 and R52, alone on the GPU, with what time
#      is left (each set is written as soon as it is done); NO_EXIT=1 skips it.
# Usage: [SET=r52] [LENGTH=256] [METHODS="auto-ln-b16-cls auto-ln-b16-mlp auto-ln-b16-cls-mlp"] [NO_EXIT=1] bash benchmarks/gpu_next.sh CARRY_DIR OUT_DIR [DEADLINE_S] [QCAP_S] [SCALE]
# (SET, LENGTH and METHODS change step 1; NO_EXIT=1 skips step 2)
# CARRY_DIR holds the MiniLM as an fp16 copy (`minilm/`) and `data.tgz`, built as benchmarks/serving/run_gpu.sh says
# (no wheels: nothing here needs a package that machine lacks). SCALE=smoke: a few minutes on a CPU, to check it.
set -uo pipefail
CARRY=$1 OUT=$2 DEADLINE=${3:-570} QCAP=${4:-420} SCALE=${5:-full}
R=runs/gpu_next L=runs/gpu_next/logs
. benchmarks/gpu_common.sh
DEVICE=cuda SEEDS="13 21 42 87 100" SET=${SET:-r52} && Q="--only $SET --max-length ${LENGTH:-256}" EPOCHS="" R52_EPOCHS="--epochs 2" B1=100
if [ "$SCALE" = smoke ]; then
  DEVICE=cpu SEEDS="13" Q="--only r52-k8 --max-length 32" EPOCHS="--epochs 0.05" R52_EPOCHS="--epochs 0.02" B1=8
fi
copy() { cp $R/*.json $R/*.jsonl "$OUT"/ 2>/dev/null; tar czf "$OUT/logs.tgz" $L 2>/dev/null; }
for m in ${METHODS:-auto-ln-b16-cls auto-ln-b16-mlp auto-ln-b16-cls-mlp}; do
  for s in $SEEDS; do
    OMP_NUM_THREADS=1 timeout $QCAP python3 benchmarks/peers/quality.py --data-dir $D $Q --methods $m --bf16 --seeds $s \
      --out $R/q_${m}_$s > $L/q_${m}_$s.log 2>&1 &
  done
done
wait
cat $R/q_*/results.jsonl > $R/${SET}_full_protocol.jsonl 2>/dev/null
echo "quality runs done after $(( $(date +%s) - t0 )) s: $(wc -l < $R/${SET}_full_protocol.jsonl) rows"; tail -qn 1 $L/q_*.log
copy
[ -n "${NO_EXIT:-}" ] && { echo "done after $(( $(date +%s) - t0 )) s"; exit 0; }
X="python3 benchmarks/serving/early_exit.py --data-dir $D --batches 64 1 --batch1-texts $B1 --repeats 2 --out $R/early_exit.json"
timeout "$(left)" $X --sets sst2 trec50 $EPOCHS 2>&1 | grep --line-buffered -v "^   " | tee $L/early_exit.log
copy
timeout "$(left)" $X --sets r52 $R52_EPOCHS 2>&1 | grep --line-buffered -v "^   " | tee -a $L/early_exit.log
copy
echo "done after $(( $(date +%s) - t0 )) s"; ls -la "$OUT"
