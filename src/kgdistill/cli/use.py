"""Subcommands that use a trained model: predict, export, serve."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..data.dataset import decode_lines
from ..errors import KGDistillError
from .checks import check_dataset, check_output_dir

MAX_QUERY_FILE_BYTES = 1 << 30


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run folder, model folder or export folder")
    p.add_argument("--dataset", help="dataset name or folder (default: the one the model was trained on)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"],
                   help="which checkpoint of a run folder; default %(default)s")


def _index_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", default="exact", choices=["exact", "flat", "ivf", "hnsw"],
                   help="exact chunked search (default) or a FAISS index (needs faiss-cpu; recall@10 is reported)")
    p.add_argument("--index-dir", help="folder of the saved entity index (default: beside the model)")
    p.add_argument("--index-dtype", choices=["fp32", "fp16"], help="dtype of a newly built index (default fp32)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"],
                   help="torch, or onnx for a folder made by 'kgdistill export --format onnx'")


def _load_predictor(args, progress: bool = True):
    from ..inference.predictor import Predictor

    check_dataset(args.dataset)  # before the weights load
    return Predictor.from_pretrained(args.model, args.dataset, args.checkpoint, device=args.device,
                                     index_dir=args.index_dir, index_dtype=args.index_dtype, index=args.index,
                                     backend=args.backend, progress=progress)


def _entity_arg(value: str | None, flag: str):
    """An id or name; a JSON object ``{"name": ..., "description": ...}`` for an unseen entity."""
    if value is None or not value.lstrip().startswith("{"):
        return value
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as exc:
        raise KGDistillError(f"{flag}: not valid JSON ({exc.msg}); give an id, a name or "
                             '{"name": ..., "description": ...}') from None
    if not isinstance(obj, dict):
        raise KGDistillError(f"{flag}: expected a JSON object")
    return obj


def read_queries(path: str | Path) -> tuple[list[dict], list[int]]:
    """Queries of a file and their line numbers.

    JSONL (``.jsonl``/``.json``, or any file whose first line starts with ``{``): one object a line,
    ``{"head": ..., "relation": ...}`` or ``{"relation": ..., "tail": ...}``.
    TSV: ``head<TAB>relation`` a line (tail prediction); ``?<TAB>relation<TAB>tail`` predicts heads and
    ``head<TAB>relation<TAB>?`` tails. Empty lines and lines starting with ``#`` are skipped.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_QUERY_FILE_BYTES:
            raise KGDistillError(f"{path}: larger than {MAX_QUERY_FILE_BYTES >> 20} MiB")
        raw = path.read_bytes()
    except OSError as exc:
        raise KGDistillError(f"{path}: cannot read the queries file ({exc.strerror})") from None
    lines = decode_lines(raw, str(path))
    first = next((line for line in lines if line.strip() and not line.lstrip().startswith("#")), "")
    jsonl = path.suffix.lower() in (".jsonl", ".json", ".ndjson") or first.lstrip().startswith("{")
    queries, numbers = [], []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{lineno}"
        if jsonl:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise KGDistillError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or "relation" not in obj or (("head" in obj) == ("tail" in obj)):
                raise KGDistillError(f'{where}: expected {{"head": ..., "relation": ...}} or '
                                     f'{{"relation": ..., "tail": ...}}')
            extra = set(obj) - {"head", "relation", "tail"}
            if extra:
                raise KGDistillError(f"{where}: unexpected keys {sorted(extra)}")
            query = obj
        else:
            parts = [p.strip() for p in line.split("\t")]
            if len(parts) == 2:
                query = {"head": parts[0], "relation": parts[1]}
            elif len(parts) == 3 and parts[0] == "?" and parts[2] != "?":
                query = {"relation": parts[1], "tail": parts[2]}
            elif len(parts) == 3 and parts[2] == "?" and parts[0] != "?":
                query = {"head": parts[0], "relation": parts[1]}
            else:
                raise KGDistillError(f"{where}: expected head<TAB>relation (or ?<TAB>relation<TAB>tail), "
                                     f"found {len(parts)} column(s)")
        queries.append(query)
        numbers.append(lineno)
    if not queries:
        raise KGDistillError(f"{path}: no queries")
    return queries, numbers


def cmd_predict(args) -> None:
    """``kgdistill predict``: one query, a triple's score, or a queries file."""
    from ..inference.predictor import PredictionError

    if args.queries:
        if args.head or args.tail or args.relation:
            raise KGDistillError("--queries: give either a queries file or --head/--relation/--tail, not both")
        queries, numbers = read_queries(args.queries)
        predictor = _load_predictor(args)
        try:
            predictions = predictor.predict_many(queries, args.k, not args.no_filter, progress=True)
        except PredictionError as exc:
            i = getattr(exc, "query_index", None)
            if i is not None:
                raise KGDistillError(f"{args.queries}:{numbers[i]}: {exc}") from None
            raise
        for pred in predictions:
            print(json.dumps(pred.to_dict(), ensure_ascii=False) if args.json else pred.table() + "\n")
        return
    if not args.relation or not (args.head or args.tail):
        raise KGDistillError("predict: give --relation with --head (tail prediction), --tail (head prediction), "
                             "both (a triple's score), or --queries FILE")
    head, tail = _entity_arg(args.head, "--head"), _entity_arg(args.tail, "--tail")
    predictor = _load_predictor(args)
    if head is not None and tail is not None:
        value = predictor.score(head, args.relation, tail)
        if args.json:
            print(json.dumps({"head": head, "relation": args.relation, "tail": tail, "score": value},
                             ensure_ascii=False))
        else:
            print(f"score {value:.6f}")
        return
    if head is not None:
        pred = predictor.predict_tails(head, args.relation, args.k, not args.no_filter)
    else:
        pred = predictor.predict_heads(args.relation, tail, args.k, not args.no_filter)
    print(json.dumps(pred.to_dict(), indent=2, ensure_ascii=False) if args.json else pred.table())


def cmd_export(args) -> None:
    """``kgdistill export``."""
    from ..jobs.export import export_model

    if args.format == "sentence-transformers":
        from ..jobs.st_export import export_sentence_transformers

        if args.quantize:
            raise KGDistillError("--quantize: not for --format sentence-transformers (the folders hold fp32 weights)")
        check_output_dir(args.output, "--output")
        result = export_sentence_transformers(args.model, args.output, args.checkpoint, args.dataset)
    else:
        result = export_model(args.model, args.output, args.format, args.quantize, args.dataset, args.checkpoint,
                              args.index_dtype, progress=True)
    print(result.to_json() if args.json else result.table())


def cmd_serve(args) -> None:
    """``kgdistill serve`` (blocking)."""
    from ..inference.server import API_KEY_ENV, _require_fastapi, check_api_key, host_patterns, serve

    _require_fastapi()
    if not 1 <= args.port <= 65535:
        raise KGDistillError(f"--port {args.port}: expected 1..65535")
    if args.health_port is not None and not (1 <= args.health_port <= 65535 and args.health_port != args.port):
        raise KGDistillError(f"--health-port {args.health_port}: expected 1..65535, not --port")
    for flag, value in (("--max-body-bytes", args.max_body_bytes), ("--request-timeout", args.request_timeout),
                        ("--receive-timeout", args.receive_timeout), ("--header-timeout", args.header_timeout),
                        ("--max-batch", args.max_batch), ("--limit-concurrency", args.limit_concurrency),
                        ("--keep-alive", args.keep_alive), ("--graceful-timeout", args.graceful_timeout)):
        if not value > 0:
            raise KGDistillError(f"{flag}: must be positive")
    if not args.batch_wait_ms >= 0:
        raise KGDistillError("--batch-wait-ms: must be 0 or more")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if api_key is not None:
        check_api_key(api_key)
    host_patterns(args.allowed_host)  # checked before the model loads
    predictor = _load_predictor(args)
    probes = f"; /health and /ready also on port {args.health_port}" if args.health_port else ""
    print(f"serving {predictor.kg.name} ({predictor.num_entities} entities) on http://{args.host}:{args.port} "
          f"(OpenAPI: /docs; API key {'required' if api_key else 'off'}{probes})", file=sys.stderr)
    serve(predictor, args.host, args.port, allowed_hosts=args.allowed_host, api_key=api_key,
          limit_concurrency=args.limit_concurrency, timeout_keep_alive=args.keep_alive,
          graceful_shutdown=args.graceful_timeout, header_timeout=args.header_timeout, health_port=args.health_port,
          max_body_bytes=args.max_body_bytes, request_timeout=args.request_timeout,
          receive_timeout=args.receive_timeout, max_batch=args.max_batch, max_wait_ms=args.batch_wait_ms)


def add_commands(sub) -> None:
    """Add the subcommands that use a trained model to the ``kgdistill`` parser's subparsers."""
    p = sub.add_parser("predict", help="top-k tails or heads of a query, or a triple's score",
                       description="Entities are ids, names, or a JSON object '{\"name\": ..., \"description\": ...}' "
                                   "for an unseen entity. Relations are ids or texts.")
    _model_args(p)
    _index_args(p)
    p.add_argument("--head", help="head entity: predicts tails (with --tail too: scores the triple)")
    p.add_argument("--relation", help="relation id or text")
    p.add_argument("--tail", help="tail entity: predicts heads")
    p.add_argument("-k", "--k", type=int, default=10, help="answers per query; default %(default)s")
    p.add_argument("--queries", help="batch mode: TSV head<TAB>relation (or ?<TAB>relation<TAB>tail) or JSONL")
    p.add_argument("--no-filter", action="store_true", help="keep answers already known from train/valid/test")
    p.add_argument("--json", action="store_true", help="JSON output (one object a line in batch mode)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="self-contained folder: safetensors, tokenizer, config, entity map, index "
                                      "(and ONNX encoders)")
    _model_args(p)
    p.add_argument("--format", default="hf", choices=["hf", "onnx", "sentence-transformers"],
                   help="hf (our folder), onnx (with ONNX encoders) or sentence-transformers (query/ and entity/ "
                        "folders any ST user or server loads, verified against our vectors); default %(default)s")
    p.add_argument("--quantize", choices=["int8"], help="dynamic int8 quantisation of the Linear layers")
    p.add_argument("--output", required=True, help="export folder (created; a previous export is replaced)")
    p.add_argument("--index-dtype", default="fp32", choices=["fp32", "fp16"], help="default %(default)s")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="HTTP service (FastAPI): /predict/tails, /predict/heads, /score, "
                                     "/entities/search, /health, /ready, /metrics")
    _model_args(p)
    _index_args(p)
    p.add_argument("--host", default="127.0.0.1", help="default %(default)s")
    p.add_argument("--port", type=int, default=8000, help="default %(default)s")
    p.add_argument("--max-body-bytes", type=int, default=64 * 1024, help="request body limit; default %(default)s")
    p.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds a request may wait for and use the model, else 503; default %(default)s")
    p.add_argument("--max-batch", type=int, default=32,
                   help="most concurrent prediction requests answered by one model call; default %(default)s")
    p.add_argument("--batch-wait-ms", type=float, default=2.0,
                   help="while requests arrive together, wait this long for a batch to fill; default %(default)s")
    p.add_argument("--limit-concurrency", type=int, default=1024,
                   help="connections and requests in flight, more are answered 503; default %(default)s")
    p.add_argument("--keep-alive", type=int, default=5, help="idle keep-alive timeout in seconds; default %(default)s")
    p.add_argument("--receive-timeout", type=float, default=10.0,
                   help="seconds to receive a request body once its headers are in, else 408; default %(default)s")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds to receive a request's line and headers, else 408 and the connection closed; "
                        "default %(default)s")
    p.add_argument("--health-port", type=int,
                   help="answer /health and /ready on this port too, from a small process of their own that waits "
                        "neither for the main port's busy event loop nor for its GIL (default: none)")
    p.add_argument("--graceful-timeout", type=int, default=10,
                   help="seconds in-flight requests get to finish on shutdown; default %(default)s")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every path but /health and /ready "
                                     "(default: $KGDISTILL_API_KEY; the variable keeps the key out of ps)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="HOST",
                   help="a Host header to accept besides localhost, 127.0.0.1, ::1 and --host (repeatable; "
                        "'*.example.com' for subdomains, '*' for any)")
    p.set_defaults(func=cmd_serve)
