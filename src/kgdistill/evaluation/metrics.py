"""Rank-based metrics, as fractions (MRR 0.66, not 66)."""
from __future__ import annotations

import numpy as np


def rank_metrics(ranks: np.ndarray) -> dict[str, float]:
    """MR, MRR and Hits@1/3/10 of a list of ranks (NaN for none)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if len(ranks) == 0:
        return {"mr": float("nan"), "mrr": float("nan"), "hits@1": float("nan"), "hits@3": float("nan"),
                "hits@10": float("nan")}
    return {
        "mr": float(ranks.mean()),
        "mrr": float((1.0 / ranks).mean()),
        "hits@1": float((ranks <= 1).mean()),
        "hits@3": float((ranks <= 3).mean()),
        "hits@10": float((ranks <= 10).mean()),
    }
