"""bench/swap_towers.py: its uncrossed pairs are the checkpoints themselves, scored as ``kgdistill evaluate`` scores
them, and its crossed pairs use one checkpoint's query tower with the other's entity tower."""
import pytest

from conftest import load_bench, train_tiny


def test_crossed_towers_match_evaluate(tmp_path, tiny_kg, tiny_plm, tiny_config, cache_dir):
    from kgdistill.jobs.evaluate import evaluate
    from kgdistill.runfolder import RunFolder

    run = train_tiny(tmp_path / "run", tiny_kg, tiny_plm, train__lr=5e-2, train__max_steps=8, train__validate_every=2,
                     train__valid_ranking=True)
    scores = load_bench("swap_towers").crossed_mrr(run, "valid")
    config = tiny_config(eval__split="valid")
    for name, folder in (("best", RunFolder.BEST), ("last", RunFolder.LAST)):
        alone = evaluate(run / folder, config, output=tmp_path / name, progress=False).to_dict()
        assert scores[f"query_{name}+entity_{name}"] == pytest.approx(alone["no_rerank"]["both"]["mrr"] * 100)
    assert set(scores) == {"query_best+entity_best", "query_best+entity_last", "query_last+entity_best",
                           "query_last+entity_last"}
    # the two checkpoints differ here, so a crossing that ignored one of them would equal an uncrossed pair
    assert scores["query_best+entity_best"] != scores["query_last+entity_last"]
    assert scores["query_best+entity_last"] not in (scores["query_best+entity_best"], scores["query_last+entity_last"])
