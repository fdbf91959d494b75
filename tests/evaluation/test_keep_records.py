"""bench/keep_records.py: the records it keeps of a run are enough for ``kgdistill compare`` to give the run's own
numbers, and it copies no weights, tokenizer or optimiser state."""
from conftest import load_bench, train_tiny


def test_kept_records_compare_like_the_run_and_hold_no_weights(tmp_path, tiny_kg, tiny_plm, cache_dir):
    from kgdistill.evaluation.compare import compare

    run = train_tiny(tmp_path / "runs" / "a", tiny_kg, tiny_plm, evaluate=True, train__max_steps=4)
    written = load_bench("keep_records").keep_records(tmp_path / "runs", tmp_path / "kept", only=["a"])
    kept = tmp_path / "kept" / "a"
    names = {p.relative_to(kept).as_posix() for p in written}
    assert {"metrics.json", "ranks.npz", "train_log.jsonl", "train_summary.json", "config.yaml"} <= names
    assert not [n for n in names if n.endswith(".safetensors") or "tokenizer/" in n or "trainer_state/" in n
                or n.rsplit("/", 1)[-1] in ("manifest.json", "model.json")]
    same = compare(kept, run, resamples=200)  # the kept ranks against the run's own, triple by triple
    assert same.num_triples > 0 and same.metrics["mrr"]["a"] > 0
    for metric in same.metrics.values():
        assert metric["a"] == metric["b"] and metric["low"] == metric["high"] == 0.0
