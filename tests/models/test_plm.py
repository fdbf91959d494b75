"""Layer maps, student construction, frozen teacher, save/load, resume determinism, end-to-end pipeline."""
import json

import pytest
import torch
from safetensors.torch import load_file

from kgdistill.errors import ConfigError
from kgdistill.models.plm import build_student_encoder, choose_layers, even_layer_map, load_encoder


def test_paper_layer_maps_and_even_spread():
    assert even_layer_map(12, 9) == [0, 2, 3, 5, 6, 7, 9, 10, 11]
    assert even_layer_map(12, 6) == [1, 3, 5, 7, 9, 11]
    assert even_layer_map(12, 3) == [2, 6, 10]
    assert even_layer_map(6, 3) == [1, 3, 5]
    assert even_layer_map(6, 2) == [1, 4]
    assert even_layer_map(6, 6) == list(range(6))
    with pytest.raises(ConfigError):
        even_layer_map(3, 6)


def test_layer_choices_top_bottom_and_ends():
    assert choose_layers(6, 2, "top") == [4, 5]
    assert choose_layers(6, 2, "bottom") == [0, 1]
    assert choose_layers(6, 2, "ends") == [0, 5]  # where the ladder 6 -> 5 -> 3 -> 2 of even choices arrives
    assert choose_layers(6, 3, "ends") == [0, 2, 5]
    assert choose_layers(12, 4, "ends") == [0, 4, 7, 11]
    assert choose_layers(6, 1, "ends") == [5]


def test_student_copies_the_mapped_layers(tiny_plm):
    source = load_encoder(tiny_plm)
    student = build_student_encoder(source, [1, 3])
    assert student.config.num_hidden_layers == 2
    src, dst = source.state_dict(), student.state_dict()
    for new, old in enumerate([1, 3]):
        for key in [k for k in src if k.startswith(f"encoder.layer.{old}.")]:
            assert torch.equal(dst[key.replace(f"layer.{old}.", f"layer.{new}.")], src[key])
    assert torch.equal(dst["embeddings.word_embeddings.weight"], src["embeddings.word_embeddings.weight"])
    with pytest.raises(ConfigError, match="do not exist"):
        build_student_encoder(source, [0, 9])


def test_teacher_gets_no_gradient(tiny_config, tmp_path):
    from kgdistill.api import DataContext, build_model, train
    from kgdistill.training.distillation import DistillationObjective
    from kgdistill.losses.contrastive import InfoNCELoss

    config = tiny_config(train__max_steps=2)
    train(config, tmp_path / "t", evaluate_after=False, progress=False)
    from kgdistill.api import load_model

    teacher, _, _ = load_model(tmp_path / "t")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    config.model.num_layers = 2
    student, tokenizer = build_model(config, teacher=teacher)
    data = DataContext(config, tokenizer)
    loss = InfoNCELoss(student, config.loss, data.known_train, 8)
    objective = DistillationObjective(student, teacher, loss, config.distill, 0.2, tokenizer.mask_token_id).train()
    out, logs = objective(data.train_set().batch(torch.arange(8).numpy()))
    out.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training
    trainable = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable), \
        [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]  # every student weight learns
    assert logs["l_mgfd"] > 0 and logs["l_score"] > 0  # a 2-layer student does not score like its 4-layer teacher
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])


def test_resume_gives_identical_weights(tiny_config, tmp_path, monkeypatch):
    """Interrupt after a checkpoint, resume, and compare with an uninterrupted run bit for bit."""
    from kgdistill.api import train
    from kgdistill.training import trainer as trainer_module

    config = tiny_config(train__max_steps=6, train__checkpoint_every=2)
    train(config, tmp_path / "full", evaluate_after=False, progress=False)

    original = trainer_module.Trainer.save
    calls = {"n": 0}

    def crash_after_second_checkpoint(self, name=trainer_module.LAST):
        original(self, name)
        if name == trainer_module.LAST:
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "save", crash_after_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "cut", evaluate_after=False, progress=False)
    monkeypatch.setattr(trainer_module.Trainer, "save", original)
    assert json.loads((tmp_path / "cut/checkpoint-last/trainer_state/state.json").read_text())["progress"]["step"] == 4
    train(config, tmp_path / "cut", resume=True, evaluate_after=False, progress=False)
    a = load_file(str(tmp_path / "full/checkpoint-last/model.safetensors"))
    b = load_file(str(tmp_path / "cut/checkpoint-last/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_saved_model_reloads_identically(tiny_config, tmp_path):
    from kgdistill.api import build_model
    from kgdistill.models.biencoder import BiEncoder

    model, tokenizer = build_model(tiny_config())
    model.save(tmp_path / "m", tokenizer)
    again = BiEncoder.load(tmp_path / "m")
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_pipeline_end_to_end_writes_report(tiny_config, tmp_path):
    from kgdistill.jobs.pipeline import pipeline

    config = tiny_config(train__max_steps=3, distill__stage_steps=2)
    report = pipeline(config, tmp_path / "p", progress=False)
    assert [r["layers"] for r in report.rows] == [4, 4, 3, 2, 1]
    for name in ("report.json", "report.md", "report.png"):
        assert (tmp_path / "p" / name).stat().st_size > 0
    assert (tmp_path / "p" / "report.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "p/report.json").read_text())
    rows = saved["rows"]
    assert report.to_dict() == saved and saved["teacher"]["status"].startswith("unknown") and report.table() == (tmp_path / "p/report.md").read_text().rstrip("\n")
    assert rows[1]["mask_rate"] == 0.2 and rows[-1]["mask_rate"] == 0.0
    assert rows[0]["parameters"] > rows[-1]["parameters"]
    # a second call finds every stage finished and redoes none
    mtime = (tmp_path / "p/02-grade1-3L/checkpoint-last/model.safetensors").stat().st_mtime
    pipeline(config, tmp_path / "p", progress=False)
    assert (tmp_path / "p/02-grade1-3L/checkpoint-last/model.safetensors").stat().st_mtime == mtime


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
