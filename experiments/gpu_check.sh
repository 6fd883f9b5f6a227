#!/usr/bin/env bash
# One prepared script for a lent GPU machine (the `device` tool's `run`): exercises the CUDA paths and
# writes JSON lines to $OUT/gpu_check.jsonl (copy them to experiments/results/ afterwards).
# The GPU image has torch but not diffusers/av; carry them as wheels in .whl/ (see the device README):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl diffusers av
set -euo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$(pwd):${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

# One GPU of 24 / 16 / 12 GB (issue 21): the memory profiles on random weights of the real shapes, made on
# the device, memory capped with set_per_process_memory_fraction; 720x720 5 s, 2 steps per profile and cap.
# Needs torchao (int8 weights) among the carried wheels. JSON lines: peak VRAM, host RSS, s/step, model error.
# Its share of one <= 8 minute call: at most 200 s (each profile's model is built once, ~3 points of ~2 forwards
# of ~0.3 PFLOP each under the caps; points not started within 150 s are written as skipped). Runs first: the
# later sections exit the script on failure (set -e) and keep the rest of the call.
# CPU dry run (tests/pipeline/test_memory_profiles.py runs it): python experiments/gpu_check_memory.py x.jsonl --device cpu --arch tiny
timeout 200 python3 experiments/gpu_check_memory.py "${OUT:-.}/gpu_check_memory.jsonl" --steps 2 --budget-seconds 150 \
  || echo "memory profiles check failed or timed out"

python3 experiments/gpu_check.py "${OUT:-.}/gpu_check.jsonl"
