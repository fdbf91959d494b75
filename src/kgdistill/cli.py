"""``kgdistill`` command line: one subcommand per API function. User errors print one line and exit 2."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .errors import KGDistillError

EXIT_USER_ERROR = 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _config_args(parser: argparse.ArgumentParser, preset_default: str = "quick") -> None:
    parser.add_argument("--dataset", help="bundled dataset name (wn18rr, fb15k-237) or a dataset folder")
    parser.add_argument("--plm", help="'default' (packaged all-MiniLM-L6-v2) or a local Hugging Face model folder")
    parser.add_argument("--preset", default=preset_default, help="quick (2 CPU cores) or paper (GPU); default %(default)s")
    parser.add_argument("--config", help="YAML or JSON config file")
    parser.add_argument("--seed", type=int)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-4")


def _build_config(args):
    from .config import build_config, parse_overrides

    overrides = parse_overrides(args.overrides)
    if args.dataset:
        overrides.setdefault("data", {})["dataset"] = args.dataset
    if getattr(args, "plm", None):
        overrides.setdefault("model", {})["plm"] = args.plm
    if args.seed is not None:
        overrides["seed"] = args.seed
    return build_config(args.preset, args.config, overrides)


def _print_metrics(metrics: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    from .evaluation.ranking import EvaluationResult

    print(EvaluationResult(metrics).table())


def cmd_train(args) -> None:
    from .api import train

    config = _build_config(args)
    outcome = train(config, args.output_dir, resume=args.resume, evaluate_after=not args.no_eval)
    print(f"trained {outcome.train['steps']} steps in {outcome.train['seconds']:.0f} s "
          f"({outcome.train['samples_per_second']:.1f} samples/s); run folder: {outcome.run_dir}")
    if outcome.metrics:
        _print_metrics(outcome.metrics, args.json)


def cmd_evaluate(args) -> None:
    from .api import evaluate

    config = _build_config(args) if (args.overrides or args.config) else None
    if config is not None:
        config.eval.split = args.split
    result = evaluate(args.model, args.dataset, args.split, config, args.output)
    _print_metrics({**result.metrics, "seconds": result.seconds} if args.json else result.metrics, args.json)


def cmd_distill(args) -> None:
    from .distill.ladder import distill

    config = _build_config(args)
    outcome = distill(config, args.teacher, args.output_dir, layers=args.layers, mask_rate=args.mask_rate,
                      resume=args.resume)
    _print_metrics(outcome["metrics"], args.json)


def cmd_pipeline(args) -> None:
    from .distill.ladder import pipeline

    config = _build_config(args)
    report = pipeline(config, args.output_dir, teacher=args.teacher)
    print(report.markdown())


def cmd_bench(args) -> None:
    from pathlib import Path

    from .benchmark import append_markdown, run, synthetic_streaming

    if args.synthetic_entities:
        results = synthetic_streaming(args.synthetic_entities, args.synthetic_queries, args.shards_dir,
                                      args.shard_size, args.query_chunk)
    else:
        results = run(quick=args.quick, model_dir=args.model, repeats=args.repeats)
    if args.json:
        print(json.dumps(results))
    else:
        print(json.dumps(results, indent=1))
    if args.append:
        append_markdown(results, Path(args.append), "kgdistill bench " + " ".join(sys.argv[2:]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kgdistill", description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a SimKGC teacher and evaluate it")
    _config_args(p)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the test evaluation after training")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="filtered ranking of a saved model over all entities")
    _config_args(p)
    p.add_argument("--model", required=True, help="run folder or model folder")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--output", help="folder for metrics.json (default: the run folder)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("distill", help="one PMD stage: a student taught by a trained model")
    _config_args(p)
    p.add_argument("--teacher", required=True, help="teacher run or model folder")
    p.add_argument("--layers", type=int, help="student depth (default: the teacher's)")
    p.add_argument("--mask-rate", type=float, help="MGFD mask rate (default: distill.pre_mask_rate)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("pipeline", help="teacher -> pre-distillation -> grades, with a report (resumable)")
    _config_args(p)
    p.add_argument("--output-dir", default="runs/pipeline")
    p.add_argument("--teacher", help="reuse a trained teacher run instead of training one")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("bench", help="measure matmul peak, encoder GFLOP/s, training and evaluation speed")
    p.add_argument("--quick", action="store_true", help="skip the full evaluation and fp32/batch-256 training")
    p.add_argument("--model", help="a trained model for the evaluation split (default: the untrained PLM)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--append", metavar="FILE", help="append the results to a Markdown file (BENCHMARKS.md)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--synthetic-entities", type=_positive_int, metavar="N",
                   help="only measure streaming evaluation: N random fp16 entity vectors in shards on disk "
                        "(no encoding)")
    p.add_argument("--synthetic-queries", type=_positive_int, default=2000, metavar="Q")
    p.add_argument("--shards-dir", help="parent folder of the temporary shards (default: the system temp folder)")
    p.add_argument("--shard-size", type=_positive_int, default=262_144)
    p.add_argument("--query-chunk", type=_positive_int, default=1024)
    p.set_defaults(func=cmd_bench)

    from .inference.commands import add_commands

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args.func(args)
    except KGDistillError as exc:
        if args.verbose:
            raise
        print(f"kgdistill: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("kgdistill: interrupted; resume with --resume", file=sys.stderr)
        return 130
    return 0
