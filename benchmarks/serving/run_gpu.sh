#!/usr/bin/env bash
# The GPU tables of a lent machine, in one go (README, "Early exit, fast inference and serving", "On a GPU"):
#   1. prediction throughput against the Hugging Face pipeline on R52 (fp32 and bf16; int8 and ONNX Runtime
#      are CPU paths), on a classifier trained here as in benchmarks/serving/run_idle.sh;
#   2. issue 10's goal 2 under the paper's full protocol: the default (`auto`) on R52 at max length 256,
#      five seeds, one process each, side by side on the GPU;
#   3. the early-exit curves on SST-2 (16-shot), TREC-50 and R52;
#   4. the load test of `tailtune serve --device cuda`.
# Usage: bash benchmarks/serving/run_gpu.sh CARRY_DIR OUT_DIR [DEADLINE_S] [SCALE]
# CARRY_DIR holds the MiniLM as an fp16 copy (`minilm/`, rebuilt by benchmarks/device_prep.py), `data.tgz`
# (longtail/r52, longtail/trec50, fewshot/lmbff-16shot/SST-2/16-13) and `whl/` (FastAPI, uvicorn and pydantic,
# which that machine lacks). Everything stops DEADLINE_S seconds after the start (default 540); results go
# to runs/gpu (kept on a warm machine, so a second call resumes where the first stopped) and are copied to
# OUT_DIR. SCALE=smoke: a few minutes on a CPU, to check the script.
# Build CARRY_DIR here (then pass `carry: [".carry"]` to the device tool; .carry is in .git/info/exclude):
#   python benchmarks/device_prep.py --pack "$(python -c 'import tailtune as tt; print(tt.backbone.resolve_name("default"))')" .carry/minilm
#   (cd ../shared/data && tar czf - longtail/r52 longtail/trec50 fewshot/lmbff-16shot/SST-2/16-13) > .carry/data.tgz
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .carry/whl \
#     fastapi starlette uvicorn pydantic pydantic-core annotated-types typing-inspection opentelemetry-api
set -uo pipefail
CARRY=$1 OUT=$2 DEADLINE=${3:-540} SCALE=${4:-full}
R=runs/gpu L=runs/gpu/logs NEED="fastapi, uvicorn"
. benchmarks/gpu_common.sh
DEVICE=cuda EPOCHS="" SEEDS="13 21 42 87 100" Q="--only r52 --max-length 256" LIMIT=100000 REQUESTS=1000 SHORT="0.3 128" QCAP=240
if [ "$SCALE" = smoke ]; then
  DEVICE=cpu EPOCHS="--epochs 0.05" SEEDS="13" Q="--only r52-k8 --max-length 32" LIMIT=64 REQUESTS=40 SHORT="0.02 32" QCAP=60
fi
copy() { cp $R/*.json $R/*.jsonl "$OUT"/ 2>/dev/null; tar czf "$OUT/logs.tgz" $L 2>/dev/null; }
M=$R/r52-short && read -r E N <<< "$SHORT"
if [ ! -f $M/tailtune.json ]; then  # as in run_idle.sh: 0.3 epoch at length 128, seed 13
  timeout "$(left)" python3 -m tailtune.cli train --train $D/longtail/r52/train.tsv --dev $D/longtail/r52/dev.tsv \
    --max-length $N --epochs $E --seed 13 --no-progress --output $M --device $DEVICE > $L/train_r52.log 2>&1
fi
[ -f $R/throughput.json ] || timeout "$(left)" python3 benchmarks/serving/throughput.py $M --device $DEVICE \
  --data $D/longtail/r52/test.tsv --limit $LIMIT --batch 64 --repeats 5 --out $R/throughput.json 2>&1 | tee $L/throughput.log
copy
if [ ! -s $R/quality_auto.jsonl ]; then  # at most 240 s: the early-exit curves and the load test need the rest
  cap=$(( $(left) < QCAP ? $(left) : QCAP ))
  for s in $SEEDS; do
    OMP_NUM_THREADS=3 timeout $cap python3 benchmarks/peers/quality.py --data-dir $D $Q --methods auto --bf16 --seeds $s \
      --out $R/quality_$s > $L/quality_$s.log 2>&1 &
  done
  wait
  cat $R/quality_*/results.jsonl > $R/quality_auto.jsonl 2>/dev/null
  tail -n 2 $L/quality_*.log
fi
copy
timeout "$(left)" python3 benchmarks/serving/early_exit.py --data-dir $D --sets sst2 trec50 $EPOCHS --batch1-texts 500 --out $R/early_exit.json \
  2>&1 | grep --line-buffered -v "^   " | tee $L/early_exit.log
copy
timeout "$(left)" python3 benchmarks/serving/early_exit.py --data-dir $D --sets r52 ${EPOCHS:---epochs 2} --batch1-texts 500 --out $R/early_exit.json \
  2>&1 | grep --line-buffered -v "^   " | tee -a $L/early_exit.log
copy
[ -f $R/load_test.json ] || timeout "$(left)" python3 benchmarks/serving/load_test.py --device $DEVICE --requests $REQUESTS \
  --out $R/load_test.json 2>&1 | tee $L/load_test.log
copy
echo "done after $(( $(date +%s) - t0 )) s"; ls -la "$OUT"
