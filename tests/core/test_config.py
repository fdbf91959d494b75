"""The config (``kgdistill.config``): YAML and JSON syntax errors name the file, line and problem, and ``key=value``
overrides read numbers in scientific notation as numbers."""
from __future__ import annotations

import pytest

from conftest import one_line
from kgdistill.config import build_config, load_config_file, parse_overrides
from kgdistill.errors import ConfigError


@pytest.mark.parametrize("name, text, where, problem", [
    ("flow.yaml", "train: [1, 2\ndata: {\n", ":2:5:", "expected ',' or ']'"),
    ("indent.yaml", "train:\n  lr: 1\n lr2: 3\n", ":3:2:", "expected <block end>"),
    ("colon.yaml", "train:\n  lr: a: b\n", ":2:8:", "mapping values are not allowed here"),
    ("comma.json", '{"train": {"lr": 0.1,}}', ":1:22:", "Expecting property name"),
])
def test_config_syntax_errors_name_file_line_and_problem(name, text, where, problem, tmp_path):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config_file(path)
    message = one_line(raised.value)
    assert message.startswith(f"{path}{where}") and problem in message


def test_scientific_notation_override_is_a_number():
    """'train.lr=1e-4' (the example in the CLI help) is a valid override."""
    config = build_config(None, overrides=parse_overrides(["train.lr=1e-4"]))
    assert config.train.lr == pytest.approx(1e-4)


def test_a_relative_dataset_folder_is_saved_absolute(tmp_path, monkeypatch):
    """A run's config.yaml must find its dataset from any working directory (evaluate, distill and predict on its
    models run elsewhere); a bundled name and an absent path are left as written."""
    from pathlib import Path

    from kgdistill.config import build_config

    (tmp_path / "data" / "kg").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    config = build_config("quick", overrides={"data": {"dataset": "data/kg"}})
    assert config.data.dataset == str(tmp_path.resolve() / "data" / "kg") and Path(config.data.dataset).is_absolute()
    assert "data.dataset" in config.explicit
    assert build_config("quick").data.dataset == "wn18rr"
    assert build_config("quick", overrides={"data": {"dataset": "nowhere/kg"}}).data.dataset == "nowhere/kg"
