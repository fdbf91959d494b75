"""The cost of a query with thousands of known answers against an ordinary one, in process (issue 19's "one cheap
request, unbounded work"): FB15k-237's ``(?, /common/topic/webpage./common/webpage/category, /m/08mbj5d)`` has 4,364
known answers to filter. Times ``Predictor.predict_heads`` for it and for ordinary test queries (median of
``--repeats``), and checks that the response carries at most k filtered entries.

    python bench/hub_query.py --model runs/some-fb15k-237-run --json-out runs/hub-query.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from kgdistill.inference.predictor import Predictor

HUB = ("/common/topic/webpage./common/webpage/category", "/m/08mbj5d")


def timed(call, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model trained on FB15k-237")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--json-out")
    args = parser.parse_args()
    predictor = Predictor.from_pretrained(args.model, progress=False)
    kg = predictor.kg
    predictor.predict_heads(*HUB, k=args.k)  # warm up: index, tokenizer, caches
    hub_ms, hub = timed(lambda: predictor.predict_heads(*HUB, k=args.k), args.repeats)
    ordinary = []
    for h, r, t in kg.splits["test"][:20]:
        ms, _ = timed(lambda: predictor.predict_heads(kg.relation_ids[r], kg.entity_ids[t], k=args.k), 5)
        ordinary.append(ms)
    result = {"hub_ms": hub_ms, "ordinary_ms_median": statistics.median(ordinary), "k": args.k,
              "hub_filtered_returned": len(hub.filtered), "hub_known_answers": hub.num_filtered}
    result["extra_ms"] = result["hub_ms"] - result["ordinary_ms_median"]
    print(json.dumps(result, indent=1))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
