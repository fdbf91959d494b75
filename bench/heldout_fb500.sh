#!/usr/bin/env bash
# Issue 18's held-out check on its stand-in (BENCHMARKS.md §7aa), one student seed a call:
#   bash bench/heldout_fb500.sh [SEED [ROOT [GRAPH_SEED [CHECKPOINT [TEACHER_LR]]]]]
#   defaults: 42, runs/fb500, 0, last, the preset's rate
# GRAPH_SEED picks another 500-entity subgraph (seed 1: runs/fb500g1, a fresh stand-in; BENCHMARKS.md §7aa).
# CHECKPOINT=best is early stopping everywhere (session 28's candidate): the teacher's best valid checkpoint teaches,
# and each student and control is scored at its own best valid checkpoint (eval.checkpoint=best), into
# ROOT/quick-early-sSEED and ROOT/query-early-sSEED; last (the issue's rule) uses the final teacher.
# TEACHER_LR trains the teacher at another rate (train.lr), into ROOT/teacher-540-lrRATE, and its students into
# folders tagged -lrRATE; the students keep their own rates.
# Builds the 500-entity FB15k-237 subgraph, trains the `quick` teacher at 3x its steps (seed 42 whatever SEED is:
# every student seed learns from the same teacher), then from its final checkpoint the default pipeline's 2-layer
# student with its strongest same-init control (direct-best: equal compute, scored at its best valid checkpoint) and
# the query-only 2-layer student. Everything is scored on valid; each finished model once on test, into its test/.
# Resumable: after a kill, run it again; finished runs are skipped and an interrupted one resumes from its last
# checkpoint. Time on 2 AMD EPYC cores (avx512_bf16; BENCHMARKS.md §7aa): teacher 44 min of training, each
# student or control 41-47 min.
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-42}
root=${2:-runs/fb500}
graph_seed=${3:-0}
checkpoint=${4:-last}
teacher_lr=${5:-}
lr_tag="" lr=()
[ -z "$teacher_lr" ] || { lr_tag=-lr$teacher_lr; lr=(train.lr="$teacher_lr"); }
data=$root/data teacher=$root/teacher-540$lr_tag
case $checkpoint in
    last) tag="" early=() ;;
    best) tag="-early" early=(eval.checkpoint=best) ;;
    *) echo "bench/heldout_fb500.sh: CHECKPOINT must be last or best, not '$checkpoint'" >&2; exit 2 ;;
esac

test_once() {  # the one test evaluation of a finished model, beside its valid metrics
    [ -f "$1/test/metrics.json" ] || kgdistill evaluate --model "$1" --split test --output "$1/test"
}

[ -f "$data/PROVENANCE.json" ] || \
    kgdistill subgraph fb15k-237 --entities 500 --seed "$graph_seed" --max-expand 4 --heldout 500 --output "$data"
if [ ! -f "$teacher/metrics.json" ]; then
    resume=()
    [ -e "$teacher/checkpoint-last" ] && resume=(--resume)
    kgdistill train --dataset "$data" --preset quick --seed 42 --output-dir "$teacher" "${resume[@]}" \
        "${lr[@]}" train.max_steps=540 train.validate_every=45 train.checkpoint_every=45 train.valid_ranking=true \
        eval.split=valid
fi
test_once "$teacher"
if [ "$checkpoint" = best ]; then  # the best checkpoint, evaluated on valid in place, is the teacher
    teacher=$teacher/checkpoint-best
    [ -f "$teacher/metrics.json" ] || kgdistill evaluate --model "$teacher" --split valid
    test_once "$teacher"
fi

students=(--teacher "$teacher" --seed "$seed" eval.split=valid train.valid_ranking=true train.validate_every=90
          train.checkpoint_every=90 "${early[@]}")
quick=$root/quick$tag$lr_tag-s$seed query=$root/query$tag$lr_tag-s$seed
kgdistill pipeline --output-dir "$quick" "${students[@]}" 'distill.controls=[direct-best]'
test_once "$quick/02-grade1-2L"
test_once "$quick/02-grade1-2L-direct-best"
kgdistill pipeline --output-dir "$query" "${students[@]}" 'distill.controls=[]' distill.student_side=query
test_once "$query/02-grade1-2L"
