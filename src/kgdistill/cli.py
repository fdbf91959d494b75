"""``kgdistill`` command line: one subcommand per API function. User errors print one line and exit 2.

Arguments, config, dataset and output folder are checked before any model loads; other packages' warnings, log
lines and loading bars are hidden unless ``--verbose`` (kgdistill's own progress bars stay).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from .errors import KGDistillError

EXIT_USER_ERROR = 2
VERBOSE_HELP = "show tracebacks, and other packages' warnings, log lines and loading bars"


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


# ---------------------------------------------------------------------------------------------------- early checks
def check_output_dir(path: str | None, flag: str) -> None:
    """An output folder that cannot be one (a file, or below a file) fails before any model loads."""
    if path is None:
        return
    target = Path(path)
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        where = "exists and is not a folder" if existing == target else f"'{existing}' is a file, not a folder"
        raise KGDistillError(f"{flag} {path}: {where}")


def check_dataset(name: str | None, format: str = "auto") -> None:
    """Parse and validate the dataset now; the job's own load then reuses the parsed graph."""
    if name:
        from .data.dataset import load_dataset

        load_dataset(name, format)


def check_student_dataset(config, teacher_dir: Path, dataset: str | None) -> None:
    """The dataset a student of ``teacher_dir`` will use: the teacher's unless chosen (as distill decides it)."""
    from .distill.ladder import inherit_teacher_data

    probe = copy.deepcopy(config)
    inherit_teacher_data(probe, teacher_dir, {}, dataset)
    check_dataset(probe.data.dataset, probe.data.format)


def check_model(path: str, flag: str, checkpoint: str = "last") -> Path:
    """The model folder (a run folder's checkpoint) exists and has a model.json; nothing is loaded yet."""
    from .api import resolve_model_dir

    try:
        return resolve_model_dir(path, checkpoint)
    except KGDistillError as exc:
        raise KGDistillError(f"{flag} {exc}") from None


def _print_metrics(metrics: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    from .evaluation.ranking import EvaluationResult

    print(EvaluationResult(metrics).table())


def cmd_train(args) -> None:
    from .api import train
    from .models.plm import resolve_plm

    config = _build_config(args)
    check_output_dir(args.output_dir, "--output-dir")
    check_dataset(config.data.dataset, config.data.format)
    resolve_plm(config.model.plm)
    outcome = train(config, args.output_dir, resume=args.resume, evaluate_after=not args.no_eval)
    print(f"trained {outcome.train['steps']} steps in {outcome.train['seconds']:.0f} s "
          f"({outcome.train['samples_per_second']:.1f} samples/s); run folder: {outcome.run_dir}")
    if outcome.metrics:
        _print_metrics(outcome.metrics, args.json)


def cmd_evaluate(args) -> None:
    from .api import evaluate, load_run_config

    config = _build_config(args) if (args.overrides or args.config) else None
    if config is not None:
        config.eval.split = args.split
    check_output_dir(args.output, "--output")
    saved = load_run_config(check_model(args.model, "--model", config.eval.checkpoint if config else "last"))
    check_dataset(args.dataset or (saved.data.dataset if saved else None), saved.data.format if saved else "auto")
    result = evaluate(args.model, args.dataset, args.split, config, args.output)
    _print_metrics({**result.metrics, "seconds": result.seconds} if args.json else result.metrics, args.json)


def cmd_distill(args) -> None:
    from .distill.ladder import distill

    config = _build_config(args)
    check_output_dir(args.output_dir, "--output-dir")
    check_student_dataset(config, check_model(args.teacher, "--teacher"), args.dataset)
    outcome = distill(config, args.teacher, args.output_dir, layers=args.layers, mask_rate=args.mask_rate,
                      resume=args.resume, dataset=args.dataset)
    _print_metrics(outcome["metrics"], args.json)


def cmd_pipeline(args) -> None:
    from .distill.ladder import pipeline
    from .models.plm import resolve_plm

    config = _build_config(args)
    check_output_dir(args.output_dir, "--output-dir")
    if args.teacher:
        check_student_dataset(config, check_model(args.teacher, "--teacher"), None)
    else:
        resolve_plm(config.model.plm)
        check_dataset(config.data.dataset, config.data.format)
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


def cmd_convert(args) -> None:
    from .data.formats import convert_dataset

    kg = convert_dataset(args.dataset, args.output, args.format)
    print(f"{kg.summary()}\nwritten in the kgdistill format to {args.output}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kgdistill", description=__doc__)
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
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

    p = sub.add_parser("convert", help="write a dataset folder (SimKGC or KG-BERT layout, or ours) in the kgdistill "
                                       "format")
    p.add_argument("dataset", help="dataset folder (or a bundled dataset's name)")
    p.add_argument("--output", required=True, help="new folder (absent or empty)")
    p.add_argument("--format", default="auto", choices=["auto", "kgdistill", "simkgc", "kgbert"],
                   help="layout of the source; default %(default)s (recognised by its files)")
    p.set_defaults(func=cmd_convert)

    from .inference.commands import add_commands

    add_commands(sub)
    for command in sub.choices.values():  # --verbose after the subcommand too; SUPPRESS keeps one given before it
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line with ``key=value`` overrides anywhere among the options (argparse alone takes only
    the first run of positionals and rejects the rest as unrecognized)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(x.startswith("-") for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


@contextlib.contextmanager
def third_party_output(verbose: bool):
    """Unless verbose, hide other packages' warnings, their log lines below ERROR and transformers' loading and
    saving bars; kgdistill's log lines and progress bars stay. Everything is restored afterwards."""
    from transformers.utils import logging as hf_logging

    root, ours = logging.getLogger(), logging.getLogger("kgdistill")
    saved = root.level, ours.level, hf_logging.is_progress_bar_enabled()
    root.setLevel(logging.INFO if verbose else logging.ERROR)
    ours.setLevel(logging.INFO)
    if not verbose:
        hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            if not verbose:
                warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(saved[0])
        ours.setLevel(saved[1])
        (hf_logging.enable_progress_bar if saved[2] else hf_logging.disable_progress_bar)()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    logging.basicConfig(format="%(message)s")
    try:
        with third_party_output(args.verbose):
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
