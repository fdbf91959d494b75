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


def test_evaluate_scores_at_the_runs_own_precision_unless_one_is_given(run_dir, tmp_path, cache_dir):
    """A saved run is re-scored at the precision it was trained and evaluated at, whatever ``auto`` resolves to on
    this machine; ``train.precision=...`` wins; metrics.json records the precision used, and compare refuses
    evaluations at different precisions (the tiny run is fp32; its copy is relabelled bf16 so that one of the two
    differs from ``auto`` on any CPU)."""
    import shutil

    import yaml

    copy = tmp_path / "bf16-run"
    shutil.copytree(run_dir, copy)
    saved = yaml.safe_load((copy / "config.yaml").read_text(encoding="utf-8"))
    assert saved["train"]["precision"] == "fp32"
    saved["train"]["precision"] = "bf16"
    (copy / "config.yaml").write_text(yaml.safe_dump(saved), encoding="utf-8")
    runs = {"fp32": (run_dir, []), "bf16": (copy, []), "given": (run_dir, ["train.precision=bf16"])}
    recorded = {}
    for name, (model, overrides) in runs.items():
        assert main(["evaluate", "--model", str(model), "--split", "valid", "--output", str(tmp_path / name),
                     *overrides]) == 0
        recorded[name] = json.loads((tmp_path / name / "metrics.json").read_text())["precision"]
    assert recorded == {"fp32": "fp32", "bf16": "bf16", "given": "bf16"}
    with pytest.raises(KGDistillError, match="evaluated with precision 'bf16'"):
        compare(tmp_path / "fp32", tmp_path / "bf16", resamples=10)


def test_precision_is_compared_only_where_both_evaluations_record_it():
    from kgdistill.evaluation.ranking import evaluation_mismatch

    base = {"split": "valid", "num_triples": 5, "dataset_fingerprint": "f00d"}
    assert evaluation_mismatch({**base, "precision": "fp32"}, {**base, "precision": "bf16"}) == "precision"
    assert evaluation_mismatch({**base, "precision": "fp32"}, base) is None  # written before precision was recorded
    assert evaluation_mismatch(base, {**base, "split": "test", "precision": "bf16"}) == "split"
    assert evaluation_mismatch({**base, "precision": "bf16"}, {**base, "precision": "bf16"}) is None


def test_several_seeds_a_side_average_their_runs_and_widen_the_interval(tmp_path):
    """Per side, the point estimate is the mean over its runs; drawing the runs as well as the triples puts the seeds'
    spread into the interval: runs of MRR 1 and 1/3 against 1/2 span -1/6 to +1/2, however many triples agree."""
    best = _save(tmp_path / "a1", [1] * 8, [1] * 8)
    worst = _save(tmp_path / "a2", [3] * 8, [3] * 8)
    control = _save(tmp_path / "b1", [2] * 8, [2] * 8)
    result = compare([best, worst], [control], resamples=2000)
    m = result.metrics["mrr"]
    assert result.over_seeds and result.a == [str(best), str(worst)]
    assert m["a_runs"] == pytest.approx([1, 1 / 3]) and m["b_runs"] == pytest.approx([0.5])
    assert m["a"] == pytest.approx(2 / 3) and m["difference"] == pytest.approx(2 / 3 - 0.5)
    assert m["low"] == pytest.approx(1 / 3 - 0.5) and m["high"] == pytest.approx(0.5)
    assert "seeds' spread of a" in result.verdict() and "MRR of each run of a: 100.00 / 33.33" in result.table()
    # the same two models compared one run each: nothing but the triples is drawn, and every query agrees
    single = compare(best, control, resamples=200).metrics["mrr"]
    assert single["low"] == pytest.approx(0.5) == single["high"]


def test_copies_of_one_run_give_the_single_run_interval(tmp_path):
    rng = np.random.default_rng(5)
    a = _save(tmp_path / "a", rng.integers(1, 30, 200), rng.integers(1, 30, 200))
    b = _save(tmp_path / "b", rng.integers(1, 30, 200), rng.integers(1, 30, 200))
    one = compare(a, b, resamples=1000, seed=2).metrics
    copies = compare([a, a, a], [b, b], resamples=1000, seed=2).metrics
    for key in one:
        for field in ("a", "b", "difference", "low", "high", "share_a_ahead"):
            assert copies[key][field] == pytest.approx(one[key][field])


def test_every_run_of_a_side_must_be_evaluated_alike(tmp_path):
    a1, b1 = _save(tmp_path / "a1", [1, 2], [1, 2]), _save(tmp_path / "b1", [1, 3], [2, 2])
    a2 = _save(tmp_path / "a2", [1, 2], [1, 2], split="test")
    with pytest.raises(KGDistillError) as info:
        compare([a1, a2], [b1], resamples=10)
    assert one_line(info.value).startswith(f"{a2}: evaluated with split 'test'")
    with pytest.raises(KGDistillError, match="no evaluation folder given for b"):
        compare([a1], [], resamples=10)


def test_seeds_from_the_command_line(tmp_path, capsys):
    runs = [_save(tmp_path / name, [1, 2, 4], [2, 1, 3]) for name in ("a1", "a2", "b1", "b2")]
    assert main(["compare", str(runs[0]), str(runs[1]), "--against", str(runs[2]), str(runs[3]),
                 "--resamples", "100", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["over_seeds"] is True and printed["b"] == [str(runs[2]), str(runs[3])]
    assert printed["metrics"]["mrr"]["difference"] == 0 and len(printed["metrics"]["mrr"]["a_runs"]) == 2
    assert_user_error(main(["compare", str(runs[0]), str(runs[1]), str(runs[2])]), capsys.readouterr().err,
                      ["3 folders given without --against"])
