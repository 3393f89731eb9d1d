#!/usr/bin/env bash
# The issue's GPU measurements in two device calls, each inside the device's 10-minute limit
# (benchmarks/README.md, "GPU session runbook", has the exact calls).
#
#   bash benchmarks/gpu_session.sh prepare       HERE, on the CPU machine: builds what the device calls
#                                                carry, .gpu-tokens (Llama 3 tokens) and .whl (torchao, torchtitan)
#   bash benchmarks/gpu_session.sh throughput    on the GPU: train_throughput.py (bf16, float8, HF and torchtitan
#                                                eager and compiled, plan vs peak), `pasture plan`, tests/test_gpu.py
#   bash benchmarks/gpu_session.sh convergence [ARGS]   on the GPU: convergence.py with ARGS
#                                                (default: variants bf16,float8,fsdp, 200 steps)
#   bash benchmarks/gpu_session.sh decode        on the GPU: the engine's GPU tests, then decode_throughput.py
#                                                on the Llama-3.2-1B shape (bf16, transformers, FP8; a process each)
#
# Everything goes to $OUT as it is written (the device tool returns it even when a call runs past
# its limit; runs/gpu-session/PART when OUT is unset), at most 6 files a part (the tool returns 8).
# Each step runs under `timeout`, so one that hangs leaves time for the next.
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:-}
shift $(($# > 0))
TORCHAO=torchao==0.18.0  # built for torch 2.11, the GPU image's (its __init__ wants >= 2.11.0); no dependencies
# torchtitan 0.2.2, the newest that imports with torch 2.11 (0.3.0 needs newer torch: benchmarks/README.md), and
# the packages its llama3 package imports that the GPU image lacks; all pure Python, 1.7 MB
TORCHTITAN=(torchtitan==0.2.2 torchdata==0.11.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
            tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.0)
# what tests/conftest.py imports through the server's protocol module, at this venv's versions
PYDANTIC=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5)
SHAPE=(train.seq_len=2048 'train.seq_len_schedule=[]' 'train.batch_ramp=[]' train.batch_size=8 train.micro_batch_size=8)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

wheels() {  # into .whl, built for the GPU image's Python 3.12 on x86-64, without their dependencies
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "$@"
}

prepare() {
  [ -f .gpu-tokens/index.json ] || python3 benchmarks/prepare_gpu_tokens.py --quiet || return
  ls .whl/torchao-*.whl >/dev/null 2>&1 || wheels "$TORCHAO" || return
  ls .whl/torchtitan-*.whl >/dev/null 2>&1 || wheels "${TORCHTITAN[@]}" || return
  ls .whl/pydantic_core-*.whl >/dev/null 2>&1 || wheels "${PYDANTIC[@]}" || return
  [ "$(git check-ignore .gpu-tokens/index.json .whl/torchao.whl | wc -l)" = 2 ] \
    || echo "warning: .gpu-tokens or .whl is not ignored by git, so it travels without being carried"
  du -sh .gpu-tokens .whl
  echo "the working tree sends $(git ls-files -z -co --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)" \
    "bytes besides the carried folders (the device limit is 64 MiB in all)"
}

device_setup() {
  OUT=${OUT:-runs/gpu-session/$part}
  mkdir -p "$OUT"
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH="/tmp/site:$PYTHONPATH"
  fi
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu \
      --format=csv
    for module in torch triton transformers torchao torchtitan; do
      python3 -c "import $module; print('$module', $module.__version__)" 2>&1 | tail -n 1
    done
    nproc; free -g | head -2; df -h /tmp | tail -1
  } 2>&1 | tee "$OUT/env.txt"
}

throughput() {
  timeout 30 python3 -m pasture.cli plan 1b "${SHAPE[@]}" --gpus 1 2>&1 | tee "$OUT/plan.txt"
  timeout 450 python3 benchmarks/train_throughput.py --steps 20 --warmup 5 2>&1 | tee "$OUT/throughput.log"
  timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.log"
}

convergence() {
  local runs=/tmp/convergence-runs
  timeout 560 python3 benchmarks/convergence.py --runs "$runs" --out "$OUT" "$@" 2>&1 | tee "$OUT/convergence.log"
  for log in "$runs"/*/pretrain.log; do
    [ -f "$log" ] && { echo "== $log (last lines)"; tail -n 15 "$log"; } >>"$OUT/convergence.log"
  done
}

decode() {
  timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "engine or fp8" 2>&1 | tee "$OUT/test_gpu.log"
  timeout 450 python3 benchmarks/decode_throughput.py --device cuda --preset llama3.2-1b --batch-sizes 1 8 32 \
    --new-tokens 128 --prompt-tokens 32 --repeats 2 --row-timeout 240 "$@" 2>&1 | tee "$OUT/decode.log"
}

case "$part" in
  prepare) prepare ;;
  throughput | convergence | decode) device_setup && "$part" "$@" ;;
  *) echo "usage: bash benchmarks/gpu_session.sh prepare|throughput|convergence|decode" >&2; exit 2 ;;
esac
