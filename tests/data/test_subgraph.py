"""Issue 18: the evidence behind "% of teacher": a reproducible small KG, valid-MRR curves, comparable report rows,
stages that reproduce alone, and the review fixes (fast dropout modes, the teacher's temperature)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_subgraph_is_deterministic_and_holds_out_without_leaks(tmp_path):
    from kgdistill.cli.app import main
    from kgdistill.data.loading import load_dataset

    args = ["subgraph", "wn18rr", "--entities", "600", "--seed", "3", "--max-expand", "4", "--heldout", "80"]
    assert main([*args, "--output", str(tmp_path / "a")]) == 0
    assert main([*args, "--output", str(tmp_path / "b")]) == 0
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    other_seed = [*args[:5], "4", *args[6:]]
    assert main([*other_seed, "--output", str(tmp_path / "c")]) == 0
    assert _files(tmp_path / "c")["entities.tsv"] != _files(tmp_path / "a")["entities.tsv"]

    sub, full = load_dataset(str(tmp_path / "a")), load_dataset("wn18rr")
    assert sub.num_entities == 600 and len(sub.splits["valid"]) == len(sub.splits["test"]) == 80
    original = {split: {(full.entity_ids[h], full.relation_ids[r], full.entity_ids[t]) for h, r, t in full.splits[split]}
                for split in ("train", "valid", "test")}
    train_pairs = {frozenset((h, t)) for h, _, t in sub.splits["train"]}
    degree = np.bincount(sub.splits["train"][:, [0, 2]].ravel(), minlength=sub.num_entities)
    for split in ("valid", "test"):
        for h, r, t in sub.splits[split]:
            triple = (sub.entity_ids[h], sub.relation_ids[r], sub.entity_ids[t])
            if triple in original[split]:
                continue  # an original held-out triple, kept as WN18RR has it
            assert triple in original["train"]  # moved from train: no reverse or parallel edge left behind
            assert frozenset((h, t)) not in train_pairs and degree[h] > 0 and degree[t] > 0
    kept = {split: {(sub.entity_ids[h], sub.relation_ids[r], sub.entity_ids[t]) for h, r, t in sub.splits[split]}
            for split in ("train", "valid", "test")}
    for split in ("train", "valid", "test"):  # every original triple between the sampled entities is kept ...
        inside = _between(full, set(sub.entity_ids), split)
        assert inside <= kept["train"] | kept["valid"] | kept["test"]
        if split != "train":  # ... and an original held-out triple stays held out
            assert inside <= kept[split]
    provenance = json.loads((tmp_path / "a" / "PROVENANCE.json").read_text())
    assert provenance["seed"] == 3 and provenance["source_fingerprint"] == full.fingerprint


def _between(kg, entities: set[str], split: str) -> set[tuple[str, str, str]]:
    return {(kg.entity_ids[h], kg.relation_ids[r], kg.entity_ids[t]) for h, r, t in kg.splits[split]
            if kg.entity_ids[h] in entities and kg.entity_ids[t] in entities}


def test_subgraph_refuses_bad_sizes(tmp_path, capsys):
    from kgdistill.cli.app import main

    assert main(["subgraph", "wn18rr", "--entities", "99999999", "--output", str(tmp_path / "x")]) == 2
    assert "subgraph size" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_valid_ranking_logs_mrr_and_best_checkpoint_follows_it(tiny_config, tmp_path):
    from kgdistill.jobs.train import train
    from kgdistill.training.checkpoint import BEST

    outcome = train(tiny_config(train__valid_ranking=True, train__validate_every=2), tmp_path / "t", progress=False,
                    evaluate_after=False)
    records = [json.loads(line) for line in (tmp_path / "t/train_log.jsonl").read_text().splitlines()]
    curve = [r for r in records if "valid_mrr" in r]
    assert [r["step"] for r in curve] == [2, 4, 6]
    assert all(0 < r["valid_mrr"] <= 1 and r["valid_hits@1"] <= r["valid_hits@10"] for r in curve)
    assert outcome.train.best_valid == max(r["valid_mrr"] for r in curve)
    assert (tmp_path / "t" / BEST).exists()


def test_teacher_status_reads_the_valid_curve(tmp_path):
    from kgdistill.pmd.report import teacher_status

    def write(values):
        lines = [json.dumps({"step": 10 * (i + 1), "valid_mrr": v}) for i, v in enumerate(values)]
        (tmp_path / "train_log.jsonl").write_text("\n".join(lines) + "\n")

    write([0.1, 0.3, 0.40, 0.401, 0.402, 0.403, 0.404, 0.404])  # steps 10..80; last quarter: steps >= 60
    assert teacher_status(tmp_path)["status"] == "converged"
    write([0.1, 0.2, 0.3, 0.35, 0.38, 0.40, 0.42, 0.44])
    status = teacher_status(tmp_path)
    assert status["status"] == "not converged" and status["valid_mrr_range_last_quarter"] == pytest.approx(0.04)
    (tmp_path / "train_log.jsonl").write_text(json.dumps({"step": 5, "loss": 1.0}) + "\n")
    assert teacher_status(tmp_path)["status"].startswith("unknown")


def test_report_refuses_rows_evaluated_differently(tiny_config, tmp_path):
    from kgdistill.jobs.pipeline import pipeline
    from kgdistill.pmd.report import build_report
    from kgdistill.errors import KGDistillError
    from kgdistill.config import build_config
    from kgdistill.jobs.evaluate import evaluate

    config = tiny_config(train__max_steps=2, distill__stage_steps=2, distill__pre_distill=False,
                         distill__grades=[{"layers": 2, "mask_rate": 0.0}])
    report = pipeline(config, tmp_path / "p", progress=False)
    assert report.teacher["run_dir"].endswith("00-teacher") and "% of teacher: of" in report.markdown()
    stages = [("00-teacher", tmp_path / "p/00-teacher", "teacher"), ("02-grade1-2L", tmp_path / "p/02-grade1-2L")]
    build_report(stages)  # alike: accepted
    evaluate(tmp_path / "p/02-grade1-2L", build_config(None, eval={"split": "valid"}), progress=False)  # the student's metrics.json now on valid
    with pytest.raises(KGDistillError, match="02-grade1-2L.*split 'valid'.*'test'"):
        build_report(stages)


def test_a_stage_run_alone_equals_the_same_stage_in_a_pipeline(tiny_config, tmp_path):
    from kgdistill.cli.app import main
    from kgdistill.jobs.pipeline import pipeline
    from kgdistill.store.saved import load_model

    config = tiny_config(train__max_steps=2, distill__pre_distill=False, model__init_from="teacher",
                         distill__grades=[{"layers": 2, "mask_rate": 0.2, "steps": 3}])
    pipeline(config, tmp_path / "p", progress=False)
    torch.manual_seed(1234)  # whatever ran before, the stage reseeds
    # from the stage's saved config alone, as a user would
    assert main(["distill", "--config", str(tmp_path / "p/02-grade1-2L/config.yaml"), "--output-dir",
                 str(tmp_path / "alone")]) == 0
    in_pipeline, _, _ = load_model(tmp_path / "p/02-grade1-2L")
    alone, _, _ = load_model(tmp_path / "alone")
    for key, value in in_pipeline.state_dict().items():
        assert torch.equal(value, alone.state_dict()[key]), key
    assert json.loads((tmp_path / "alone/metrics.json").read_text())["no_rerank"] == \
        json.loads((tmp_path / "p/02-grade1-2L/metrics.json").read_text())["no_rerank"]


@pytest.mark.parametrize("copy", [True, False])
def test_student_starts_at_the_teachers_temperature(tiny_config, tmp_path, copy):
    from kgdistill.jobs.distill import distill
    from kgdistill.store.saved import load_model
    from kgdistill.jobs.train import train

    teacher_config = tiny_config(train__max_steps=3, loss__init_temperature=0.2, train__lr=5e-2)
    train(teacher_config, tmp_path / "t", evaluate_after=False, progress=False)
    teacher, _, _ = load_model(tmp_path / "t")
    assert float(teacher.log_inv_t.detach()) != pytest.approx(float(torch.log(torch.tensor(5.0))))  # it learned
    config = tiny_config(model__init_from="teacher", distill__copy_temperature=copy, train__lr=1e-12,
                         loss__init_temperature=0.2)
    config.distill.teacher, config.model.num_layers = str(tmp_path / "t"), 2
    config.distill.mask_rate, config.distill.stage_steps = 0.0, 1
    distill(config, tmp_path / "s", progress=False)
    student, _, _ = load_model(tmp_path / "s")
    expected = float(teacher.log_inv_t.detach()) if copy else float(torch.log(torch.tensor(5.0)))
    assert float(student.log_inv_t.detach()) == pytest.approx(expected, abs=1e-6)


def test_fast_dropout_keeps_the_replaced_modules_mode_and_drops_all_at_p_one():
    from kgdistill.models.fast_dropout import FastDropout, fast_dropout, use_fast_dropout
    from transformers import BertConfig, BertModel

    encoder = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, attn_implementation="sdpa")).eval()
    assert use_fast_dropout(encoder)
    swapped = [m for m in encoder.modules() if isinstance(m, FastDropout)]
    assert swapped and not any(m.training for m in swapped)
    x = torch.ones(1000)
    out = fast_dropout(x, 1.0 - 2.0 ** -18)
    assert torch.isfinite(out).all() and not out.any()
