"""Online cost of a model: single-query encoding latency (the only encoder a served query runs) and the entity side.

    python bench/query_latency.py --models runs/teacher runs/ladder/04-grade3-2L runs/levers/query-emb --queries 200

For each model folder: p50/p99 milliseconds to encode one "head + relation" query (batch 1, the model's resolved
precision, its own saved data settings; validation queries), and the depth of its entity encoder, whose vectors are
computed once offline (a query-only student keeps the teacher's, so the teacher's index serves it). Models are timed
alternately, query by query, so that machine noise hits them alike. Run it with nothing else on the CPU.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from kgdistill.jobs.bench import machine_info
from kgdistill.store.context import DataContext
from kgdistill.store.saved import load_model, model_config
from kgdistill.runtime import autocast, resolve_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    precision = resolve_precision("auto", cpu)
    models, batches = [], []
    for path in args.models:
        model, tokenizer, folder = load_model(path)
        config = model_config(folder)
        data = DataContext(config, tokenizer)
        queries = data.valid_set()
        batches.append([queries.batch(np.array([i]), with_heads=False).hr for i in range(args.warmup + args.queries)])
        models.append(model.eval())
    times = [[] for _ in models]
    with torch.no_grad(), autocast(cpu, precision):
        for i in range(args.warmup + args.queries):
            for m, (model, batch) in enumerate(zip(models, batches)):
                t0 = time.perf_counter()
                model.encode_queries(batch[i])
                if i >= args.warmup:
                    times[m].append(time.perf_counter() - t0)
    rows = []
    for path, model, spent in zip(args.models, models, times):
        ms = np.array(spent) * 1000
        rows.append({"model": path, "query_layers": model.num_layers,
                     "entity_layers": int(model.tail_encoder.config.num_hidden_layers),
                     "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))})
    base = rows[0]["p50_ms"]
    lines = [f"single-query encoding, {precision}, {torch.get_num_threads()} threads, {args.queries} queries", "",
             "| model | query layers | entity layers | p50 ms | p99 ms | speed-up vs first |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['query_layers']} | {r['entity_layers']} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {base / r['p50_ms']:.2f}x |")
    print("\n".join(lines))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({"machine": machine_info(), "precision": precision, "rows": rows,
                                             "table": "\n".join(lines)}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
