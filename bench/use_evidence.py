"""Evidence for using a trained model: FAISS recall@10 and speed against exact search, and the full-test MRR and
entity-encoding speed of PyTorch fp32 / bf16 / int8 and ONNX fp32 / int8 encoders, measured in one run.

    python bench/use_evidence.py --model runs/teacher-quick --json-out runs/use-teacher.json

Every number is computed here; nothing is read back from earlier runs.
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kgdistill.api import DataContext, load_model, load_run_config
from kgdistill.inference.backends import OnnxBiEncoder, quantize_int8
from kgdistill.jobs.export import export_model
from kgdistill.inference.index import recall_at
from kgdistill.inference.predictor import Predictor


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def faiss_evidence(model_dir: str, num_queries: int, kinds: list[str]) -> dict:
    """Recall@10 of each FAISS kind against exact search on real test queries, batch and single-query speed."""
    predictor = Predictor.from_pretrained(model_dir, device="cpu", progress=True)
    kg = predictor.kg
    triples = kg.splits["test"][:num_queries]
    queries = [(predictor.resolve_entity(kg.entity_ids[h]), int(r)) for h, r, _ in triples]
    vectors = predictor.query_vectors(queries).float().cpu()
    index = predictor.index

    def timed(search) -> tuple[np.ndarray, float, list[float]]:
        search(vectors[:8])  # warm-up
        t0 = time.perf_counter()
        rows = search(vectors)
        batch_s = time.perf_counter() - t0
        singles = []
        for i in range(min(200, len(vectors))):
            t0 = time.perf_counter()
            search(vectors[i:i + 1])
            singles.append((time.perf_counter() - t0) * 1e3)
        return rows, batch_s, singles

    def exact(q):
        return index.search_exact(q, 10)[1].numpy()

    exact_rows, exact_s, exact_single = timed(exact)
    out = {"entities": len(index), "queries": len(vectors),
           "exact": {"batch_queries_per_s": len(vectors) / exact_s, "single_ms_p50": percentile(exact_single, 50),
                     "single_ms_p99": percentile(exact_single, 99)}}
    for kind in kinds:
        t0 = time.perf_counter()
        predictor.build_faiss(kind)
        build_s = time.perf_counter() - t0
        faiss_index = index.faiss_index

        def approx(q, faiss_index=faiss_index):
            return faiss_index.search(np.ascontiguousarray(q.numpy()), 10)[1]

        rows, batch_s, single = timed(approx)
        out[kind] = {"build_s": build_s, "recall@10": recall_at(exact_rows, rows, 10),
                     "batch_queries_per_s": len(vectors) / batch_s, "single_ms_p50": percentile(single, 50),
                     "single_ms_p99": percentile(single, 99), "params": {k: v for k, v in index.faiss_report.items()
                                                                          if k in ("nlist", "nprobe", "m", "ef_search")}}
    return out


def encoder_evidence(model_dir: str, variants: list[str], max_queries: int | None) -> dict:
    """Full filtered evaluation per encoder variant: MRR / Hits@10 and entity-encoding throughput."""
    model, tokenizer, folder = load_model(model_dir)
    config = copy.deepcopy(load_run_config(folder))
    config.eval.max_queries = max_queries
    config.eval.rerank_weight = 0.0
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="kgdistill-onnx-") as tmp:
        export_dir = Path(tmp) / "export"
        export_meta = None
        if any(v.startswith("onnx") for v in variants):
            t0 = time.perf_counter()
            export_meta = export_model(model_dir, export_dir, format="onnx", quantize="int8").meta
            out["export_s"] = time.perf_counter() - t0
            out["onnx_max_abs_diff"] = export_meta["onnx"]["max_abs_diff_vs_pytorch"]
            out["onnx_int8_max_abs_diff"] = export_meta["onnx"]["int8_max_abs_diff_vs_pytorch"]
        for variant in variants:
            config.train.precision = "bf16" if variant == "torch-bf16" else "fp32"
            data = DataContext(config, tokenizer)
            if variant in ("torch-fp32", "torch-bf16"):
                encoder = model.eval()
            elif variant == "torch-int8":
                encoder = quantize_int8(copy.deepcopy(model))
            elif variant in ("onnx-fp32", "onnx-int8"):
                encoder = OnnxBiEncoder.load(export_dir, export_meta, quantized=variant == "onnx-int8", model=model)
            else:
                raise SystemExit(f"unknown variant {variant}")
            evaluator = data.evaluator(torch.device("cpu"))
            evaluator.entity_store()  # tokenise (or load the token cache) outside the timed encoding
            result = evaluator.evaluate(encoder, "test", progress=True)
            both = result.metrics["no_rerank"]["both"]
            out[variant] = {"mrr": both["mrr"], "hits@1": both["hits@1"], "hits@10": both["hits@10"],
                            "encode_entities_s": result.seconds["encode_entities"],
                            "entities_per_s": data.kg.num_entities / result.seconds["encode_entities"],
                            "eval_total_s": result.seconds["total"]}
            print(variant, json.dumps(out[variant]), flush=True)
    base = out.get("torch-fp32")
    if base:
        for variant in variants:
            if variant != "torch-fp32":
                out[variant]["speedup_vs_torch_fp32"] = out[variant]["entities_per_s"] / base["entities_per_s"]
                out[variant]["mrr_change_vs_torch_fp32"] = out[variant]["mrr"] - base["mrr"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--faiss-queries", type=int, default=1000)
    parser.add_argument("--faiss-kinds", default="flat,ivf,hnsw")
    parser.add_argument("--variants", default="torch-fp32,torch-bf16,torch-int8,onnx-fp32,onnx-int8")
    parser.add_argument("--max-queries", type=int, default=None, help="test triples for the MRR runs (all by default)")
    parser.add_argument("--skip-faiss", action="store_true")
    parser.add_argument("--json-out")
    args = parser.parse_args()
    report = {"model": args.model, "torch_threads": torch.get_num_threads()}
    if not args.skip_faiss:
        report["faiss"] = faiss_evidence(args.model, args.faiss_queries, [k for k in args.faiss_kinds.split(",") if k])
        print(json.dumps(report["faiss"], indent=1), flush=True)
    variants = [v for v in args.variants.split(",") if v]
    if variants:
        report["encoders"] = encoder_evidence(args.model, variants, args.max_queries)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")


if __name__ == "__main__":
    main()
