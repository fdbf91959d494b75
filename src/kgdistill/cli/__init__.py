"""The ``kgdistill`` command line: all argparse lives here; the library below it logs and raises.

:mod:`~kgdistill.cli.app` parses and runs (``main``), :mod:`~kgdistill.cli.checks` fails early on bad input,
:mod:`~kgdistill.cli.jobs` and :mod:`~kgdistill.cli.use` hold the subcommands.
"""
from .app import EXIT_USER_ERROR, build_parser, main, parse_args, third_party_output

__all__ = ["EXIT_USER_ERROR", "build_parser", "main", "parse_args", "third_party_output"]
