"""``kgdistill`` command line: one subcommand per API function. User errors, and a disk that is full, read-only or
forbidden, print one line and exit 2.

Arguments, config, dataset and output folder are checked before any model loads; other packages' warnings, log
lines and loading bars are hidden unless ``--verbose`` (kgdistill's own progress bars stay).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings

from ..errors import KGDistillError
from ..io import DISK_ERRNOS
from . import jobs, use

EXIT_USER_ERROR = 2
VERBOSE_HELP = "show tracebacks, and other packages' warnings, log lines and loading bars"


def build_parser() -> argparse.ArgumentParser:
    """The ``kgdistill`` parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="kgdistill", description=__doc__)
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    jobs.add_commands(sub)
    use.add_commands(sub)
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
    """Run one command; returns the exit status (2 for a user error or a disk error, printed as one line; 130 when
    interrupted)."""
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
    except OSError as exc:  # a full, read-only or forbidden disk: what was written before is intact (io stages writes)
        if exc.errno not in DISK_ERRNOS or args.verbose:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"kgdistill: error: {where}{exc.strerror}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("kgdistill: interrupted; resume with --resume", file=sys.stderr)
        return 130
    return 0
