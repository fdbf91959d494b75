"""``kgdistill report``: one pipeline recipe over seeds (``kgdistill.pmd.seeds``): means and ranges equal to the
pipelines' own rows, gaps by seed with an interval over seeds and triples, refusals."""
from __future__ import annotations

import json

import pytest

from conftest import assert_user_error, make_tiny_config, one_line
from kgdistill.cli import main
from kgdistill.errors import KGDistillError
from kgdistill.pmd.seeds import seeds_report


@pytest.fixture(scope="module")
def seeded_pipelines(tiny_plm, tiny_kg, tmp_path_factory):
    """One tiny teacher, and from it the one-jump pipeline with a direct control at seeds 1 and 2."""
    from kgdistill.jobs.pipeline import pipeline
    from kgdistill.jobs.train import train

    root = tmp_path_factory.mktemp("seeds")

    def tiny_config(**overrides):
        return make_tiny_config(tiny_kg, tiny_plm, data__cache_dir=str(root / "cache"), **overrides)

    train(tiny_config(train__max_steps=3), root / "teacher", progress=False)
    folders = []
    for seed in (1, 2):
        config = tiny_config(distill__stage_steps=2, distill__pre_distill=False,
                             distill__grades=[{"layers": 2, "mask_rate": 0.0}], distill__controls=["direct"],
                             model__init_from="teacher")
        config.seed, config.distill.teacher = seed, str(root / "teacher")
        pipeline(config, root / f"s{seed}", progress=False)
        folders.append(root / f"s{seed}")
    return folders


def test_means_ranges_and_gaps_are_the_pipelines_own(seeded_pipelines):
    reports = [json.loads((f / "report.json").read_text()) for f in seeded_pipelines]
    result = seeds_report(seeded_pipelines, resamples=300)
    assert result.seeds == [1, 2] and result.teacher["distinct"] == 1
    assert [m["name"] for m in result.models] == [row["name"] for row in reports[0]["rows"]]
    for i, model in enumerate(result.models):
        by_seed = [r["rows"][i]["no_rerank"]["mrr"] for r in reports]
        assert model["mrr"]["by_seed"] == by_seed and model["mrr"]["mean"] == pytest.approx(sum(by_seed) / 2)
        teacher = [r["rows"][0]["no_rerank"]["mrr"] for r in reports]
        assert model["percent_of_teacher"]["by_seed"] == pytest.approx([100 * v / t for v, t in zip(by_seed, teacher)])
    (gap,) = result.gaps
    assert (gap["student"], gap["control"], gap["equal"]) == ("02-grade1-2L", "02-grade1-2L-direct", "compute")
    assert gap["by_seed"] == pytest.approx([r["control_gaps"][0]["mrr_gap"] for r in reports])
    assert gap["low"] <= gap["mean"] <= gap["high"] and "seeds' spread of a and b" in gap["verdict"]
    assert "| 02-grade1-2L | pmd | 2 | 2 |" in result.markdown()


def test_cli_prints_and_saves(seeded_pipelines, tmp_path, capsys):
    out = tmp_path / "summary"
    assert main(["report", *map(str, seeded_pipelines), "--resamples", "100", "--output", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "seeds-report.json").read_text()) and printed["seeds"] == [1, 2]
    assert (out / "seeds-report.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "seeds-report.md").read_text().startswith("2 pipelines, seeds 1, 2; one teacher")


def test_refusals_name_the_folder(seeded_pipelines, tmp_path, capsys):
    first, second = seeded_pipelines
    with pytest.raises(KGDistillError) as info:
        seeds_report([first, first])
    assert one_line(info.value) == f"{first}: seed 1 again (as {first}); give one folder per seed"
    assert_user_error(main(["report", str(first), str(tmp_path)]), capsys.readouterr().err,
                      [str(tmp_path), "no report.json"])
    import shutil

    other = tmp_path / "other"
    shutil.copytree(second, other)
    report = json.loads((other / "report.json").read_text())
    report["rows"][1]["evaluation"]["tie_policy"] = "optimistic"
    (other / "report.json").write_text(json.dumps(report))
    with pytest.raises(KGDistillError, match=r"row '02-grade1-2L' evaluated with tie_policy 'optimistic'"):
        seeds_report([first, other])
