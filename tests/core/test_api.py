"""The public API: what ``kgdistill`` exports (cheaply, visible to tools), and one result protocol for every job."""
from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys

import kgdistill
from kgdistill.results import Result


def test_import_is_cheap_and_every_export_resolves_with_a_docstring():
    code = "import sys, kgdistill; print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    assert set(kgdistill.__all__) == {"__version__", *kgdistill._EXPORTS}
    assert set(kgdistill.__all__) <= set(dir(kgdistill))
    for name in kgdistill._EXPORTS:
        value = getattr(kgdistill, name)
        assert inspect.getdoc(value), name
        if inspect.isclass(value):  # every public method of a class too
            for attr, member in vars(value).items():
                if not attr.startswith("_") and (callable(member) or isinstance(member, property)):
                    assert inspect.getdoc(getattr(value, attr)), f"{name}.{attr}"
    documented = set(re.findall(r"``([A-Za-z_]\w*)``", kgdistill.__doc__))  # the names the package docstring offers
    assert documented and documented <= set(kgdistill.__all__), sorted(documented - set(kgdistill.__all__))


def test_every_job_result_is_a_result():
    for name in ("TrainOutcome", "EvaluationResult", "Report", "ExportResult"):
        cls = getattr(kgdistill, name)
        assert issubclass(cls, Result), name
        for method in ("to_dict", "table", "save"):
            assert getattr(cls, method) is not getattr(Result, method), (name, method)  # implemented, not abstract


def test_train_outcome_round_trips_through_to_dict_and_save(tiny_config, tmp_path):
    outcome = kgdistill.train(tiny_config(train__max_steps=2), tmp_path / "run", progress=False)
    data = json.loads(outcome.to_json())
    assert data == outcome.to_dict() and data["run_dir"] == str(tmp_path / "run")
    assert data["train"] == json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert data["metrics"] == json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert outcome.train.steps == 2
    assert outcome.table().startswith("trained 2 steps in ") and "no_rerank both" in outcome.table()
    copy = outcome.save(tmp_path / "copy")
    for name in ("train_summary.json", "metrics.json"):
        assert (copy / name).read_text() == (tmp_path / "run" / name).read_text(), name
    result = kgdistill.evaluate(tmp_path / "run", output=tmp_path / "ev", progress=False)
    assert result.to_dict()["no_rerank"] == data["metrics"]["no_rerank"]
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text()) == result.to_dict()
