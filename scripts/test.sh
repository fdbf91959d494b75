#!/usr/bin/env bash
# Set up (idempotent; a project .venv unless one is active) and run the test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$KGD_PYTHON" -m pytest -q -p no:cacheprovider "$@"
