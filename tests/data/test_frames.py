"""Knowledge graphs from pandas DataFrames and CSV / Parquet folders, and results back as DataFrames: the same graph
as the TSV folder format, so the same training, evaluation and predictions."""
from __future__ import annotations

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from kgdistill.data.dataset import SPLITS  # noqa: E402
from kgdistill.data.frames import from_dataframes, to_dataframes  # noqa: E402
from kgdistill.data.loading import convert_dataset, load_dataset  # noqa: E402
from kgdistill.errors import DataError  # noqa: E402
from kgdistill.inference.predictor import Predictor  # noqa: E402
from kgdistill.jobs.train import train  # noqa: E402
from kgdistill.store.saved import load_model  # noqa: E402


def same_graph(a, b) -> None:
    assert (a.entity_ids, a.entity_names, a.entity_descriptions) == (b.entity_ids, b.entity_names,
                                                                        b.entity_descriptions)
    assert (a.relation_ids, a.relation_texts) == (b.relation_ids, b.relation_texts)
    for split in SPLITS:
        np.testing.assert_array_equal(a.splits[split], b.splits[split])


def write_tables(frames: dict, folder, kind: str):
    folder.mkdir()
    for table, frame in frames.items():
        if kind == "csv":
            frame.to_csv(folder / f"{table}.csv", index=False)
        else:
            frame.to_parquet(folder / f"{table}.parquet", index=False)
    return folder


def test_dataframes_and_table_folders_are_the_tsv_graph(tiny_kg, tmp_path):
    tsv = load_dataset(str(tiny_kg))
    frames = to_dataframes(tsv)
    assert list(frames["train"].columns) == ["head", "relation", "tail"] and len(frames["train"]) == len(
        tsv.splits["train"])
    same_graph(from_dataframes(**frames), tsv)
    without_relations = from_dataframes(**{k: v for k, v in frames.items() if k != "relations"})
    assert sorted(without_relations.relation_ids) == sorted(tsv.relation_ids)
    assert without_relations.relation_texts == [r.replace("_", " ") for r in without_relations.relation_ids]
    for kind in ("csv", "parquet"):
        folder = write_tables(frames, tmp_path / kind, kind)
        same_graph(load_dataset(str(folder)), tsv)
        same_graph(convert_dataset(folder, tmp_path / f"{kind}-as-tsv"), tsv)
        same_graph(load_dataset(str(tmp_path / f"{kind}-as-tsv")), tsv)


def test_table_errors_name_the_table_and_line(tiny_kg, tmp_path):
    frames = to_dataframes(load_dataset(str(tiny_kg)))
    with pytest.raises(DataError, match="train DataFrame: no column 'tail'"):
        from_dataframes(**{**frames, "train": frames["train"].rename(columns={"tail": "t"})})
    bad = frames["valid"].copy()
    bad.loc[1, "head"] = "nobody"
    with pytest.raises(DataError, match=r"valid DataFrame:3: unknown head entity 'nobody' \(not in entities "
                                         r"DataFrame\)"):
        from_dataframes(**{**frames, "valid": bad})
    entities = frames["entities"].copy()
    entities.loc[3, "name"] = None
    with pytest.raises(DataError, match="entities DataFrame:5: entity 'E3' has an empty name"):
        from_dataframes(**{**frames, "entities": entities})
    folder = write_tables({**frames, "valid": bad}, tmp_path / "csv", "csv")
    with pytest.raises(DataError, match=r"csv/valid.csv:3: unknown head entity 'nobody' \(not in .*csv/entities.csv\)"):
        load_dataset(str(folder))
    (folder / "test.csv").unlink()
    with pytest.raises(DataError, match="test.csv: missing"):
        load_dataset(str(folder))
    # descriptions are optional; tabs and line breaks in a cell become spaces; an empty split needs no columns
    kg = from_dataframes(frames["train"], pd.DataFrame(), frames["test"],
                         pd.DataFrame({"id": ["E0", *frames["entities"]["id"][1:]],
                                       "name": ["two\tlines\nname", *frames["entities"]["name"][1:]]}))
    assert kg.entity_names[0] == "two lines name" and kg.entity_descriptions == [""] * kg.num_entities
    assert len(kg.splits["valid"]) == 0


def test_a_dataframe_graph_trains_evaluates_and_predicts_as_the_tsv_graph(tiny_config, tiny_kg, tmp_path):
    frames = to_dataframes(load_dataset(str(tiny_kg)))
    folder = write_tables(frames, tmp_path / "tables", "parquet")
    outcomes = [train(tiny_config(data__dataset=str(dataset), eval__dump_predictions=True), tmp_path / name,
                      progress=False) for name, dataset in (("tsv", tiny_kg), ("tables", folder))]
    a, b = (o.evaluation for o in outcomes)
    for variant in ("no_rerank", "rerank"):
        assert a.metrics[variant] == b.metrics[variant]
    pd.testing.assert_frame_equal(a.to_df(), b.to_df())
    rows = a.to_df()
    assert list(rows[["variant", "direction"]].itertuples(index=False, name=None)) == [
        (v, d) for v in ("no_rerank", "rerank") for d in ("forward", "backward", "both")]
    assert rows.loc[2, "mrr"] == a.metrics["no_rerank"]["both"]["mrr"]
    per_relation = a.to_df(by_relation=True)
    assert per_relation["queries"].sum() == 2 * a.metrics["num_triples"]
    assert "inverse hypernym" in set(per_relation["relation"])

    model, tokenizer, _ = load_model(tmp_path / "tsv")
    from_frames = Predictor(model, tokenizer, tiny_config(), kg=from_dataframes(**frames), device="cpu")
    from_tsv = Predictor.from_pretrained(tmp_path / "tsv", device="cpu", save_index=False)
    from_parquet_run = Predictor.from_pretrained(tmp_path / "tables", device="cpu", save_index=False)
    predictions = [p.predict_tails("E0", "r_next", k=5) for p in (from_frames, from_tsv, from_parquet_run)]
    assert predictions[0].to_dict() == predictions[1].to_dict() == predictions[2].to_dict()
    table = predictions[0].to_df()
    assert list(table.columns) == ["rank", "id", "name", "score", "filtered", "splits"]
    results = table[~table["filtered"]]
    assert list(results["id"]) == [r.id for r in predictions[0].results]
    assert list(results["rank"]) == [1, 2, 3, 4, 5]
    assert table[table["filtered"]]["id"].tolist() == [r.id for r in predictions[0].filtered]
