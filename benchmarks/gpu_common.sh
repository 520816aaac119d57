# Sourced by the GPU scripts (benchmarks/gpu_next.sh, benchmarks/serving/run_gpu.sh, benchmarks/longtail_gpu.sh) after
# they set CARRY (the carried folder), OUT (where results go), DEADLINE (seconds from now), L (their log folder) and,
# optionally, NEED (modules to import, e.g. "fastapi, uvicorn": when that fails and CARRY/whl exists, its wheels are
# installed into /tmp/site). It sets the offline environment, the clock (t0; `left`: seconds to the deadline, 1 at least),
# D (the carried data, unpacked from CARRY/data.tgz) and the default backbone (the MiniLM rebuilt from the carried
# fp16 copy by benchmarks/device_prep.py, kept in runs/minilm on a warm machine), and prints torch and the device.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
t0=$(date +%s)
left() { local s=$(( DEADLINE - ($(date +%s) - t0) )); echo $(( s > 1 ? s : 1 )); }  # (`timeout 0` would mean none)
D=runs/data && mkdir -p "$L" $D "$OUT" && tar xzf "$CARRY/data.tgz" -C $D
if [ -n "${NEED:-}" ] && [ -d "$CARRY/whl" ] && ! python3 -c "import $NEED" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$CARRY"/whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
[ -d runs/minilm ] || python3 benchmarks/device_prep.py "$CARRY/minilm" runs/minilm || exit 1
export TAILTUNE_DEFAULT_BACKBONE=$PWD/runs/minilm
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
