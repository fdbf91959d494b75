#!/usr/bin/env bash
# Set up (idempotent; a project .venv unless one is active) and run the tests offline: the fast suite by default,
# `--slow` for the slow set (real MiniLM on a WN18RR slice, killed-and-resumed processes, load and fuzz runs), `--all`
# for both. Other arguments go to pytest (`tests/data` runs one package's tests: tests/ mirrors src/kgdistill/).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
marker=(-m "not slow")
case "${1:-}" in
    --slow) marker=(-m slow); shift ;;
    --all) marker=(); shift ;;
esac
"$KGD_PYTHON" -m pytest -q -p no:cacheprovider "${marker[@]}" "$@"
