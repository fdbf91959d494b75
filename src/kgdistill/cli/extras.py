"""Subcommands for what PyKEEN and sentence-transformers users reach for: ``tune`` (hyperparameter search on the
validation split, with Optuna) and ``export-st`` (the encoders as sentence-transformers folders)."""
from __future__ import annotations

import argparse

from ..errors import KGDistillError
from .checks import check_dataset, check_model, check_output_dir
from .jobs import _build_config, _config_args, _positive_int, _print


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


def cmd_export_st(args) -> None:
    """``kgdistill export-st``."""
    from ..inference.st_export import export_sentence_transformers

    check_output_dir(args.output, "--output")
    check_model(args.model, "--model", args.checkpoint)
    check_dataset(args.dataset)
    _print(export_sentence_transformers(args.model, args.output, args.checkpoint, args.dataset), args.json)


def add_commands(sub) -> None:
    """Add ``tune`` and ``export-st`` to the ``kgdistill`` parser's subparsers."""
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

    p = sub.add_parser("export-st", help="the query and entity encoders as sentence-transformers model folders")
    p.add_argument("--model", required=True, help="run folder or model folder")
    p.add_argument("--output", required=True, help="export folder (created; a previous export-st is replaced)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"],
                   help="which checkpoint of a run folder; default %(default)s")
    p.add_argument("--dataset", help="dataset for the verification inputs (default: the model's own)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_export_st)
