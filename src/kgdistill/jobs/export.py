"""Export a trained model as a self-contained folder, in Hugging Face style (safetensors) or ONNX.

Folder layout (``kgdistill export --model RUN --format hf|onnx [--quantize int8] --output OUT``)::

    OUT/model.safetensors, model.json, tokenizer/                  the bi-encoder (BiEncoder.load reads it)
    OUT/config.yaml                                                the run config (data and text settings)
    OUT/data/<dataset>/entities.tsv, relations.tsv, {train,valid,test}.txt
                                                                   entity map and graph (neighbour text, filtering)
    OUT/index/entities.{npy,json}                                  entity index for this model
    OUT/onnx/query_encoder.onnx, entity_encoder.onnx               [onnx] both encoders, pooled unit vectors out
    OUT/onnx/*.int8.onnx                                           [onnx --quantize int8] dynamic int8 weights
    OUT/export.json                                                what is where, and the verification numbers
    OUT/metrics.json, run.json, train_summary.json                 copied from the run folder when there (metrics only
                                                                   if measured on this checkpoint and dataset)
    OUT/README.md                                                  model card (Hugging Face convention)
    OUT/manifest.json                                              size and sha256 of every file above, written
                                                                   last and checked on load (but index/, which
                                                                   checks itself and may be rebuilt there, and
                                                                   metrics.json, which evaluate may rewrite)

``Predictor.from_pretrained(OUT)`` needs nothing else (``backend='onnx'`` runs the ONNX encoders with onnxruntime).
With ``--quantize int8`` and ``--format hf`` the weights stay fp32 on disk and every Linear layer is quantised
dynamically to int8 when loaded (``torch.ao.quantization.quantize_dynamic``, CPU).
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..runfolder import RunFolder
from ..config import RunConfig
from ..data.batching import EncoderBatch, pad, tokenize
from ..data.dataset import SPLITS
from ..data.formats import write_dataset
from ..data.loading import load_dataset
from ..errors import KGDistillError
from ..io import atomic_write_json, probe_writable, replace_dir, sha256_file, write_manifest
from ..store.model_card import write_model_card
from ..store.saved import model_config, resolve_model_dir, run_dir_of
from ..models.biencoder import BiEncoder, load_model_tokenizer
from ..results import Result
from ..inference.backends import ExportUnavailableError, OnnxBiEncoder, _onnxruntime
from ..inference.predictor import Predictor

log = logging.getLogger("kgdistill")

EXPORT_FORMAT = "kgdistill-export"
FORMATS = ("hf", "onnx")
ONNX_FILES = {"query": "onnx/query_encoder.onnx", "entity": "onnx/entity_encoder.onnx"}
ONNX_OPSET = 17
REWRITTEN = ("index/", RunFolder.METRICS)  # files of an export that later jobs rewrite: left out of its manifest


class _PooledEncoder(nn.Module):
    """One encoder of a bi-encoder, from token ids to its pooled unit vectors (BiEncoder's own pooling)."""

    def __init__(self, model: BiEncoder, which: str):
        super().__init__()
        self.encoder = model.hr_encoder if which == "query" else model.tail_encoder
        object.__setattr__(self, "_model", model)  # not a submodule: only this encoder's weights are exported

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self._model._encode(self.encoder, EncoderBatch(input_ids, attention_mask, token_type_ids), False).vectors


def _export_encoder(model: BiEncoder, which: str, example: EncoderBatch, path: Path) -> None:
    wrapper = _PooledEncoder(model, which).eval()  # eval: the exporter restores the wrapper's mode on its children
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if example.token_type_ids is not None else [])
    args = tuple(getattr(example, n) for n in names)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=["vectors"],
                              opset_version=ONNX_OPSET, dynamo=False, do_constant_folding=True,
                              dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names},
                                            "vectors": {0: "batch"}})
        except Exception as exc:  # the TorchScript exporter may be gone in a later torch: try the dynamo one
            log.info("TorchScript ONNX exporter failed (%s); trying the dynamo exporter", str(exc).splitlines()[0])
            batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=2)
            torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=["vectors"], dynamo=True,
                              dynamic_shapes={n: {0: batch, 1: seq} for n in names}, external_data=False)
    wrapper.train(False)
    model.eval()


def _sample_batches(predictor: Predictor, n: int = 48) -> dict[str, EncoderBatch]:
    """Real query pairs and entity texts, padded like evaluation batches (mixed lengths)."""
    kg, texts = predictor.kg, predictor.texts
    triples = np.concatenate([kg.splits[s] for s in SPLITS])[:n]
    first = [texts.entity_text(int(h)) for h in triples[:, 0]]
    second = [texts.relation_text(int(r)) for r in triples[:, 1]]
    tok = predictor.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    types = predictor.tokenized.uses_token_types
    max_tokens = predictor.config.data.max_tokens
    queries = tokenize(tok, first, second, max_tokens)
    entities = tokenize(tok, [texts.entity_text(e) for e in range(min(n, kg.num_entities))], None, max_tokens)
    return {"query": pad([queries.get(i) for i in range(len(queries))], pad_id, types, tok.sep_token_id),
            "entity": pad([entities.get(i) for i in range(len(entities))], pad_id, types, tok.sep_token_id)}


@torch.no_grad()
def _max_abs_diff(reference: BiEncoder, other, batches: dict[str, EncoderBatch]) -> dict[str, float]:
    out = {}
    for which, batch in batches.items():
        ref = (reference.encode_queries if which == "query" else reference.encode_entities)(batch).vectors
        got = (other.encode_queries if which == "query" else other.encode_entities)(batch).vectors
        out[which] = float((ref.float() - got.float()).abs().max())
    return out


def _quantize_onnx(src: Path, dst: Path) -> None:
    _onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # the quantizer logs every skipped MatMul and a pre-processing hint
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def _check_output(output: Path, source: Path) -> None:
    output_r, source_r = output.resolve(), source.resolve()
    if output_r == source_r or output_r in source_r.parents:
        raise KGDistillError(f"output {output}: must not be the model folder or contain it")
    if output.exists():
        if not output.is_dir():
            raise KGDistillError(f"output {output}: exists and is not a folder")
        if any(output.iterdir()) and not (output / RunFolder.EXPORT).is_file():
            raise KGDistillError(f"output {output}: not empty and not a previous export; choose another folder")
    try:
        probe_writable(output.parent)  # where the export is staged, then renamed into place
    except OSError as exc:
        raise KGDistillError(f"output {output}: cannot write there ({exc.strerror})") from None


def _copy_run_files(source: Path, config: RunConfig, same_dataset: bool, stage: Path) -> None:
    """The run's metrics and provenance, beside the export for its model card; the metrics only when they were
    measured on the exported checkpoint and dataset."""
    run_dir = run_dir_of(source)
    best = config.eval.checkpoint == "best" and (run_dir / RunFolder.BEST).is_dir()
    evaluated = RunFolder.BEST if best else RunFolder.LAST
    metrics_apply = same_dataset and (source == run_dir or source.name == evaluated)
    for name in (RunFolder.METRICS, RunFolder.RUN_INFO, RunFolder.SUMMARY):
        if (run_dir / name).is_file() and (name != RunFolder.METRICS or metrics_apply):
            shutil.copyfile(run_dir / name, stage / name)


# ---------------------------------------------------------------------------------------------------- export
@dataclass
class ExportResult(Result):
    """What ``export_model`` returns: the export folder and its ``export.json`` (``meta``: format, quantisation,
    dataset, entity index and the verification numbers)."""

    output: Path
    meta: dict

    def to_dict(self) -> dict:
        return {**self.meta, "output": str(self.output)}

    def table(self) -> str:
        r = self.meta
        lines = [f"exported ({r['export_format']}{', int8' if r.get('quantize') else ''}) to {self.output}",
                 f"  entity index: {r['index']['entities']} entities, {r['index']['dtype']}"]
        if "int8_max_abs_diff_vs_fp32" in r:
            lines.append("  PyTorch int8 vs fp32 max abs diff: " + _diffs(r["int8_max_abs_diff_vs_fp32"]))
        if "onnx" in r:
            lines.append("  ONNX vs PyTorch max abs diff: " + _diffs(r["onnx"]["max_abs_diff_vs_pytorch"]))
            if "int8_max_abs_diff_vs_pytorch" in r["onnx"]:
                lines.append("  ONNX int8 vs PyTorch fp32 max abs diff: "
                             + _diffs(r["onnx"]["int8_max_abs_diff_vs_pytorch"]))
        return "\n".join(lines)

    def save(self, folder: str | Path) -> Path:
        """``export.json``."""
        atomic_write_json(Path(folder) / RunFolder.EXPORT, self.meta)
        return Path(folder)


def _diffs(d: dict[str, float]) -> str:
    return f"query {d['query']:.3e}, entity {d['entity']:.3e}"


def export_model(model_dir: str | Path, output: str | Path, format: str = "hf", quantize: str | None = None,
                 dataset: str | None = None, checkpoint: str = "last", index_dtype: str = "fp32",
                 progress: bool = False) -> ExportResult:
    """Write a self-contained export folder (``format`` hf or onnx, ``quantize`` None or int8) of the model in
    ``model_dir`` to ``output``; its report is also saved there as ``export.json``."""
    if format not in FORMATS:
        raise KGDistillError(f"format {format!r}: expected one of {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise KGDistillError(f"quantize {quantize!r}: only int8 is supported")
    if format == "onnx":
        _onnxruntime()
        try:
            import onnx  # noqa: F401, PLC0415
        except ImportError:
            raise ExportUnavailableError("ONNX export needs the package onnx (pip install onnx)") from None
    source = resolve_model_dir(model_dir, checkpoint)
    output = Path(output)
    _check_output(output, source)
    config = model_config(source, dataset)
    kg = load_dataset(config.data.dataset, config.data.format)  # before the weights: a bad dataset fails at once
    model = BiEncoder.load(source).eval()
    tokenizer = load_model_tokenizer(source)
    final = output.resolve()
    data_rel = f"data/{kg.name}"
    output.parent.mkdir(parents=True, exist_ok=True)
    stage = output.parent / f".{output.name}.export-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        model.save(stage, tokenizer)
        write_dataset(kg, stage / data_rel)
        exported = copy.deepcopy(config)
        exported.data.dataset, exported.data.format = str(final / data_rel), "kgdistill"
        exported.data.cache_dir = None
        exported.save(stage / RunFolder.CONFIG)
        report: dict = {"format": EXPORT_FORMAT, "version": 1, "export_format": format, "quantize": quantize,
                        "dataset": data_rel, "dataset_name": kg.name, "source": str(source.resolve()),
                        "weights_sha256": sha256_file(stage / "model.safetensors")}
        atomic_write_json(stage / RunFolder.EXPORT, report)
        predictor = Predictor.from_pretrained(stage, index_dtype=index_dtype, device="cpu", progress=progress,
                                              save_index=False)
        predictor.index.save(stage / "index", "entities")  # saved here, not by the predictor: a failure is an error
        report["index"] = {"files": ["index/entities.npy", "index/entities.json"], "dtype": predictor.index.dtype,
                           "entities": len(predictor.index), "model_fingerprint": predictor.fingerprint}
        batches = _sample_batches(predictor)
        if quantize == "int8":
            report["int8_max_abs_diff_vs_fp32"] = _max_abs_diff(model, predictor.model, batches)
            log.info("int8 (PyTorch dynamic) vs fp32 max abs diff of the vectors: %s",
                     report["int8_max_abs_diff_vs_fp32"])
        if format == "onnx":
            onnx_report: dict = {"opset": ONNX_OPSET, "files": dict(ONNX_FILES)}
            for which, rel in ONNX_FILES.items():
                _export_encoder(model, which, batches[which].slice(0, 2), stage / rel)
            session = OnnxBiEncoder(stage / ONNX_FILES["query"], stage / ONNX_FILES["entity"], model.pooling)
            onnx_report["max_abs_diff_vs_pytorch"] = _max_abs_diff(model, session, batches)
            log.info("ONNX vs PyTorch max abs diff of the vectors: %s", onnx_report["max_abs_diff_vs_pytorch"])
            if quantize == "int8":
                int8 = {w: rel.replace(".onnx", ".int8.onnx") for w, rel in ONNX_FILES.items()}
                for which in ONNX_FILES:
                    _quantize_onnx(stage / ONNX_FILES[which], stage / int8[which])
                onnx_report["int8_files"] = int8
                session8 = OnnxBiEncoder(stage / int8["query"], stage / int8["entity"], model.pooling)
                onnx_report["int8_max_abs_diff_vs_pytorch"] = _max_abs_diff(model, session8, batches)
                log.info("ONNX int8 vs PyTorch fp32 max abs diff of the vectors: %s",
                         onnx_report["int8_max_abs_diff_vs_pytorch"])
            report["onnx"] = onnx_report
            atomic_write_json(stage / RunFolder.EXPORT, report)
            onnx_predictor = Predictor.from_pretrained(stage, backend="onnx", index_dtype=index_dtype, device="cpu",
                                                       save_index=False)
            stem = "entities-onnx" + ("-int8" if quantize == "int8" else "")
            onnx_predictor.index.save(stage / "index", stem)
            report["onnx"]["index"] = {"files": [f"index/{stem}.npy", f"index/{stem}.json"],
                                       "model_fingerprint": onnx_predictor.fingerprint}
        atomic_write_json(stage / RunFolder.EXPORT, report)
        _copy_run_files(source, config, dataset is None, stage)
        write_model_card(stage, name=output.name)
        write_manifest(stage, exclude=REWRITTEN)  # last: it covers every file above
        replace_dir(stage, output)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return ExportResult(output, report)
