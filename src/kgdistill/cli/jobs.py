"""Subcommands that make run folders or measure: train, evaluate, compare, distill, pipeline, report, tune, bench,
convert, subgraph. Each prints its result's ``table()``, or ``to_dict()`` as JSON with ``--json``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import KGDistillError
from .checks import (check_dataset, check_model, check_model_dataset, check_new_run, check_output_dir,
                     check_student_dataset)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _config_args(parser: argparse.ArgumentParser, training: bool = True) -> None:
    """--dataset, --config and key=value overrides; for the commands that train, also --plm, --preset, --seed."""
    parser.add_argument("--dataset", help="bundled dataset name (wn18rr, fb15k-237) or a dataset folder")
    if training:
        parser.add_argument("--plm", help="'default' (packaged all-MiniLM-L6-v2) or a local Hugging Face model folder")
        parser.add_argument("--preset", default="quick",
                            help="quick (2 CPU cores: teacher + one-jump 2-layer student), quick-ladder (2 CPU "
                                 "cores: PMD's progressive ladder) or paper (GPU); default %(default)s")
    parser.add_argument("--config", help="YAML or JSON config file")
    if training:
        parser.add_argument("--seed", type=int)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-4")


def _build_config(args, flags: dict | None = None):
    """The config of the command line: preset < --config < flags (``flags``: sections given by a command's own
    flags) < key=value overrides."""
    from ..config import merge_values, build_config, parse_overrides

    overrides = merge_values(flags or {}, parse_overrides(args.overrides))
    if getattr(args, "dataset", None):
        overrides.setdefault("data", {})["dataset"] = args.dataset
    if getattr(args, "plm", None):
        overrides.setdefault("model", {})["plm"] = args.plm
    if getattr(args, "seed", None) is not None:
        overrides["seed"] = args.seed
    return build_config(getattr(args, "preset", "quick"), args.config, overrides)


def _tracker_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracker", choices=["tensorboard", "mlflow"],
                        help="also log training to TensorBoard or MLflow (optional extras); default none")


def _print(result, as_json: bool) -> None:
    print(result.to_json() if as_json else result.table())


def cmd_train(args) -> None:
    """``kgdistill train``."""
    from ..jobs.train import train
    from ..models.plm import resolve_plm

    config = _build_config(args)
    check_output_dir(args.output_dir, "--output-dir")
    check_new_run(args.output_dir, args.resume)
    check_dataset(config.data.dataset, config.data.format)
    resolve_plm(config.model.plm)
    _print(train(config, args.output_dir, resume=args.resume, evaluate_after=not args.no_eval, tracker=args.tracker),
           args.json)


def cmd_evaluate(args) -> None:
    """``kgdistill evaluate``."""
    from ..jobs.evaluate import evaluate
    from ..store.saved import chosen_checkpoint

    config = _build_config(args, {"eval": {"split": args.split}} if args.split else None)
    check_output_dir(args.output, "--output")
    check_model_dataset(check_model(args.model, "--model", chosen_checkpoint(args.model, config)), args.dataset)
    _print(evaluate(args.model, config, args.output), args.json)


def cmd_compare(args) -> None:
    """``kgdistill compare``."""
    from ..evaluation.compare import compare

    if args.against:
        a, b = args.runs, args.against
    elif len(args.runs) == 2:
        a, b = args.runs
    else:
        raise KGDistillError(f"compare: {len(args.runs)} folders given without --against; give A B, or A1 A2 ... "
                             f"--against B1 B2 ... (one folder per seed)")
    _print(compare(a, b, args.variant, args.resamples, args.confidence, args.seed), args.json)


def cmd_distill(args) -> None:
    """``kgdistill distill``."""
    from ..jobs.distill import distill

    stage = {"distill": {"teacher": args.teacher, "mask_rate": args.mask_rate}, "model": {"num_layers": args.layers}}
    config = _build_config(args, {section: {k: v for k, v in keys.items() if v is not None}
                                  for section, keys in stage.items()})
    if not config.distill.teacher:
        raise KGDistillError("kgdistill distill: give --teacher (or distill.teacher in the config)")
    check_output_dir(args.output_dir, "--output-dir")
    check_new_run(args.output_dir, args.resume)
    check_student_dataset(config, check_model(config.distill.teacher, "--teacher"))
    _print(distill(config, args.output_dir, resume=args.resume, tracker=args.tracker), args.json)


def cmd_pipeline(args) -> None:
    """``kgdistill pipeline``."""
    from ..jobs.pipeline import pipeline
    from ..models.plm import resolve_plm

    config = _build_config(args, {"distill": {"teacher": args.teacher}} if args.teacher else None)
    check_output_dir(args.output_dir, "--output-dir")
    if config.distill.teacher:
        check_student_dataset(config, check_model(config.distill.teacher, "--teacher"))
    else:
        resolve_plm(config.model.plm)
        check_dataset(config.data.dataset, config.data.format)
    _print(pipeline(config, args.output_dir, tracker=args.tracker), args.json)


def cmd_report(args) -> None:
    """``kgdistill report``."""
    from ..pmd.seeds import seeds_report

    if args.output:
        check_output_dir(args.output, "--output")
    result = seeds_report(args.pipelines, args.resamples)
    if args.output:
        result.save(args.output)
    _print(result, args.json)


def cmd_bench(args) -> None:
    """``kgdistill bench``: a table of the measurements, JSON with ``--json``."""
    from ..jobs.bench import append_markdown, run, synthetic_streaming

    if args.synthetic_entities:
        results = synthetic_streaming(args.synthetic_entities, args.synthetic_queries, args.shards_dir,
                                      args.shard_size, args.query_chunk)
    else:
        results = run(quick=args.quick, model_dir=args.model, repeats=args.repeats)
    print(json.dumps(results, indent=1) if args.json else bench_table(results))
    if args.append:
        append_markdown(results, Path(args.append), "kgdistill bench " + " ".join(sys.argv[2:]))


def bench_table(results: dict, prefix: str = "") -> str:
    """The measurements as ``key  value`` lines, nested keys dotted."""
    lines = []
    for key, value in results.items():
        if isinstance(value, dict):
            lines.append(bench_table(value, f"{prefix}{key}."))
        else:
            lines.append(f"{prefix + key:40} {value:.4g}" if isinstance(value, float) else f"{prefix + key:40} {value}")
    return "\n".join(line for line in lines if line)


def cmd_convert(args) -> None:
    """``kgdistill convert``."""
    from ..data.loading import convert_dataset

    kg = convert_dataset(args.dataset, args.output, args.format)
    print(f"{kg.summary()}\nwritten in the kgdistill format to {args.output}")


def cmd_subgraph(args) -> None:
    """``kgdistill subgraph``."""
    from ..data.loading import subgraph_dataset

    kg = subgraph_dataset(args.dataset, args.output, args.entities, args.seed, args.max_expand, args.heldout,
                          args.format)
    print(f"{kg.summary()}\nwritten in the kgdistill format to {args.output} (PROVENANCE.json says how)")


def cmd_tune(args) -> None:
    """``kgdistill tune``."""
    from ..jobs.tune import load_tune_file, make_pruner, tune
    from ..models.plm import resolve_plm

    if not args.config:
        raise KGDistillError("kgdistill tune: give --config FILE with a 'search' section (the search space)")
    base, space = load_tune_file(args.config)
    config = _build_config(argparse.Namespace(**{**vars(args), "config": None}), base)
    check_output_dir(args.output_dir, "--output-dir")
    check_dataset(config.data.dataset, config.data.format)
    resolve_plm(config.model.plm)
    pruner = make_pruner(args.pruner)  # also: Optuna is installed
    if not args.verbose:  # Optuna logs every trial through its own handler
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    _print(tune(config, space, args.output_dir, args.trials, args.job, pruner=pruner), args.json)


def add_commands(sub) -> None:
    """Add the subcommands that make run folders or measure to the ``kgdistill`` parser's subparsers."""
    p = sub.add_parser("train", help="train a SimKGC teacher and evaluate it")
    _config_args(p)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the test evaluation after training")
    _tracker_arg(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="filtered ranking of a saved model over all entities")
    _config_args(p, training=False)
    p.add_argument("--model", required=True, help="run folder or model folder")
    p.add_argument("--split", choices=["train", "valid", "test"], help="eval.split (default test)")
    p.add_argument("--output", help="folder for metrics.json (default: the --model folder, a run or a checkpoint)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="two models (or two recipes over seeds) evaluated alike, query by query: "
                                       "metric differences with a paired bootstrap interval")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="A B: two evaluation folders (run folders or evaluate --output folders) of the same split, "
                        "filter, tie policy and re-ranking; with --against: the folders of a, one per seed")
    p.add_argument("--against", nargs="+", metavar="RUN",
                   help="the folders of b, one per seed: the interval then resamples seeds as well as triples")
    p.add_argument("--variant", default="no_rerank", choices=["no_rerank", "rerank"], help="default %(default)s")
    p.add_argument("--resamples", type=_positive_int, default=10_000, help="bootstrap resamples; default %(default)s")
    p.add_argument("--confidence", type=float, default=0.95, help="interval's coverage; default %(default)s")
    p.add_argument("--seed", type=int, default=0, help="resampling seed; default %(default)s")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("distill", help="one PMD stage: a student taught by a trained model")
    _config_args(p)
    p.add_argument("--teacher", help="teacher run or model folder (distill.teacher)")
    p.add_argument("--layers", type=int, help="student depth, model.num_layers (default: the teacher's)")
    p.add_argument("--mask-rate", type=float, help="MGFD mask rate, distill.mask_rate (default: distill.pre_mask_rate)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--resume", action="store_true")
    _tracker_arg(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("pipeline", help="teacher -> pre-distillation -> grades, with a report (resumable)")
    _config_args(p)
    p.add_argument("--output-dir", default="runs/pipeline")
    p.add_argument("--teacher", help="reuse a trained teacher run instead of training one")
    _tracker_arg(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("report", help="one pipeline recipe over seeds: each model's mean and range, each "
                                      "student-control gap with an interval over seeds and triples")
    p.add_argument("pipelines", nargs="+", metavar="PIPELINE", help="finished pipeline folders, one per seed")
    p.add_argument("--resamples", type=_positive_int, default=10_000, help="bootstrap resamples; default %(default)s")
    p.add_argument("--output", help="folder for seeds-report.json, .md and .png (default: print only)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="measure matmul peak, encoder GFLOP/s, training and evaluation speed")
    p.add_argument("--quick", action="store_true", help="skip the full evaluation and fp32/batch-256 training")
    p.add_argument("--model", help="a trained model for the evaluation split (default: the untrained PLM)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--append", metavar="FILE", help="append the results to a Markdown file (BENCHMARKS.md)")
    p.add_argument("--synthetic-entities", type=_positive_int, metavar="N",
                   help="only measure streaming evaluation: N random fp16 entity vectors in shards on disk "
                        "(no encoding)")
    p.add_argument("--synthetic-queries", type=_positive_int, default=2000, metavar="Q")
    p.add_argument("--shards-dir", help="parent folder of the temporary shards (default: the system temp folder)")
    p.add_argument("--shard-size", type=_positive_int, default=262_144)
    p.add_argument("--query-chunk", type=_positive_int, default=1024)
    p.add_argument("--json", action="store_true", help="print the measurements as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("convert", help="write a dataset folder (SimKGC or KG-BERT layout, or ours) in the kgdistill "
                                       "format")
    p.add_argument("dataset", help="dataset folder (or a bundled dataset's name)")
    p.add_argument("--output", required=True, help="new folder (absent or empty)")
    p.add_argument("--format", default="auto", choices=["auto", "kgdistill", "simkgc", "kgbert"],
                   help="layout of the source; default %(default)s (recognised by its files)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("subgraph", help="write a small induced subgraph of a dataset (seeded, reproducible), e.g. one "
                                        "where a teacher converges on a CPU")
    p.add_argument("dataset", help="dataset folder or bundled name")
    p.add_argument("--output", required=True, help="new folder (absent or empty)")
    p.add_argument("--entities", type=_positive_int, required=True, help="number of entities to keep")
    p.add_argument("--seed", type=int, default=0, help="sampling seed; default %(default)s")
    p.add_argument("--max-expand", type=_positive_int, default=8,
                   help="neighbours an entity adds to the sample at most; default %(default)s")
    p.add_argument("--heldout", type=int, default=0,
                   help="top valid and test up to this many triples each from leak-free training triples")
    p.add_argument("--format", default="auto", choices=["auto", "kgdistill", "simkgc", "kgbert"])
    p.set_defaults(func=cmd_subgraph)

    p = sub.add_parser("tune", help="hyperparameter search on the validation split (Optuna; resumable)",
                       description="The search space is the 'search' section of --config (config key -> "
                                   "{type: float|int|categorical, ...}); the file's other sections, the preset and "
                                   "key=value overrides make the base config. Every trial evaluates on valid.")
    _config_args(p)
    p.add_argument("--output-dir", required=True, help="study folder: study.db, trials/, best_config.yaml, trials.md")
    p.add_argument("--trials", type=_positive_int, required=True,
                   help="finished trials wanted in all (a second call continues the study)")
    p.add_argument("--job", default="train", choices=["train", "pipeline"],
                   help="what a trial runs; default %(default)s (pipeline trials are not pruned)")
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"],
                   help="stops weak train trials at a validation; default %(default)s")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_tune)
