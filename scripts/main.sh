#!/usr/bin/env bash
# Set up (idempotent; a project .venv unless one is active) and run the main job on the embedded defaults: WN18RR,
# packaged all-MiniLM-L6-v2, `quick` preset: teacher -> a 2-layer student distilled in one jump, each evaluated,
# report in runs/pipeline (or the folder given as the first argument).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$KGD_PYTHON" -m kgdistill pipeline --output-dir "${1:-runs/pipeline}"
