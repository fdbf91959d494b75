"""What a predictor runs: the PyTorch bi-encoder (optionally int8-quantised) or an ONNX export's two encoders under
onnxruntime, behind the same ``encode_queries`` / ``encode_entities`` interface; and an export folder's
``export.json``."""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from ..runfolder import RunFolder
from ..data.batching import EncoderBatch
from ..errors import CheckpointError, KGDistillError
from ..io import check_inside, sha256_file
from ..models.biencoder import BiEncoder, Encoded
from .index import model_fingerprint



def read_export_meta(folder: Path) -> dict:
    """An export folder's ``export.json``; empty for any other model folder."""
    path = folder / RunFolder.EXPORT
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: not valid JSON") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    try:
        onnx = meta.get("onnx") or {}
        named = [*onnx.get("files", {}).values(), *onnx.get("int8_files", {}).values()]
    except AttributeError:
        raise CheckpointError(f"{path}: 'onnx' and its files must be JSON objects") from None
    if "dataset" in meta:
        named.append(meta["dataset"])
    for relative in named:  # the paths a load reads: inside the export, whatever export.json says
        check_inside(folder, relative, path)
    return meta


def quantize_int8(model: BiEncoder) -> BiEncoder:
    """Dynamic int8 quantisation of every Linear layer (PyTorch CPU path)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model.cpu().eval(), {torch.nn.Linear}, dtype=torch.qint8)


def model_info(model) -> dict:
    """A model's provenance (``model.json``'s info), empty when it has none."""
    return dict(getattr(model, "info", None) or {})


class ExportUnavailableError(KGDistillError):
    """An optional export dependency (onnx, onnxruntime) is not installed."""


def _onnxruntime():
    try:
        import onnxruntime  # noqa: PLC0415
    except ImportError:
        raise ExportUnavailableError("ONNX needs the packages onnx and onnxruntime "
                                     "(pip install onnx onnxruntime; or pip install 'kgdistill[export]')") from None
    return onnxruntime


# ---------------------------------------------------------------------------------------------------- ONNX runtime
class OnnxBiEncoder:
    """The two encoders as onnxruntime sessions, with BiEncoder's encode_queries / encode_entities interface."""

    def __init__(self, query_path: Path, entity_path: Path, pooling: str = "mean", info: dict | None = None):
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.sessions = {which: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                         for which, path in (("query", query_path), ("entity", entity_path))}
        self.inputs = {w: [i.name for i in s.get_inputs()] for w, s in self.sessions.items()}
        self.pooling = pooling
        self.info = dict(info or {})
        digest = hashlib.sha256()
        for path in (query_path, entity_path):
            digest.update(sha256_file(path).encode())
            data = Path(str(path) + ".data")
            if data.is_file():
                digest.update(sha256_file(data).encode())
        self.fingerprint = "onnx-" + digest.hexdigest()

    @classmethod
    def load(cls, folder: Path, export_meta: dict, quantized: bool = False, model: BiEncoder | None = None
             ) -> "OnnxBiEncoder":
        """The ONNX encoders an export lists in ``export.json`` (the int8 ones with ``quantized``)."""
        files = (export_meta.get("onnx") or {}).get("int8_files" if quantized else "files")
        if not files:
            raise KGDistillError(f"{folder}: not an ONNX export{' with int8 weights' if quantized else ''} "
                                 f"(export it with format onnx); use the torch backend")
        paths = [folder / files["query"], folder / files["entity"]]
        for path in paths:
            if not path.is_file():
                raise KGDistillError(f"{path}: missing (listed in {RunFolder.EXPORT})")
        return cls(paths[0], paths[1], getattr(model, "pooling", "mean"), model_info(model))

    def _run(self, which: str, batch: EncoderBatch) -> Encoded:
        feed = {"input_ids": batch.input_ids.cpu().numpy().astype(np.int64),
                "attention_mask": batch.attention_mask.cpu().numpy().astype(np.int64)}
        if "token_type_ids" in self.inputs[which]:
            types = batch.token_type_ids if batch.token_type_ids is not None else torch.zeros_like(batch.input_ids)
            feed["token_type_ids"] = types.cpu().numpy().astype(np.int64)
        out = self.sessions[which].run(None, {k: v for k, v in feed.items() if k in self.inputs[which]})[0]
        return Encoded(torch.from_numpy(np.asarray(out, dtype=np.float32)))

    def encode_queries(self, batch: EncoderBatch, hidden: bool = False) -> Encoded:
        """Pooled unit vectors of (head text, relation) batches."""
        return self._run("query", batch)

    def encode_entities(self, batch: EncoderBatch, hidden: bool = False) -> Encoded:
        """Pooled unit vectors of entity-text batches."""
        return self._run("entity", batch)

    def eval(self) -> "OnnxBiEncoder":
        """No-op (BiEncoder interface)."""
        return self

    def to(self, device) -> "OnnxBiEncoder":
        """No-op: onnxruntime runs on the CPU (BiEncoder interface)."""
        return self


def load_backend(folder: Path, backend: str, export_meta: dict, model: BiEncoder) -> tuple[object, str, bool]:
    """What a predictor of ``folder`` runs: ``model`` as it is or int8-quantised (an int8 export) for ``torch``, the
    export's ONNX encoders for ``onnx``; with the fingerprint its entity index is keyed on and whether it must run on
    the CPU in fp32 (dynamic int8 kernels and onnxruntime do)."""
    quantize = export_meta.get("quantize")
    if backend == "torch":
        fingerprint = model_fingerprint(folder)
        if quantize == "int8":
            return quantize_int8(model), fingerprint + "+int8", True
        return model, fingerprint, False
    if backend == "onnx":
        onnx_model = OnnxBiEncoder.load(folder, export_meta, quantized=quantize == "int8", model=model)
        return onnx_model, onnx_model.fingerprint, True
    raise KGDistillError(f"backend '{backend}': expected torch or onnx")

