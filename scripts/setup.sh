#!/usr/bin/env bash
# Set up .venv with everything aquin-monitor needs, taking the CPU build of torch on machines
# without an NVIDIA GPU (an unpinned torch from PyPI is a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    $PIP install "torch>=2.2,<2.15"
  else
    # A CPU wheel pip can already see (e.g. a find-links folder) first, then PyTorch's CPU index.
    $PIP install "torch==2.13.0+cpu" 2>/dev/null \
      || $PIP install "torch>=2.2,<2.15" --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
  fi
fi
$PIP install -q -e ".[dev]"
