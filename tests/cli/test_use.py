"""The subcommands that use a trained model (``kgdistill.cli.use``): ``predict`` for one query as JSON or a table,
for a file of TSV or JSONL queries and its one-line errors, and ``export`` into a folder."""
from __future__ import annotations

import json

import pytest

from kgdistill.cli import main


def test_cli_predict_single_json_and_table(run_dir, predictor, capsys):
    assert main(["predict", "--model", str(run_dir), "--head", "E0", "--relation", "hypernym", "-k", "3",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == predictor.predict_tails("E0", "hypernym", k=3).to_dict()
    assert main(["predict", "--model", str(run_dir), "--relation", "hypernym", "--tail", "E1", "-k", "2"]) == 0
    table = capsys.readouterr().out
    assert "? --[hypernym]--> (E1:" in table and "rank" in table
    assert main(["predict", "--model", str(run_dir), "--head", '{"name": "dog", "description": "pet"}',
                 "--relation", "hypernym", "--tail", "E1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(
        predictor.score({"name": "dog", "description": "pet"}, "hypernym", "E1"), abs=1e-6)


def test_cli_predict_batch_and_errors(run_dir, tmp_path, capsys):
    tsv = tmp_path / "q.tsv"
    tsv.write_text("E0\thypernym\n# comment\n?\thas part\tE3\n", encoding="utf-8")
    assert main(["predict", "--model", str(run_dir), "--queries", str(tsv), "-k", "2", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["direction"] for x in lines] == ["tail", "head"] and all(len(x["results"]) == 2 for x in lines)
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text('{"head": "E0", "relation": "hypernym"}\n\n{"head": "nobody", "relation": "hypernym"}\n')
    assert main(["predict", "--model", str(run_dir), "--queries", str(jsonl)]) == 2
    assert f"{jsonl}:3: head: unknown entity 'nobody'" in capsys.readouterr().err
    bad = tmp_path / "bad.tsv"
    bad.write_text("E0\n")
    assert main(["predict", "--model", str(run_dir), "--queries", str(bad)]) == 2
    assert f"{bad}:1: expected head<TAB>relation" in capsys.readouterr().err
    assert main(["predict", "--model", str(run_dir), "--head", "E0"]) == 2
    assert "give --relation" in capsys.readouterr().err
    assert main(["predict", "--model", str(run_dir), "--head", "{oops", "--relation", "hypernym"]) == 2
    assert "--head: not valid JSON" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path), "--head", "E0", "--relation", "hypernym"]) == 2
    assert "no model here" in capsys.readouterr().err


def test_cli_export(run_dir, tmp_path, capsys):
    assert main(["export", "--model", str(run_dir), "--format", "hf", "--output", str(tmp_path / "e")]) == 0
    assert "exported (hf)" in capsys.readouterr().out
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    assert main(["export", "--model", str(run_dir), "--output", str(tmp_path / "busy")]) == 2
    assert "not empty" in capsys.readouterr().err
