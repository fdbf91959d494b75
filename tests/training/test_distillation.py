"""The distillation objective (``kgdistill.training.distillation``): a student identical to its teacher gives the
teacher's score matrix column for column (self-negatives, pre-batch, clean input), the frozen teacher gets no
gradient while every student weight learns, and ablations are presets of the term list."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch


def _objective(config, teacher, student, mask_rate=0.0):
    from kgdistill.api import DataContext
    from kgdistill.training.distillation import DistillationObjective
    from kgdistill.losses.contrastive import InfoNCELoss

    data = DataContext(config, teacher_tokenizer(config))
    loss = InfoNCELoss(student, config.loss, data.known_train, config.train.batch_size)
    return DistillationObjective(student, teacher, loss, config.distill, mask_rate, 4), data


def teacher_tokenizer(config):
    from kgdistill.models.plm import load_tokenizer, resolve_plm

    return load_tokenizer(resolve_plm(config.model.plm))


def test_student_and_teacher_score_columns_align_with_self_negatives_and_pre_batch(tiny_config, tmp_path):
    """A student that is an exact copy of its teacher must produce the very same score matrix, column for column,
    in-batch, pre-batch and self-negative blocks included, over several steps (the queues fill)."""
    from kgdistill.api import load_model, train

    config = tiny_config(loss__pre_batch=1, loss__self_negative=True, distill__alpha=0.5, distill__beta=0.0)
    train(config, tmp_path / "t", evaluate_after=False, progress=False)
    teacher, _, _ = load_model(tmp_path / "t")
    student = copy.deepcopy(teacher)
    objective, data = _objective(config, teacher, student)
    objective.eval()
    examples = data.train_set()
    for step in range(3):
        batch = examples.batch(np.arange(step * 8, step * 8 + 8), with_heads=True)
        _, logs = objective(batch)
        assert logs["l_score"] < 1e-10, (step, logs)
    assert objective.loss.queue.entities.ge(0).all()


def test_clean_student_input_scores_clean_text_on_both_sides(tiny_config, tmp_path):
    """With student_input=clean and a student identical to the teacher, L_SCORE is zero even at a high mask rate:
    both score the same clean text (the old code compared the student's clean scores with masked teacher scores)."""
    from kgdistill.api import load_model, train

    config = tiny_config(distill__student_input="clean", distill__mgfd="pooled")
    train(config, tmp_path / "t", evaluate_after=False, progress=False)
    teacher, _, _ = load_model(tmp_path / "t")
    objective, data = _objective(config, teacher, copy.deepcopy(teacher), mask_rate=0.5)
    objective.eval()
    _, logs = objective(data.train_set().batch(np.arange(8), with_heads=True))
    assert logs["l_score"] < 1e-10 and logs["l_mgfd"] < 1e-10


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


@pytest.mark.parametrize("ablation, rate, terms", [
    ("none", 0.2, [("ce", 0.8), ("score", 0.1), ("mgfd", 0.1)]),
    ("no-mgfd", 0.0, [("ce", 0.8), ("score", 0.1)]),  # the CE weight stays 0.8: everything else equal
    ("fixed-mask", 0.3, [("ce", 0.8), ("score", 0.1), ("mgfd", 0.1)]),
    ("logit-only", 0.0, [("ce", 0.8), ("logit-score", 0.1)]),
    ("direct", 0.0, [("ce", 1.0)]),
])
def test_ablations_are_presets_of_the_term_list(tiny_config, ablation, rate, terms):
    from kgdistill.training.distillation import needs_teacher, stage_terms

    config = tiny_config(distill__alpha=0.1, distill__beta=0.1, distill__ablation=ablation,
                         distill__fixed_mask_rate=0.3)
    got_rate, got_terms = stage_terms(config.distill, 0.2)
    assert got_rate == rate and [(n, pytest.approx(w)) for n, w in got_terms] == terms
    assert needs_teacher(got_terms) == (ablation != "direct")


def test_a_query_only_student_takes_its_own_embedding_weight(tiny_config):
    """distill.query_embedding_weight is gamma for a query-only student only; unset, embedding_weight serves both."""
    from kgdistill.pmd.plan import Stage, stage_run_config
    from kgdistill.training.distillation import stage_terms

    config = tiny_config(distill__embedding_weight=1.0, distill__query_embedding_weight=4.0)
    assert dict(stage_terms(config.distill, 0.0)[1])["embedding"] == 1.0
    serving = stage_run_config(config, Stage("03-serving-query-2L", 2, 0.0, 5, None, "query"), teacher="T")
    assert dict(stage_terms(serving.distill, 0.0)[1]) == pytest.approx({"ce": 0.8, "score": 0.1, "embedding": 4.0})
    serving.distill.query_embedding_weight = None
    assert dict(stage_terms(serving.distill, 0.0)[1])["embedding"] == 1.0
    serving.distill.query_embedding_weight = 0.0  # off for the query-only student alone
    assert "embedding" not in dict(stage_terms(serving.distill, 0.0)[1])


def test_a_query_only_student_takes_its_own_transfer_queries(tiny_config):
    """distill.query_transfer_queries is the query-only student's transfer set alone; unset, transfer_queries serves
    both sides; either way the transfer term takes that side's gamma."""
    import dataclasses

    from kgdistill.training.distillation import stage_terms

    config = tiny_config(distill__embedding_weight=1.0, distill__query_embedding_weight=4.0,
                         distill__query_transfer_queries=16)
    query = dataclasses.replace(config.distill, student_side="query")
    assert config.distill.embedding_terms() == (1.0, 0) and query.embedding_terms() == (4.0, 16)
    assert "transfer" not in dict(stage_terms(config.distill, 0.0)[1])
    assert dict(stage_terms(query, 0.0)[1])["transfer"] == 4.0
    both = dataclasses.replace(config.distill, transfer_queries=8, query_transfer_queries=None)
    assert both.embedding_terms() == (1.0, 8)
    assert dataclasses.replace(both, student_side="query").embedding_terms() == (4.0, 8)


def test_quick_students_weigh_the_embedding_term_by_the_valid_decisions():
    """`quick`'s one-jump grade and its query-only student both train at EMB weight 4 (BENCHMARKS.md 7p, 7r); the
    ladder's grades, never measured at 4, keep 1 while its query-only student takes 4. Only the query-only student
    learns from the transfer set (7t): the symmetric students were not measured with one."""
    from kgdistill.config import build_config
    from kgdistill.pmd.plan import plan, stage_run_config
    from kgdistill.training.distillation import stage_terms

    for preset, symmetric in (("quick", 4.0), ("quick-ladder", 1.0)):
        config = build_config(preset, overrides={"distill": {"budget": 180, "serving_grade": True}})
        terms = {s.kind: dict(stage_terms(stage_run_config(config, s, teacher="T").distill, s.mask_rate)[1])
                 for s in plan(config, 6) if s.kind in ("pmd", "query")}
        assert {kind: t["embedding"] for kind, t in terms.items()} == {"pmd": symmetric, "query": 4.0}, preset
        assert "transfer" not in terms["pmd"] and terms["query"]["transfer"] == 4.0, preset
        query = stage_run_config(config, next(s for s in plan(config, 6) if s.kind == "query"), teacher="T")
        assert query.distill.embedding_terms() == (4.0, 128)


def test_logit_only_scores_kl_on_logits_whatever_the_config_says(tiny_config, tmp_path):
    from kgdistill.api import load_model, train

    config = tiny_config(distill__ablation="logit-only", distill__score_loss="mse", distill__score_on="cosine")
    train(config, tmp_path / "t", evaluate_after=False, progress=False)
    teacher, _, _ = load_model(tmp_path / "t")
    objective, _ = _objective(config, teacher, copy.deepcopy(teacher), mask_rate=0.0)
    names = [term.name for term in objective.terms]
    score = objective.terms[names.index("logit-score")]
    assert (score.on, score.loss.kind) == ("logits", "kl")


def test_every_accepted_ablation_has_a_preset():
    from kgdistill.config import _CHOICES
    from kgdistill.training.distillation import ABLATIONS

    assert set(ABLATIONS) == _CHOICES["distill.ablation"]


def test_transfer_queries_are_a_pure_function_of_seed_and_step(tiny_config):
    """A resumed run draws the same transfer queries at a step; other steps and seeds draw others; every entity and
    every relation, inverse ones included, can be drawn, and each query is encoded in its evaluation text."""
    from kgdistill.api import DataContext
    from kgdistill.data.batching import TransferQueries, pad_store_rows, tokenize

    config = tiny_config()
    data = DataContext(config, teacher_tokenizer(config))
    transfer = TransferQueries(data.texts, data.tokenized, 16, seed=3)
    heads, relations = transfer.draw(5)
    assert len(heads) == len(relations) == 16
    again = TransferQueries(data.texts, data.tokenized, 16, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(again.draw(5), (heads, relations)))
    assert not np.array_equal(transfer.draw(6)[0], heads)
    assert not np.array_equal(TransferQueries(data.texts, data.tokenized, 16, seed=4).draw(5)[0], heads)
    other_rank = TransferQueries(data.texts, data.tokenized, 16, seed=3, rank=1)  # torchrun: each rank its own
    assert not np.array_equal(other_rank.draw(5)[0], heads)
    assert all(np.array_equal(a, b) for a, b in zip(TransferQueries(data.texts, data.tokenized, 16, 3, rank=0).draw(5),
                                                    (heads, relations)))
    kg = data.kg
    drawn = [transfer.draw(step) for step in range(200)]
    assert {int(h) for h, _ in drawn for h in h} == set(range(kg.num_entities))
    assert {int(r) for _, r in drawn for r in r} == set(range(2 * kg.num_relations))
    store = tokenize(data.tokenized.tokenizer, [data.texts.entity_text(int(h)) for h in heads],
                     [data.texts.relation_text(int(r)) for r in relations], data.tokenized.max_tokens)
    expected = pad_store_rows(store, np.arange(16), data.tokenized)
    assert torch.equal(transfer.batch(5).input_ids, expected.input_ids)


def test_the_transfer_term_pulls_the_students_queries_onto_the_teachers_without_answers(tiny_config, tmp_path):
    """With distill.transfer_queries, L_TRANSFER (weighted as L_EMB) is zero for a copy of the teacher, positive for
    a shallower student whose query encoder it trains, and never touches the frozen teacher or the answers."""
    from kgdistill.api import DataContext, build_model, load_model, train
    from kgdistill.data.batching import TransferQueries
    from kgdistill.losses.contrastive import InfoNCELoss
    from kgdistill.training.distillation import DistillationObjective, stage_terms

    config = tiny_config(distill__embedding_weight=2.0, distill__transfer_queries=6, distill__student_side="query",
                         train__max_steps=2)
    assert dict(stage_terms(config.distill, 0.0)[1]) == pytest.approx(
        {"ce": 0.8, "score": 0.1, "embedding": 2.0, "transfer": 2.0})
    train(config, tmp_path / "t", evaluate_after=False, progress=False)
    teacher, _, _ = load_model(tmp_path / "t")
    with pytest.raises(ValueError, match="transfer"):  # built without its queries, the term cannot run
        _objective(config, teacher, copy.deepcopy(teacher))
    data = DataContext(config, teacher_tokenizer(config))
    transfer = TransferQueries(data.texts, data.tokenized, 6, config.seed)
    copied = copy.deepcopy(teacher)
    same = DistillationObjective(copied, teacher, InfoNCELoss(copied, config.loss, data.known_train, 8),
                                 config.distill, 0.0, 4, transfer=transfer).eval()
    _, logs = same(data.train_set().batch(np.arange(8)), step=3)
    assert logs["l_transfer"] < 1e-6
    config.model.num_layers = 2
    student, tokenizer = build_model(config, teacher=teacher)
    loss = InfoNCELoss(student, config.loss, data.known_train, 8)
    objective = DistillationObjective(student, teacher, loss, config.distill, 0.0, tokenizer.mask_token_id,
                                      transfer=transfer).train()
    f = objective.features(data.train_set().batch(np.arange(8)), step=3)
    assert f.student_transfer.shape == (6, student.hidden_size)
    term = next(t for t in objective.terms if t.name == "transfer")
    value = term(f, objective)
    assert value > 0
    value.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
