"""The query and entity encoders as sentence-transformers model folders, for the tools that load those
(``SentenceTransformer(path)``, text-embeddings-inference, vector databases' embedders).

Layout (``kgdistill export --format sentence-transformers --model RUN --output OUT``)::

    OUT/query/       (head text, relation text) as one BERT sentence pair -> the query vector
    OUT/entity/      an entity's text -> its vector
    OUT/README.md    the exact input format, and how close sentence-transformers came to our own vectors
    OUT/st_export.json

Each folder is the classic sentence-transformers layout, read by every version since 2.x: ``modules.json``, the
Transformer at the root (``config.json``, ``model.safetensors``, tokenizer, ``sentence_bert_config.json`` with the
model's ``data.max_tokens``), ``1_Pooling`` (mean or CLS, as the model pools) and ``2_Normalize`` (unit vectors: a dot
product is the cosine the model ranks by). The sentence-transformers package is needed only to verify the folders.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.batching import tokenize
from ..errors import KGDistillError
from ..evaluation.ranking import encode_store
from ..io import atomic_write_json, atomic_write_text, replace_dir
from ..models.biencoder import BiEncoder
from ..results import Result
from ..store.context import DataContext
from ..store.saved import load_model, model_config

ST_META = "st_export.json"
ST_FORMAT = "kgdistill-sentence-transformers"
ENCODERS = ("query", "entity")
TOLERANCE = 1e-5
SAMPLE = 64  # texts of each kind compared at export


@dataclass
class STExportResult(Result):
    """What :func:`export_sentence_transformers` returns: the folder and its ``st_export.json``."""

    output: Path
    meta: dict

    def to_dict(self) -> dict:
        return {**self.meta, "output": str(self.output)}

    def table(self) -> str:
        lines = [f"sentence-transformers folders written to {self.output}/query and {self.output}/entity"]
        check = self.meta["verification"]
        if check is None:
            lines.append("  not verified (pip install sentence-transformers to compare the vectors)")
        else:
            lines += [f"  {which}: SentenceTransformer vs kgdistill max abs diff {check[which]['max_abs_diff']:.2e} "
                      f"on {check[which]['texts']} texts" for which in ENCODERS]
        return "\n".join(lines)

    def save(self, folder: str | Path) -> Path:
        """``st_export.json``."""
        atomic_write_json(Path(folder) / ST_META, self.meta)
        return Path(folder)


def _write_folder(encoder: torch.nn.Module, tokenizer, pooling: str, max_tokens: int, folder: Path) -> None:
    """One encoder in the classic sentence-transformers layout."""
    encoder.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    atomic_write_json(folder / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])
    atomic_write_json(folder / "sentence_bert_config.json", {"max_seq_length": max_tokens, "do_lower_case": False})
    atomic_write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": int(encoder.config.hidden_size), "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False, "include_prompt": True})
    (folder / "2_Normalize").mkdir()
    atomic_write_json(folder / "config_sentence_transformers.json",
                      {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})


def sample_texts(data: DataContext, n: int = SAMPLE) -> dict[str, list]:
    """Real inputs of both encoders, as evaluation builds them: entity texts, and (head text, relation text) pairs of
    training triples in both directions."""
    texts, kg = data.texts, data.kg
    triples = kg.splits["train"][: max(1, n // 2)]
    queries = [(texts.entity_text(int(h)), texts.relation_text(int(r))) for h, r, _ in triples]
    queries += [(texts.entity_text(int(t)), texts.relation_text(int(r) + kg.num_relations)) for _, r, t in triples]
    return {"query": queries[:n], "entity": [texts.entity_text(e) for e in range(min(n, kg.num_entities))]}


def our_vectors(model: BiEncoder, data: DataContext, which: str, inputs: list) -> np.ndarray:
    """kgdistill's own vectors of ``inputs`` (pairs for the query encoder), tokenised as evaluation does, in fp32."""
    pairs = which == "query"
    first = [x[0] for x in inputs] if pairs else list(inputs)
    second = [x[1] for x in inputs] if pairs else None
    store = tokenize(data.tokenized.tokenizer, first, second, data.config.data.max_tokens)
    encode = model.encode_queries if pairs else model.encode_entities
    return encode_store(encode, store, data.tokenized, torch.device("cpu"), 32, "fp32").numpy()


def st_vectors(folder: Path, inputs: list) -> np.ndarray:
    """sentence-transformers' vectors of ``inputs`` from an exported folder (a pair is passed as a two-item list)."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu")
    return st.encode([list(x) if isinstance(x, tuple) else x for x in inputs], batch_size=32, convert_to_numpy=True)


def _verify(model: BiEncoder, tokenizer, config, stage: Path) -> dict | None:
    """Max abs difference between sentence-transformers on the folders and our encoders, on real inputs of the
    model's dataset; None without the package."""
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        return None
    data = DataContext(config, tokenizer)
    out = {}
    for which, inputs in sample_texts(data).items():
        diff = np.abs(st_vectors(stage / which, inputs) - our_vectors(model, data, which, inputs)).max()
        out[which] = {"max_abs_diff": float(diff), "texts": len(inputs), "within_1e-5": bool(diff <= TOLERANCE)}
    return out


def _readme(meta: dict) -> str:
    check = meta["verification"]
    if check is None:
        verified = ("Not verified at export (sentence-transformers was not installed); `kgdistill export --format sentence-transformers` verifies "
                    "when it is.")
    else:
        verified = "\n".join(f"- {which}: max abs difference {check[which]['max_abs_diff']:.2e} over "
                             f"{check[which]['texts']} real inputs of the dataset" for which in ENCODERS)
        verified = ("Compared at export with kgdistill's own encoders (fp32, CPU) on the same inputs:\n\n" + verified)
        if not all(check[which]["within_1e-5"] for which in ENCODERS):
            verified += "\n\n**Above 1e-5: the folders do not reproduce kgdistill's vectors exactly.**"
    text = meta["text"]
    neighbours = (f"When its description has fewer than {text['neighbor_min_words']} words, the names of up to "
                  f"{text['max_neighbors']} of its training-graph neighbours (sorted by entity id) are appended to the "
                  f"description first." if text["use_neighbors"] else "No neighbour names are appended.")
    return f"""# kgdistill encoders as sentence-transformers models

Exported from `{meta['model_dir']}` ({meta['layers']} query layers, {meta['pooling']} pooling, unit vectors).
A triple (head, relation, tail) scores `cos(query(head, relation), entity(tail))`; tails rank by that cosine.

```python
from sentence_transformers import SentenceTransformer

query = SentenceTransformer("{meta['output']}/query")
entity = SentenceTransformer("{meta['output']}/entity")
q = query.encode([["dog: a domestic animal", "hypernym"]])     # a pair: [head text, relation text]
e = entity.encode(["animal: a living organism"])
scores = q @ e.T                                                # cosine: the vectors are unit length
```

## Input format

- **query/** takes a *pair* `[head text, relation text]`, tokenised as one sentence pair by the model's own
  tokenizer (for BERT: `[CLS] head [SEP] relation [SEP]`, token types 0 then 1), truncated longest-first to
  {meta['max_tokens']} tokens.
  Pass each query as a two-item list; a single string is a different input and gives a different vector.
  Head prediction `(?, relation, tail)` is the query `[tail text, "inverse " + relation text]`.
- **entity/** takes an entity's text, truncated to {meta['max_tokens']} tokens.
- An entity's text is `name: description` (a description that starts with the name has that prefix dropped; the
  name alone when there is no description). {neighbours}

## Agreement with kgdistill

{verified}

SimKGC's graph re-ranking (a bonus for entities near the head in the training graph) is not part of the vectors.
Loading may report the encoder's pooler weights as missing: kgdistill drops the unused pooler; the pooling is the
`1_Pooling` module.
"""


def export_sentence_transformers(model_path: str | Path, output: str | Path, checkpoint: str = "last",
                                 dataset: str | None = None) -> STExportResult:
    """Write ``output/query`` and ``output/entity`` as sentence-transformers folders of the model in ``model_path``,
    verified against our own encoders on real inputs of its dataset when sentence-transformers is installed."""
    model, tokenizer, folder = load_model(model_path, checkpoint)
    output = Path(output)
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / ST_META).is_file())):
        raise KGDistillError(f"output {output}: neither an empty folder nor a previous sentence-transformers export; choose another")
    config = model_config(folder, dataset)
    model = model.eval().float().cpu()
    output.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        for which, encoder in zip(ENCODERS, (model.hr_encoder, model.tail_encoder)):
            _write_folder(encoder, tokenizer, model.pooling, config.data.max_tokens, stage / which)
        d = config.data
        meta = {"format": ST_FORMAT, "model_dir": str(folder), "output": str(output), "layers": model.num_layers,
                "pooling": model.pooling, "max_tokens": d.max_tokens,
                "inv_temperature": float(model.inv_temperature().detach()),
                "text": {"use_neighbors": d.use_neighbors, "neighbor_min_words": d.neighbor_min_words,
                         "max_neighbors": d.max_neighbors},
                "verification": _verify(model, tokenizer, config, stage)}
        atomic_write_text(stage / "README.md", _readme(meta))
        result = STExportResult(output, meta)
        result.save(stage)
        replace_dir(stage, output)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return result

