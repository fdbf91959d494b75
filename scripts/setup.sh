#!/usr/bin/env bash
# Install kgdistill and its dependencies into a Python environment, idempotently.
#
# Inside an active virtual environment or conda env that environment is used; otherwise a project venv `.venv` is
# created (a Debian/Ubuntu system Python refuses `pip install` outside one: PEP 668). torch is pinned and installed
# FIRST: an unpinned torch (also one pulled in by another package) would fetch a multi-GB CUDA build.
# Sourced by main.sh and test.sh, it leaves `$KGD_PYTHON` pointing at the interpreter it set up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

base_python="${PYTHON:-python3}"
if "$base_python" -c 'import os, sys; sys.exit(0 if (sys.prefix != sys.base_prefix or os.environ.get("CONDA_PREFIX")) else 1)'; then
    KGD_PYTHON="$(command -v "$base_python")"
else
    if [ ! -x .venv/bin/python ]; then
        if ! "$base_python" -m venv .venv 2>/dev/null; then
            rm -rf .venv
            # Debian/Ubuntu ship venv's ensurepip separately; as root we can add it, else say what is missing.
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                ver="$("$base_python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
                apt-get update -qq && apt-get install -y -qq "python${ver}-venv" >/dev/null
                "$base_python" -m venv .venv
            else
                echo "setup: '$base_python -m venv' failed; install your distribution's python3-venv package" >&2
                exit 1
            fi
        fi
    fi
    KGD_PYTHON="$PWD/.venv/bin/python"
fi
export KGD_PYTHON
export PATH="$(dirname "$KGD_PYTHON"):$PATH"

stamp=".venv-installed"
if [ "$KGD_PYTHON" = "$PWD/.venv/bin/python" ] && [ -f .venv/"$stamp" ] && [ .venv/"$stamp" -nt pyproject.toml ]; then
    exit_early=1
else
    exit_early=0
fi
if [ "$exit_early" = 0 ]; then
    "$KGD_PYTHON" -m pip install -q --disable-pip-version-check "torch==2.13.0"
    # torch named again so that no extra (PyKEEN, sentence-transformers) can move it off the CPU pin
    "$KGD_PYTHON" -m pip install -q --disable-pip-version-check -e ".[test,serve,index,export,tune,st,pandas,oracle]" \
        "torch==2.13.0"
    if [ "$KGD_PYTHON" = "$PWD/.venv/bin/python" ]; then touch .venv/"$stamp"; fi
fi
