#!/bin/bash
# GPU benchmark of maskrcnn_jax next to torchvision (bench/gpu.py), one command, < 8 min.
#
# Here, once (needs PyPI): bench/gpu.sh download   -> .whl/ml_collections-*.whl
# On the GPU machine (an image with jax[cuda], flax, optax, torch, torchvision; the
# device tool's `run` with carry [".whl"]):   bash bench/gpu.sh [bench.gpu flags]
# Default: R50 and R101-FPN at 1024², batch 4, float32 and bfloat16, train and infer.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == download ]]; then
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .whl ml-collections==1.1.0
fi
if ! python3 -c "import ml_collections" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    python3 -m pip install -q ml-collections==1.1.0 || exit 1
  fi
fi
out=${OUT:-/tmp}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_info.txt"
python3 -c "import jax, torch, torchvision; print('jax', jax.__version__, jax.devices(), \
'torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$out/gpu_info.txt"
PYTHONUNBUFFERED=1 timeout 430 python3 -m bench.gpu "$@" 2>&1 | tee "$out/gpu_bench.txt"
