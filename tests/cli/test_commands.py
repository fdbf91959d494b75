"""The command line as a user runs it: train, evaluate, distill on the tiny fixtures; run folders and metrics.json."""
import json

import yaml

from conftest import tiny_overrides
from kgdistill.cli import main

COMMON = tiny_overrides(train__max_steps=None, train__lr=None, train__checkpoint_every=None, train__log_every=None,
                        train__device=None, distill__stage_steps=None)  # on the quick preset


def test_train_evaluate_distill(tiny_plm, tiny_kg, tmp_path, cache_dir, capsys, caplog):
    run = tmp_path / "teacher"
    assert main(["train", "--dataset", str(tiny_kg), "--plm", str(tiny_plm), "--output-dir", str(run),
                 "--seed", "7", "train.max_steps=3", "--json", *COMMON]) == 0
    printed = json.loads(capsys.readouterr().out)  # --json prints the result's to_dict(), and nothing else
    assert printed["run_dir"] == str(run) and printed["train"]["steps"] == 3
    for name in ("config.yaml", "run.json", "train_log.jsonl", "metrics.json", "checkpoint-last/model.safetensors",
                 "checkpoint-last/manifest.json", "checkpoint-last/tokenizer", "checkpoint-best/model.json"):
        assert (run / name).exists(), name
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["seed"] == 7 and saved["train"]["max_steps"] == 3
    info = json.loads((run / "run.json").read_text())
    assert info["seed"] == 7 and "torch" in info["versions"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert printed["metrics"] == metrics and printed["train"] == json.loads((run / "train_summary.json").read_text())
    for variant in ("no_rerank", "rerank"):
        for direction in ("forward", "backward", "both"):
            assert set(metrics[variant][direction]) == {"mr", "mrr", "hits@1", "hits@3", "hits@10"}
            assert 0 <= metrics[variant][direction]["mrr"] <= 1
    both = metrics["no_rerank"]["both"]
    assert both["mrr"] == (metrics["no_rerank"]["forward"]["mrr"] + metrics["no_rerank"]["backward"]["mrr"]) / 2

    capsys.readouterr()
    assert main(["evaluate", "--model", str(run), "--json", "--output", str(tmp_path / "ev")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["no_rerank"]["both"] == both  # same model, same protocol, same numbers
    assert (tmp_path / "ev" / "metrics.json").is_file()

    # a second train into the same folder without --resume is refused, and nothing is overwritten
    before = (run / "checkpoint-last" / "model.safetensors").read_bytes()
    assert main(["train", "--dataset", str(tiny_kg), "--plm", str(tiny_plm), "--output-dir", str(run), *COMMON]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "checkpoint-last" / "model.safetensors").read_bytes() == before

    student = tmp_path / "student"
    capsys.readouterr()
    assert main(["distill", "--teacher", str(run), "--layers", "2", "--mask-rate", "0.1", "--output-dir", str(student),
                 "--dataset", str(tiny_kg), "distill.stage_steps=2", "distill.mgfd=pooled", *COMMON]) == 0
    out = capsys.readouterr().out
    assert out.startswith("trained 2 steps in ") and "no_rerank both" in out  # the result's table()
    assert "layers [0, 3] (of 4)" in caplog.text  # quick keeps first and last (ends); logged to stderr, stdout holds the table
    model = json.loads((student / "checkpoint-last" / "model.json").read_text())
    assert model["num_layers"] == 2 and model["info"]["mask_rate"] == 0.1


def test_distill_refuses_a_student_deeper_than_its_teacher(tiny_plm, tiny_kg, tmp_path, cache_dir, capsys):
    run = tmp_path / "t"
    assert main(["train", "--dataset", str(tiny_kg), "--plm", str(tiny_plm), "--output-dir", str(run), "--no-eval",
                 "train.max_steps=1", *COMMON]) == 0
    assert main(["distill", "--teacher", str(run), "--layers", "9", "--output-dir", str(tmp_path / "s"), *COMMON]) == 2
    assert "cannot be deeper" in capsys.readouterr().err
    assert not (tmp_path / "s" / "checkpoint-last").exists()
