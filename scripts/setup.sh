#!/usr/bin/env bash
# Install kgdistill and its dependencies. torch is pinned and installed FIRST: an unpinned torch (also one pulled
# in by another package) would fetch a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[test,serve,index,export]"
