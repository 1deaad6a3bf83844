#!/usr/bin/env bash
# Numerical parity of ferrovision's architectures with their PyTorch references (not in CI).
# Installs torch, torchvision and efficientnet-lite-pytorch from PyPI into .cache/parity-venv
# (set PYTHON=python3 to use an interpreter that already has them), writes reference weights,
# inputs and outputs into .cache/parity, then compares our eval-mode forward pass.
# Usage: bench/parity/run.sh [model ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${PYTHON:-}" ]; then
    if [ ! -x .cache/parity-venv/bin/python ]; then
        python3 -m venv .cache/parity-venv
        .cache/parity-venv/bin/pip install --quiet torch torchvision efficientnet-lite-pytorch
    fi
    PYTHON=.cache/parity-venv/bin/python
fi
"$PYTHON" bench/parity/make_reference.py .cache/parity "$@"
cargo run --release --example parity -- .cache/parity "$@"
