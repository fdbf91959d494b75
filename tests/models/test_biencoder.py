"""The bi-encoder (``kgdistill.models.biencoder``): a saved model reloads with identical weights."""
from __future__ import annotations

import torch


def test_saved_model_reloads_identically(tiny_config, tmp_path):
    from kgdistill.api import build_model
    from kgdistill.models.biencoder import BiEncoder

    model, tokenizer = build_model(tiny_config())
    model.save(tmp_path / "m", tokenizer)
    again = BiEncoder.load(tmp_path / "m")
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
