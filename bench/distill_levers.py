"""Distillation levers side by side: students of one depth from one teacher, same seed, same steps, one change each.

    python bench/distill_levers.py --teacher runs/teacher --layers 2 --steps 90 --out runs/levers \
        --variants direct,paper,emb,query-emb

Every variant is one ``kgdistill distill`` stage (quick preset, students from the teacher's layers) with the
overrides listed in VARIANTS; finished variants are not redone, so the script can be rerun after a kill. Writes
``levers.json`` and ``levers.md`` (MRR / H@1 / H@10 without re-ranking, % of the teacher, steps, seconds) in --out.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kgdistill.config import build_config, parse_overrides
from kgdistill.jobs.distill import distill

VARIANTS = {  # name -> (what it is, overrides over the quick preset)
    "direct": ("same init, L_CE only (the control)", ["distill.ablation=direct"]),
    "plm": ("PLM init, L_CE only (Baseline*)", ["distill.ablation=direct", "model.init_from=plm"]),
    "paper": ("PMD losses, paper defaults (a=b=0.1, MSE on cosine scores)", []),
    "score-logits": ("L_SCORE on temperature-scaled logits (released code)", ["distill.score_on=logits"]),
    "kl": ("L_SCORE as KL on logits", ["distill.score_loss=kl", "distill.score_on=logits"]),
    "emb": ("paper + embedding distillation (gamma 1, cosine)", ["distill.embedding_weight=1.0"]),
    "emb-only": ("embedding distillation + L_CE, no score term", ["distill.embedding_weight=1.0",
                                                                  "distill.alpha=0.0", "distill.beta=0.0"]),
    "emb-mse": ("paper + embedding distillation (gamma 1, MSE)", ["distill.embedding_weight=1.0",
                                                                 "distill.embedding_loss=mse"]),
    "clean": ("paper, student and teacher score clean text", ["distill.student_input=clean"]),
    "query": ("query encoder only (teacher's entity encoder kept)", ["distill.student_side=query"]),
    "query-emb": ("query encoder only + embedding distillation", ["distill.student_side=query",
                                                                  "distill.embedding_weight=1.0"]),
    "emb-top": ("emb, top layers kept", ["distill.embedding_weight=1.0", "model.layer_choice=top"]),
    "emb-bottom": ("emb, bottom layers kept", ["distill.embedding_weight=1.0", "model.layer_choice=bottom"]),
    "emb-ends": ("emb, first and last layers kept", ["distill.embedding_weight=1.0", "model.layer_choice=ends"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--mask-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--variants", default="direct,paper,emb")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*", help="key=value for every variant")
    args = parser.parse_args()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown} (known: {', '.join(VARIANTS)})")
    teacher_metrics = json.loads((Path(args.teacher) / "metrics.json").read_text(encoding="utf-8"))
    teacher_mrr = teacher_metrics["no_rerank"]["both"]["mrr"]
    rows = []
    for name in names:
        run_dir = args.out / name
        if not (run_dir / "metrics.json").is_file():
            overrides = parse_overrides([*VARIANTS[name][1], *args.overrides, f"seed={args.seed}",
                                         f"distill.teacher={args.teacher}", f"model.num_layers={args.layers}",
                                         f"distill.mask_rate={args.mask_rate}", f"distill.stage_steps={args.steps}"])
            config = build_config("quick", overrides=overrides)
            t0 = time.perf_counter()
            distill(config, run_dir, resume=(run_dir / "checkpoint-last").exists(), progress=False)
            print(f"[{name}] {time.perf_counter() - t0:.0f} s", flush=True)
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        summary = json.loads((run_dir / "train_summary.json").read_text(encoding="utf-8"))
        both = metrics["no_rerank"]["both"]
        rows.append({"variant": name, "what": VARIANTS[name][0], "mrr": both["mrr"], "hits@1": both["hits@1"],
                     "hits@10": both["hits@10"], "rerank_mrr": metrics["rerank"]["both"]["mrr"],
                     "of_teacher": both["mrr"] / teacher_mrr, "steps": summary["steps"],
                     "train_s": summary["seconds"], "encode_entities_s": metrics["seconds"]["encode_entities"]})
    lines = [f"teacher {args.teacher}: MRR {teacher_mrr * 100:.2f}; students {args.layers} layers, {args.steps} steps, "
             f"seed {args.seed}", "",
             "| variant | what | MRR | H@1 | H@10 | MRR rerank | % of teacher | steps | train s | entity enc. s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['what']} | {r['mrr'] * 100:.2f} | {r['hits@1'] * 100:.2f} | "
                     f"{r['hits@10'] * 100:.2f} | {r['rerank_mrr'] * 100:.2f} | {r['of_teacher'] * 100:.1f} | "
                     f"{r['steps']} | {r['train_s']:.0f} | {r['encode_entities_s']:.0f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "levers.json").write_text(json.dumps({"teacher": args.teacher, "args": vars(args) | {"out": str(args.out)},
                                                      "rows": rows}, indent=1), encoding="utf-8")
    (args.out / "levers.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
