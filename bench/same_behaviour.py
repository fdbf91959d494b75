"""Behaviour unchanged across a refactor: run one small pipeline (teacher, a PMD student with masking, clean input
and embedding matching, its direct control, the query-only serving student) with the source tree given, on the
tests' tiny random BERT and tiny KG, and print each stage's weight digest and MRR as JSON. Run it with two trees
(e.g. a worktree at the commit before a change and the working tree) and compare the lines: identical digests mean
bit-for-bit identical training.

    python bench/same_behaviour.py --src /path/to/old/tree --out /tmp/old
    python bench/same_behaviour.py --src . --out /tmp/new
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="source tree whose src/kgdistill is imported")
    parser.add_argument("--out", required=True, type=Path, help="new folder for the runs")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.src).resolve() / "src"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    os.environ["KGDISTILL_CACHE"] = str(args.out / "cache")
    from conftest import make_tiny_kg, make_tiny_plm, tiny_values

    import kgdistill
    from kgdistill.config import build_config

    values = tiny_values(train__max_steps=3, distill__pre_distill=False, model__init_from="teacher",
                         distill__grades=[{"layers": 2, "mask_rate": 0.2, "steps": 3}], distill__controls=["direct"],
                         distill__student_input="clean", distill__embedding_weight=1.0, distill__serving_grade=True)
    values["data"]["dataset"] = str(make_tiny_kg(args.out / "kg"))
    values["model"]["plm"] = str(make_tiny_plm(args.out / "plm"))
    kgdistill.pipeline(build_config(None, overrides=values), args.out / "p", progress=False)
    stages = {}
    for stage in sorted((args.out / "p").iterdir()):
        weights = stage / "checkpoint-last" / "model.safetensors"
        if weights.is_file():
            metrics = json.loads((stage / "metrics.json").read_text(encoding="utf-8"))
            stages[stage.name] = {"weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()[:16],
                                  "mrr": metrics["no_rerank"]["both"]["mrr"]}
    print(json.dumps(stages))


if __name__ == "__main__":
    main()
