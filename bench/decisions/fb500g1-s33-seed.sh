#!/usr/bin/env bash
# One student seed of the lr 1e-4 check on the seed-1 graph (bench/decisions/fb500g1-s31.md, session 33), fitted into
# one 180-minute session: bench/heldout_fb500.sh SEED runs/fb500g1 1 best 1e-4, except that the teacher is stopped once
# its step-225 best checkpoint exists (its valid MRR there must be session 31's 0.51743; no later checkpoint of that
# run was better) and the students get the budget a finished 540-step teacher gives them, distill.budget=540.
#   git worktree add /work/exp31 dc49ca2 && ln -s /work/runs33 /work/exp31/runs
#   bash bench/decisions/fb500g1-s33-seed.sh SEED    (from main, with main's .venv; resumable: rerun after a kill)
set -euo pipefail
seed=${1:?usage: fb500g1-s33-seed.sh SEED}
venv=$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin
cd /work/exp31
export PATH=$venv:$PATH PYTHONPATH=/work/exp31/src
root=runs/fb500g1 run=runs/fb500g1/teacher-540-lr1e-4
teacher=$run/checkpoint-best
test_once() {
    [ -f "$1/test/metrics.json" ] || kgdistill evaluate --model "$1" --split test --output "$1/test"
}
[ -f "$root/data/PROVENANCE.json" ] || \
    kgdistill subgraph fb15k-237 --entities 500 --seed 1 --max-expand 4 --heldout 500 --output "$root/data"
logged_225() { grep -q '"step": 225, "valid_loss"' "$run/train_log.jsonl" 2>/dev/null; }
if ! logged_225; then
    resume=()
    [ -e "$run/checkpoint-last" ] && resume=(--resume)
    kgdistill train --dataset "$root/data" --preset quick --seed 42 --output-dir "$run" "${resume[@]}" train.lr=1e-4 \
        train.max_steps=540 train.validate_every=45 train.checkpoint_every=45 train.valid_ranking=true \
        eval.split=valid &
    trainer=$!
    until logged_225 && grep -q '"step": 225' "$run/checkpoint-last/trainer_state/state.json" 2>/dev/null; do
        kill -0 "$trainer" 2>/dev/null || { echo "the teacher stopped before step 225" >&2; exit 1; }
        sleep 5
    done
    kill "$trainer"; wait "$trainer" || true
fi
python -c "import json, sys; p = json.load(open('$run/checkpoint-last/trainer_state/state.json'))['progress']
sys.exit(0 if round(p['best_valid'], 5) == 0.51743 else f'teacher best {p[\"best_valid\"]}, not 0.51743: not reproduced')"
[ -f "$teacher/metrics.json" ] || kgdistill evaluate --model "$teacher" --split valid
test_once "$teacher"
students=(--teacher "$teacher" --seed "$seed" eval.split=valid train.valid_ranking=true train.validate_every=90
          train.checkpoint_every=90 eval.checkpoint=best distill.budget=540)
quick=$root/quick-early-lr1e-4-s$seed query=$root/query-early-lr1e-4-s$seed
kgdistill pipeline --output-dir "$quick" "${students[@]}" 'distill.controls=[direct-best]'
test_once "$quick/02-grade1-2L"
test_once "$quick/02-grade1-2L-direct-best"
kgdistill pipeline --output-dir "$query" "${students[@]}" 'distill.controls=[]' distill.student_side=query
test_once "$query/02-grade1-2L"
