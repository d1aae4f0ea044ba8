#!/usr/bin/env bash
# The CUDA checks, as one script for a machine with a GPU (used with the device tool; also
# runnable by hand). Writes its logs to ${OUT:-gpu-results}.
# PYTHONPATH may point at carried copies of hydra/omegaconf where they are not installed.
set -uo pipefail
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/gpu.txt"
python3 -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider 2>&1 | tee "$out/cuda_tests.log"
python3 scripts/bench.py --cuda --cases bare_cuda,runner_cuda --repeat 3 --out "$out/bench" 2>&1 | tee "$out/bench.log"
