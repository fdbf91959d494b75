"""CLI subcommands for using a trained model (predict, export, serve); registered by kgdistill.cli."""
from __future__ import annotations


def add_commands(sub) -> None:
    """Add the inference subcommands to the ``kgdistill`` parser's subparsers."""
