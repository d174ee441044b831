#!/usr/bin/env bash
# Every speed figure of the docs (docs/attributions.md, docs/clusters-and-reruns.md) on a GPU machine, in one command (from the repository root):
#   tools/bench_gpu.sh            -> results/bench/gpu/*.json and the tables on stdout
# It sets up the environment, runs the demo on the GPU from a clean state (it deletes results/, logs/ and
# benchmarks/ first, as `make clean` does) and times it, then the per-stage rates beside the plain
# forward/backward rate (tools/bench_stages.py) and the attribution benchmark (tools/bench_attributions.py)
# on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
PY=.venv/bin/python
$PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "bench_gpu: torch sees no GPU here")'
OUT=results/bench/gpu
make clean >/dev/null
start=$SECONDS
PATH="$PWD/.venv/bin:$PATH" .venv/bin/snakemake --cores all --keep-going --configfile config/config.yaml \
  --config device=cuda --quiet > /tmp/cvaudit-bench-gpu-demo.log 2>&1 || { tail -50 /tmp/cvaudit-bench-gpu-demo.log; exit 1; }
demo=$((SECONDS - start))
mkdir -p "$OUT"
$PY tools/bench_stages.py --device cuda --demo-seconds "$demo" --out "$OUT/stages.json"
$PY tools/bench_attributions.py --device cuda --images 16 --batch 64 --out "$OUT/attributions.json"
