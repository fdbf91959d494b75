"""The data a job runs on, built once per job: the graph, its text, the token cache and the known training answers."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from ..config import RunConfig
from ..data.batching import ExampleSet, KnownTails, Tokenized, tokenizer_key
from ..data.dataset import KnowledgeGraph
from ..data.loading import load_dataset
from ..data.text import TextBuilder, with_inverses
from ..evaluation.ranking import Evaluator
from ..runtime import pick_device


class DataContext:
    """The dataset with its text builder, token cache and known training answers, built once per job."""

    def __init__(self, config: RunConfig, tokenizer, kg: KnowledgeGraph | None = None):
        self.config = config
        self.kg = (kg or load_dataset(config.data.dataset, config.data.format)).limited(config.data.train_limit)
        d = config.data
        self.texts = TextBuilder(self.kg, d.use_neighbors, d.neighbor_min_words, d.max_neighbors)
        self.tokenized = Tokenized(tokenizer, tokenizer_key(tokenizer), d.max_tokens, d.cache_dir)
        self.train_queries = with_inverses(self.kg.splits["train"], self.kg.num_relations)
        self.known_train = KnownTails(self.train_queries, self.kg.num_entities, self.kg.num_relations)
        self._train_set = None
        self._valid_set = None

    @property
    def prefix(self) -> str:
        """Names this graph and text setting in token-cache file names."""
        return f"{self.kg.name}-{self.kg.fingerprint}-{self.config.data.use_neighbors}"

    def train_set(self) -> ExampleSet:
        """Training queries (inverses included), tokenised once."""
        if self._train_set is None:
            self._train_set = ExampleSet(self.train_queries, self.texts, self.tokenized, f"{self.prefix}-train",
                                         training=True)
        return self._train_set

    def valid_set(self) -> ExampleSet | None:
        """Validation queries (a seeded sample of ``data.valid_limit``), or None when there are fewer than two."""
        if self._valid_set is None:
            queries = with_inverses(self.kg.splits["valid"], self.kg.num_relations)
            if len(queries) < 2:
                return None
            limit = self.config.data.valid_limit
            if limit is not None and limit < len(queries):
                queries = queries[np.random.default_rng(self.config.seed).choice(len(queries), limit, replace=False)]
            self._valid_set = ExampleSet(queries, self.texts, self.tokenized, f"{self.prefix}-valid", training=False)
        return self._valid_set

    def valid_ranker(self) -> Callable[[torch.nn.Module], dict[str, float]] | None:
        """With ``train.valid_ranking``: a function ranking the first ``data.valid_limit`` valid triples for a model
        (filtered, both directions, no re-ranking), returning ``valid_mrr``, ``valid_hits@1`` and ``valid_hits@10``."""
        if not self.config.train.valid_ranking or len(self.kg.splits["valid"]) == 0:
            return None
        eval_config = dataclasses.replace(self.config.eval, split="valid", max_queries=self.config.data.valid_limit,
                                          rerank_weight=0.0, dump_predictions=False, streaming=False)
        evaluator = Evaluator(self.kg, self.texts, self.tokenized, eval_config,
                              pick_device(self.config.train.device), self.config.train.precision)

        def rank(model) -> dict[str, float]:
            both = evaluator.evaluate(model, progress=False).metrics["no_rerank"]["both"]
            return {"valid_mrr": both["mrr"], "valid_hits@1": both["hits@1"], "valid_hits@10": both["hits@10"]}

        return rank

    def evaluator(self, device: torch.device | None = None) -> Evaluator:
        """The filtered-ranking evaluator of this data, on ``device`` (default: ``train.device``)."""
        device = device or pick_device(self.config.train.device)
        return Evaluator(self.kg, self.texts, self.tokenized, self.config.eval, device, self.config.train.precision)
