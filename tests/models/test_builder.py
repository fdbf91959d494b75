"""``build_model`` (``kgdistill.models.builder``): a student initialised from its teacher copies the fine-tuned layers
of its layer map; one initialised from the PLM does not."""
from __future__ import annotations

import torch


def test_student_from_teacher_layers_copies_the_fine_tuned_weights(tiny_config, tmp_path):
    from kgdistill.api import build_model, load_model, train

    train(tiny_config(train__max_steps=2), tmp_path / "t", evaluate_after=False, progress=False)
    teacher, _, _ = load_model(tmp_path / "t")
    config = tiny_config(model__init_from="teacher", model__num_layers=2)
    student, _ = build_model(config, teacher=teacher)
    assert student.info["initialised_from"] == "teacher" and student.info["layer_map"] == [1, 3]
    for encoder in ("hr_encoder", "tail_encoder"):
        src = getattr(teacher, encoder).state_dict()
        dst = getattr(student, encoder).state_dict()
        for new, old in enumerate([1, 3]):
            for key in [k for k in src if k.startswith(f"encoder.layer.{old}.")]:
                assert torch.equal(dst[key.replace(f"layer.{old}.", f"layer.{new}.")], src[key])
    plm_student, _ = build_model(tiny_config(model__num_layers=2), teacher=teacher)
    key = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(plm_student.hr_encoder.state_dict()[key], student.hr_encoder.state_dict()[key])
