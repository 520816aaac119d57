#!/usr/bin/env bash
# Issue 4's few-shot grid on one GPU, in one go (the lent machine; see README "Y-Tuning and PPT"):
#   1. the default MiniLM rebuilt from the carried fp16 copy (benchmarks/device_prep.py);
#   2. `tailtune adapt-lm` of it on the unlabelled Reuters + WikiText text -> runs/minilm-lm;
#   3. `tailtune pretrain-prompt` for both backbones: single_sentence with the vanilla template
#      (PPT), with the hybrid template (hybrid PPT), multiple_choice (unified PPT);
#   4. `tailtune run benchmarks/ppt.yaml` in SHARDS processes sharing the GPU.
# Usage: bash benchmarks/ppt_gpu.sh CARRY_DIR OUT_DIR [SHARDS] [SCALE] [DEADLINE_S]
# The grid stops at DEADLINE_S seconds after the start (default 560); finished runs are kept.
# SCALE=smoke runs a few steps of everything (a CPU check of this script).
set -uo pipefail
CARRY=$1 OUT=$2 SHARDS=${3:-8} SCALE=${4:-full} DEADLINE=${5:-560}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=2
TT="python3 -m tailtune.cli"
L=runs/logs && mkdir -p runs $L "$OUT"
D=runs/data && mkdir -p $D && tar xzf "$CARRY/data.tgz" -C $D
python3 benchmarks/device_prep.py "$CARRY/minilm" runs/minilm || exit 1
export TAILTUNE_DEFAULT_BACKBONE=$PWD/runs/minilm
U="$D/unlabeled/reuters21578-train-bodies.txt $D/unlabeled/wikitext2-valid-test.txt"
if [ "$SCALE" = smoke ]; then
  LM="--steps 4 --batch-size 4 --eval-sequences 16 --max-length 32"; PT="--examples 30 --dev-examples 9 --epochs 1"
else
  LM="--steps 1500 --batch-size 64 --eval-sequences 1000 --max-length 128"; PT="--examples 6000 --dev-examples 600 --epochs 3"
fi
PTO="--soft-tokens 20 --max-length 128 --batch-size 32 --head-lr 1e-3 --module-lr 3e-2 --lr 1e-3 --bf16 --no-progress"
pretrain() {  # backbone name, backbone arg
  $TT pretrain-prompt --task single_sentence --data $U --output runs/prompts/$1/vanilla --template "{text} {mask} ." $2 $PT $PTO > "$L/pretrain_$1_vanilla.log" 2>&1 &
  $TT pretrain-prompt --task single_sentence --data $U --output runs/prompts/$1/hybrid $2 $PT $PTO > "$L/pretrain_$1_hybrid.log" 2>&1 &
  $TT pretrain-prompt --task multiple_choice --data $U --output runs/prompts/$1/unified $2 $PT $PTO > "$L/pretrain_$1_unified.log" 2>&1 &
}
t0=$(date +%s)
$TT adapt-lm --data $U --output runs/minilm-lm $LM --lr 1e-4 --bf16 > "$L/adapt_lm.log" 2>&1 &
LMPID=$!
pretrain default ""
wait $LMPID || { tail -20 $L/adapt_lm.log; exit 1; }; echo "adapt-lm done after $(( $(date +%s) - t0 )) s"; tail -2 "$L/adapt_lm.log"
cp runs/minilm-lm/adapt_lm.json "$OUT/"
pretrain lm "--backbone runs/minilm-lm"
wait; echo "prompts done after $(( $(date +%s) - t0 )) s"; grep -h "dev accuracy" $L/pretrain_*.log
[ "$(ls runs/prompts/*/*/prompt.json | wc -l)" = 6 ] || { tail -5 $L/pretrain_*.log; exit 1; }
GRID=benchmarks/ppt.yaml
if [ "$SCALE" = smoke ]; then  # two datasets, seed 13, one epoch, dev as test
  GRID=runs/ppt_smoke.yaml
  python3 -c "import yaml; c = yaml.safe_load(open('benchmarks/ppt.yaml')); c['train']['epochs'] = 1
c['datasets'] = {k: {**v, 'test': v['dev']} for k, v in c['datasets'].items() if k in ('sst2', 'trec')}
c['runs'] = c['runs'][:1]; yaml.safe_dump(c, open('$GRID', 'w'))"
fi
LEFT=$(( DEADLINE - ($(date +%s) - t0) ))
for k in $(seq 0 $((SHARDS - 1))); do
  timeout $LEFT $TT run $GRID --data-dir $D --output-dir runs/ppt --shard $k/$SHARDS > "$L/shard$k.log" 2>&1 &
done
wait; echo "grid done after $(( $(date +%s) - t0 )) s"
cp runs/ppt/results.jsonl "$OUT/"
tar czf "$OUT/extras.tgz" $L runs/prompts/*/*/prompt.json runs/ppt/runs/*/*/*/report.json 2>/dev/null
wc -l runs/ppt/results.jsonl
