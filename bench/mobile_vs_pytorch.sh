#!/bin/bash
# The issue-22 comparison: ferrovision's training and inference steps for the depthwise and
# squeeze-excite families against PyTorch in both memory layouts, alternating, with peak RSS.
# Usage: bench/mobile_vs_pytorch.sh [ferrovision binary] [rounds]; PYTHON picks the interpreter
# (one with torch installed); ROWS, an extended regular expression, keeps the rows whose
# "kind model size" matches it (e.g. ROWS='resnet' or ROWS='train efficientnet_b0'). Run on an
# idle machine.
set -u
cd "$(dirname "$0")/.."
BIN=${1:-target/release/ferrovision}
ROUNDS=${2:-2}
PYTHON=${PYTHON:-python3}
ROWS=${ROWS:-.}
run() { # kind model batch size
  local kind=$1 model=$2 batch=$3 size=$4 flag=""
  echo "$kind $model $size" | grep -qE -- "$ROWS" || return 0
  [ "$kind" = infer ] && flag=--infer
  for round in $(seq "$ROUNDS"); do
    ours=$({ /usr/bin/time -f "rss %M KiB" "$BIN" bench "$kind" --model "$model" --batch "$batch" --size "$size" --steps 5 2>&1; } | grep -E "img/s|rss" | tr '\n' ' ')
    echo "$kind $model B=$batch ${size}px round $round ours: $ours"
    theirs=$({ /usr/bin/time -f "rss %M KiB" "$PYTHON" bench/pytorch_train_bench.py $flag --model "$model" --batch "$batch" \
      --size "$size" --steps 5 --warmup 2 --threads 2 --both-layouts 2>&1; } | grep -E "img/s|rss" | tr '\n' ' ')
    echo "$kind $model B=$batch ${size}px round $round pytorch: $theirs"
  done
}
date
run train mobilenet_v2 32 128
run train efficientnet_b0 32 128
run train efficientnet_lite0 32 192
run infer mobilenet_v2 64 224
run infer efficientnet_b0 64 224
run infer efficientnet_lite0 64 224
run train mobilenet_v2 32 224
run train efficientnet_b0 32 224
run train resnet18 32 224
run train resnet50 32 224
date
