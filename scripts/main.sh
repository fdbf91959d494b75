#!/usr/bin/env bash
# Set up (idempotent; a project .venv unless one is active) and run the main job on the embedded defaults: WN18RR,
# packaged all-MiniLM-L6-v2, `quick` budget: teacher -> pre-distilled -> students, each evaluated, report in
# runs/pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$KGD_PYTHON" -m kgdistill pipeline --output-dir "${1:-runs/pipeline}"
