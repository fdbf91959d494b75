"""``kgdistill compare``: per-query ranks saved by every evaluation, paired bootstrap intervals, refusals."""
import json

import numpy as np
import pytest

from conftest import assert_user_error, one_line
from kgdistill.cli import main
from kgdistill.errors import KGDistillError
from kgdistill.evaluation.compare import compare
from kgdistill.evaluation.metrics import rank_metrics
from kgdistill.evaluation.ranking import EvaluationResult


def _save(folder, forward, backward, split="valid", **metadata):
    """An evaluation folder as the evaluator writes it, from hand-made ranks."""
    forward, backward = np.asarray(forward, float), np.asarray(backward, float)
    both = np.concatenate([forward, backward])
    metrics = {"split": split, "num_triples": len(forward), "num_entities": 50, "tie_policy": "realistic",
               "filter": "train+valid+test", "dataset_fingerprint": "f00d", **metadata,
               "no_rerank": {"forward": rank_metrics(forward), "backward": rank_metrics(backward)}}
    EvaluationResult(metrics, ranks={"no_rerank": both}).save(folder)
    return folder


def test_point_estimates_are_the_evaluations_metrics(tmp_path):
    rng = np.random.default_rng(0)
    fa, ba, fb, bb = (rng.integers(1, 40, 300) for _ in range(4))
    result = compare(_save(tmp_path / "a", fa, ba), _save(tmp_path / "b", fb, bb), resamples=500)
    for key in ("mrr", "hits@1", "hits@3", "hits@10"):
        a = (rank_metrics(fa)[key] + rank_metrics(ba)[key]) / 2  # the 'both' figure of metrics.json
        b = (rank_metrics(fb)[key] + rank_metrics(bb)[key]) / 2
        m = result.metrics[key]
        assert m["a"] == pytest.approx(a) and m["b"] == pytest.approx(b)
        assert m["difference"] == pytest.approx(a - b)
        assert m["low"] <= m["difference"] <= m["high"]


def test_identical_and_uniformly_better_models(tmp_path):
    same = _save(tmp_path / "a", [1, 2, 5, 9], [3, 1, 1, 7])
    result = compare(same, _save(tmp_path / "b", [1, 2, 5, 9], [3, 1, 1, 7]), resamples=200)
    assert result.metrics["mrr"]["low"] == result.metrics["mrr"]["high"] == 0
    assert result.metrics["mrr"]["share_a_ahead"] == 0
    assert "within what the split's sampling allows" in result.verdict()
    # every query ranked 1 against 2: a is ahead by 0.5 MRR on every resample
    better = compare(_save(tmp_path / "c", [1] * 6, [1] * 6), _save(tmp_path / "d", [2] * 6, [2] * 6), resamples=200)
    assert better.metrics["mrr"]["low"] == pytest.approx(0.5) == better.metrics["mrr"]["high"]
    assert better.metrics["mrr"]["share_a_ahead"] == 1
    assert "a is ahead" in better.verdict()
    assert "b is ahead" in compare(tmp_path / "d", tmp_path / "c", resamples=50).verdict()


def test_interval_width_matches_the_standard_error(tmp_path):
    """The bootstrap's spread of the mean paired difference is its standard error, sd / sqrt(n), within sampling."""
    rng = np.random.default_rng(1)
    n = 400
    fa, ba = rng.integers(1, 30, n), rng.integers(1, 30, n)
    fb, bb = rng.integers(1, 30, n), rng.integers(1, 30, n)
    result = compare(_save(tmp_path / "a", fa, ba), _save(tmp_path / "b", fb, bb), resamples=4000, seed=3)
    per_triple = (1 / fa + 1 / ba) / 2 - (1 / fb + 1 / bb) / 2
    se = per_triple.std(ddof=1) / np.sqrt(n)
    m = result.metrics["mrr"]
    assert (m["high"] - m["low"]) / (2 * 1.96) == pytest.approx(se, rel=0.1)
    # the seed makes it reproducible
    again = compare(tmp_path / "a", tmp_path / "b", resamples=4000, seed=3)
    assert again.metrics == result.metrics
    assert compare(tmp_path / "a", tmp_path / "b", resamples=4000, seed=4).metrics["mrr"]["low"] != m["low"]


@pytest.mark.parametrize("change, expected", [
    (lambda a, b: _save(b, [1, 2], [1, 2], split="test"), "evaluated with split 'test'"),
    (lambda a, b: _save(b, [1, 2], [1, 2], tie_policy="optimistic"), "evaluated with tie_policy"),
    (lambda a, b: (b / "ranks.npz").unlink(), "ranks.npz: missing"),
    (lambda a, b: (b / "ranks.npz").write_bytes(b"not a zip"), "not a readable ranks file"),
    (lambda a, b: (b / "metrics.json").unlink(), "no metrics.json here"),
    (lambda a, b: (b / "metrics.json").write_text("{"), "metrics.json: not valid JSON"),
    (lambda a, b: (b / "metrics.json").write_text(json.dumps({"split": "valid", "num_triples": 0})),
     "num_triples is 0, not a positive count"),
    (lambda a, b: EvaluationResult(json.loads((a / "metrics.json").read_text()),
                                   ranks={"no_rerank": np.ones(6)}).save(b), "6 ranks, but metrics.json counts 2"),
    (lambda a, b: EvaluationResult(json.loads((a / "metrics.json").read_text()),
                                   ranks={"rerank": np.ones(4)}).save(b), "no 'no_rerank' ranks (has: rerank)"),
])
def test_refusals_name_the_file_or_field(change, expected, tmp_path):
    a, b = _save(tmp_path / "a", [1, 2], [1, 2]), _save(tmp_path / "b", [1, 3], [2, 2])
    change(a, b)
    with pytest.raises(KGDistillError) as info:
        compare(a, b, resamples=10)
    assert expected in one_line(info.value)


def test_bad_settings_are_refused(tmp_path):
    a = _save(tmp_path / "a", [1, 2], [1, 2])
    with pytest.raises(KGDistillError, match="confidence"):
        compare(a, a, confidence=1.0)
    with pytest.raises(KGDistillError, match="resamples"):
        compare(a, a, resamples=0)


def test_evaluate_saves_ranks_and_compare_runs_from_the_command_line(run_dir, tmp_path, cache_dir, capsys):
    for name, split in (("valid", "valid"), ("test", "test")):
        assert main(["evaluate", "--model", str(run_dir), "--split", split, "--output", str(tmp_path / name)]) == 0
    metrics = json.loads((tmp_path / "valid" / "metrics.json").read_text())
    with np.load(tmp_path / "valid" / "ranks.npz") as saved:
        assert set(saved.files) == {"no_rerank", "rerank"}
        n = metrics["num_triples"]
        for variant in saved.files:  # the saved ranks are the ones the metrics were computed from
            assert rank_metrics(saved[variant][:n]) == pytest.approx(metrics[variant]["forward"])
            assert rank_metrics(saved[variant][n:]) == pytest.approx(metrics[variant]["backward"])
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "valid"), str(tmp_path / "valid"), "--resamples", "100", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["split"] == "valid" and printed["metrics"]["mrr"]["difference"] == 0
    assert main(["compare", str(tmp_path / "valid"), str(tmp_path / "valid"), "--variant", "rerank"]) == 0
    assert "within what the split's sampling allows" in capsys.readouterr().out
    assert_user_error(main(["compare", str(tmp_path / "valid"), str(tmp_path / "test")]), capsys.readouterr().err,
                      ["evaluated with split 'test'"])
