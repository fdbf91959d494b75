"""Which tower of a trained bi-encoder is past its best? Scores the query encoder of one checkpoint with the entity
encoder of another, all four pairs, with the filtered ranking of ``kgdistill evaluate`` (the run's own data, text
settings and precision; ``--split``, default valid). A teacher that declines overall declines in one tower or both:
the pair that keeps one tower at its best and the other at its last step says which (BENCHMARKS.md section 7aa).

    python bench/swap_towers.py runs/fb500/teacher-540 --output runs/probe/swap-fb500.json
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from kgdistill.models.biencoder import BiEncoder
from kgdistill.runfolder import RunFolder
from kgdistill.runtime import pick_device
from kgdistill.store.context import DataContext
from kgdistill.store.saved import load_model_tokenizer, model_config


def crossed_mrr(run: Path, split: str) -> dict[str, float]:
    """Valid (or ``split``) MRR, both directions, without re-ranking, of every query/entity checkpoint pair."""
    checkpoints = {"best": run / RunFolder.BEST, "last": run / RunFolder.LAST}
    models = {name: BiEncoder.load(folder) for name, folder in checkpoints.items()}
    config = model_config(run)
    config.eval.split = split
    data = DataContext(config, load_model_tokenizer(checkpoints["last"]))
    device = pick_device(config.train.device)
    evaluator = data.evaluator(device)
    scores = {}
    for query in checkpoints:
        for entity in checkpoints:
            model = copy.deepcopy(models[query])  # a copy: its entity tower is replaced below
            model.tail_encoder = models[entity].tail_encoder
            result = evaluator.evaluate(model.to(device), progress=False)
            mrr = scores[f"query_{query}+entity_{entity}"] = result.to_dict()["no_rerank"]["both"]["mrr"] * 100
            print(f"query tower {query:4s}  entity tower {entity:4s}  {split} MRR {mrr:.2f}", flush=True)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder with checkpoint-best and checkpoint-last")
    parser.add_argument("--split", default="valid", choices=("train", "valid", "test"))
    parser.add_argument("--output", type=Path, help="write the four MRRs here as JSON")
    args = parser.parse_args()
    scores = crossed_mrr(args.run, args.split)
    if args.output:
        args.output.write_text(json.dumps({"run": str(args.run), "split": args.split, "mrr": scores}, indent=1) + "\n",
                               encoding="utf-8")


if __name__ == "__main__":
    main()
