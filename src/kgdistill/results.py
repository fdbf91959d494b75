"""One result protocol for every job (``train``, ``evaluate``, ``distill``, ``pipeline``, ``export_model``).

Each returns a typed :class:`Result`: ``to_dict()`` is what ``--json`` prints (JSON-ready values only), ``table()``
a readable summary (what the command prints otherwise) and ``save(folder)`` writes the result's files, the same ones
the job left in its run folder.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path


class Result(ABC):
    """Base of every job's result: ``to_dict()``, ``table()``, ``save(folder)`` and ``to_json()``."""

    @abstractmethod
    def to_dict(self) -> dict:
        """The result as plain JSON-ready data (what ``--json`` prints)."""

    @abstractmethod
    def table(self) -> str:
        """A readable summary, as the command line prints it."""

    @abstractmethod
    def save(self, folder: str | Path) -> Path:
        """Write the result's files into ``folder`` (created); returns the folder."""

    def to_json(self, indent: int | None = 2) -> str:
        """``to_dict()`` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)


def figure_png(fig, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes (closed afterwards): what ``save()`` writes where a result has a plot."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()
