"""A bi-encoder built from a run config: the PLM itself (a teacher), or a shallower student whose layers are taken
from the PLM's or from a trained teacher's (docs/METHOD.md, "PMD": student init, layer maps)."""
from __future__ import annotations

import copy

from ..config import RunConfig
from ..errors import KGDistillError
from .biencoder import BiEncoder
from .plm import build_student_encoder, choose_layers, load_encoder, load_tokenizer, num_layers, resolve_plm


def build_model(config: RunConfig, teacher: BiEncoder | None = None) -> tuple[BiEncoder, object]:
    """A bi-encoder from the PLM, or a shallower student from a layer map over the PLM's or the teacher's layers;
    returns the model and the PLM's tokenizer."""
    plm_path = resolve_plm(config.model.plm)
    tokenizer = load_tokenizer(plm_path)
    plm = load_encoder(plm_path)
    from_teacher = config.model.init_from == "teacher" and teacher is not None
    sources = (teacher.hr_encoder, teacher.tail_encoder) if from_teacher else (plm, plm)
    depth = num_layers(sources[0])
    layers = config.model.num_layers or (len(config.model.layer_map) if config.model.layer_map else depth)
    if teacher is not None and layers > teacher.num_layers:
        raise KGDistillError(f"config key 'model.num_layers': a student of {layers} layers cannot be deeper than its "
                             f"{teacher.num_layers}-layer teacher")
    if layers > depth:
        raise KGDistillError(f"config key 'model.num_layers': {layers} layers requested but the source "
                             f"({'teacher' if from_teacher else 'PLM'}) has {depth}")
    layer_map = config.model.layer_map or choose_layers(depth, layers, config.model.layer_choice)
    hr = build_student_encoder(sources[0], layer_map)
    query_only = config.distill.student_side == "query" and teacher is not None
    if query_only:  # the serving recipe: the teacher's entity encoder, frozen, so its entity index stays valid
        tail = copy.deepcopy(teacher.tail_encoder).requires_grad_(False)
    else:
        tail = build_student_encoder(sources[1], layer_map)
    info = {"plm": str(config.model.plm), "dataset": config.data.dataset, "layer_map": layer_map,
            "initialised_from": "teacher" if from_teacher else "plm", "source_layers": depth,
            "student_side": "query" if query_only else "both"}
    lc = config.loss
    model = BiEncoder(hr, tail, config.model.pooling, lc.init_temperature, lc.learnable_temperature,
                      lc.max_inv_temperature, info)
    return model, tokenizer
