"""The trainer (``kgdistill.training.trainer``): with ``train.valid_ranking`` it logs valid MRR and Hits@k, and the
best checkpoint follows valid MRR."""
from __future__ import annotations

import json


def test_valid_ranking_logs_mrr_and_best_checkpoint_follows_it(tiny_config, tmp_path):
    from kgdistill.jobs.train import train
    from kgdistill.runfolder import RunFolder

    outcome = train(tiny_config(train__valid_ranking=True, train__validate_every=2), tmp_path / "t", progress=False,
                    evaluate_after=False)
    records = [json.loads(line) for line in (tmp_path / "t/train_log.jsonl").read_text().splitlines()]
    curve = [r for r in records if "valid_mrr" in r]
    assert [r["step"] for r in curve] == [2, 4, 6]
    assert all(0 < r["valid_mrr"] <= 1 and r["valid_hits@1"] <= r["valid_hits@10"] for r in curve)
    assert outcome.train.best_valid == max(r["valid_mrr"] for r in curve)
    assert (tmp_path / "t" / RunFolder.BEST).exists()
