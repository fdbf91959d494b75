#!/usr/bin/env bash
# Full benchmark on this machine, appended to BENCHMARKS.md. Run with nothing else using the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
kgdistill bench --repeats "${REPEATS:-5}" ${MODEL:+--model "$MODEL"} --append BENCHMARKS.md
