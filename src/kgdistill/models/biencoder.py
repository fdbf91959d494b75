"""SimKGC's bi-encoder: one encoder for ``head + relation``, another for entities; mean pooling, cosine score.

A student is the same class with shallower encoders, so training, evaluation and inference never need to know
which grade they hold. ``forward`` returns vectors; logits are built by the losses.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ..data.batching import EncoderBatch
from ..errors import CheckpointError
from ..io import atomic_write_json, recover_dir, replace_dir, save_tensors, verify_manifest, write_manifest
from .packing import can_pack, encode_packed
from .plm import count_parameters, encoder_from_config, load_tokenizer

FORMAT = "kgdistill-biencoder"
WEIGHTS = "model.safetensors"
META = "model.json"


@dataclass
class Encoded:
    """Pooled unit vectors, and the last hidden states when a caller needs token features (MGFD)."""

    vectors: torch.Tensor
    hidden: torch.Tensor | None = None


class BiEncoder(nn.Module):
    """SimKGC's bi-encoder: a query encoder for (head, relation) text and an entity encoder, pooled to unit vectors,
    with a learnable temperature."""

    def __init__(self, hr_encoder: nn.Module, tail_encoder: nn.Module, pooling: str = "mean",
                 init_temperature: float = 0.05, learnable_temperature: bool = True,
                 max_inv_temperature: float = 100.0, info: dict | None = None):
        super().__init__()
        self.hr_encoder = hr_encoder
        self.tail_encoder = tail_encoder
        self.pooling = pooling
        self.max_inv_temperature = max_inv_temperature
        self.log_inv_t = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)),
                                      requires_grad=learnable_temperature)
        self.info = dict(info or {})  # provenance: plm, layer map, teacher; saved in model.json
        self.packing = False  # padding-free encoding (models.packing); a runtime choice, not saved

    @property
    def hidden_size(self) -> int:
        """Size of the pooled vectors."""
        return int(self.tail_encoder.config.hidden_size)

    @property
    def num_layers(self) -> int:
        """Depth of the query encoder."""
        return int(self.hr_encoder.config.num_hidden_layers)

    def inv_temperature(self) -> torch.Tensor:
        """1/tau, kept in [1, max_inv_temperature] so a diverging temperature cannot blow up the logits."""
        return self.log_inv_t.exp().clamp(1.0, self.max_inv_temperature)

    def _encode(self, encoder: nn.Module, batch: EncoderBatch, hidden: bool) -> Encoded:
        if self.packing and can_pack(encoder):
            last = encode_packed(encoder, batch.input_ids, batch.attention_mask, batch.token_type_ids)
        else:
            kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
            if batch.token_type_ids is not None:
                kwargs["token_type_ids"] = batch.token_type_ids
            last = encoder(**kwargs).last_hidden_state
        if self.pooling == "cls":
            pooled = last[:, 0]
        else:
            mask = batch.attention_mask.unsqueeze(-1).to(last.dtype)
            pooled = (last * mask).sum(1) / mask.sum(1).clamp(min=1e-6)
        return Encoded(F.normalize(pooled.float(), dim=-1), last if hidden else None)

    def encode_queries(self, batch: EncoderBatch, hidden: bool = False) -> Encoded:
        """Pooled unit vectors of (head text, relation) batches; ``hidden`` also keeps the token features."""
        return self._encode(self.hr_encoder, batch, hidden)

    def encode_entities(self, batch: EncoderBatch, hidden: bool = False) -> Encoded:
        """Pooled unit vectors of entity-text batches; ``hidden`` also keeps the token features."""
        return self._encode(self.tail_encoder, batch, hidden)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of both encoders, with and without the embeddings."""
        return {"total": count_parameters(self),
                "non_embedding": count_parameters(self, exclude_embeddings=True)}

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path, tokenizer=None, extra=None) -> None:
        """Write a self-contained model folder atomically: safetensors weights, config JSON, tokenizer, manifest."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        for stale in folder.parent.glob(f".{folder.name}.*"):  # left by a process killed while writing
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_tensors(tmp / WEIGHTS, state, metadata={"format": FORMAT})
            meta = {
                "format": FORMAT, "version": 1, "pooling": self.pooling,
                "max_inv_temperature": self.max_inv_temperature,
                "learnable_temperature": bool(self.log_inv_t.requires_grad),
                "hr_config": self.hr_encoder.config.to_dict(),
                "tail_config": self.tail_encoder.config.to_dict(),
                "num_layers": self.num_layers, "hidden_size": self.hidden_size,
                "parameters": self.parameter_counts(), "info": self.info,
            }
            atomic_write_json(tmp / META, meta)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp / "tokenizer"))
            if extra is not None:
                extra(tmp)  # e.g. training state, covered by the same manifest
            write_manifest(tmp)
            replace_dir(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, folder: str | Path, verify: bool = True) -> "BiEncoder":
        """Load a model folder written by :meth:`save`; needs neither the PLM nor the training config."""
        folder = recover_dir(Path(folder))
        if not (folder / META).is_file():
            raise CheckpointError(f"{folder}: not a kgdistill model folder (no {META})")
        if verify:
            verify_manifest(folder)
        try:
            meta = json.loads((folder / META).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise CheckpointError(f"{folder / META}: not valid JSON") from None
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{folder / META}: format {meta.get('format')!r}, expected {FORMAT!r}")
        try:
            hr = encoder_from_config(meta["hr_config"])
            tail = encoder_from_config(meta["tail_config"])
        except Exception as exc:  # any malformed hand-edited config: transformers raises many types
            raise CheckpointError(f"{folder / META}: bad encoder config "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
        if meta.get("pooling", "mean") not in ("mean", "cls"):
            raise CheckpointError(f"{folder / META}: unknown pooling {meta.get('pooling')!r} (mean or cls)")
        model = cls(hr, tail, pooling=meta.get("pooling", "mean"),
                    learnable_temperature=meta.get("learnable_temperature", True),
                    max_inv_temperature=meta.get("max_inv_temperature", 100.0), info=meta.get("info"))
        try:
            state = load_file(str(folder / WEIGHTS))
        except Exception as exc:  # safetensors raises its own error types for truncated headers
            raise CheckpointError(f"{folder / WEIGHTS}: cannot read weights ({str(exc).splitlines()[0]})") from None
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{folder / WEIGHTS}: weights do not match {META} "
                                  f"({str(exc).splitlines()[0][:200]})") from None
        return model


def load_model_tokenizer(folder: str | Path):
    """The tokenizer saved in a model folder's ``tokenizer/``."""
    folder = Path(folder)
    if not (folder / "tokenizer").is_dir():
        raise CheckpointError(f"{folder}: no tokenizer/ folder")
    return load_tokenizer(folder / "tokenizer")
