"""``kgdistill subgraph`` (``kgdistill.data.subgraph``, issue 18): a small KG cut from a large one, the same files for
the same seed, held-out triples without leaks and its provenance; sizes it cannot cut are refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_subgraph_is_deterministic_and_holds_out_without_leaks(tmp_path):
    from kgdistill.cli.app import main
    from kgdistill.data.loading import load_dataset

    args = ["subgraph", "wn18rr", "--entities", "600", "--seed", "3", "--max-expand", "4", "--heldout", "80"]
    assert main([*args, "--output", str(tmp_path / "a")]) == 0
    assert main([*args, "--output", str(tmp_path / "b")]) == 0
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    other_seed = [*args[:5], "4", *args[6:]]
    assert main([*other_seed, "--output", str(tmp_path / "c")]) == 0
    assert _files(tmp_path / "c")["entities.tsv"] != _files(tmp_path / "a")["entities.tsv"]

    sub, full = load_dataset(str(tmp_path / "a")), load_dataset("wn18rr")
    assert sub.num_entities == 600 and len(sub.splits["valid"]) == len(sub.splits["test"]) == 80
    original = {split: {(full.entity_ids[h], full.relation_ids[r], full.entity_ids[t]) for h, r, t in full.splits[split]}
                for split in ("train", "valid", "test")}
    train_pairs = {frozenset((h, t)) for h, _, t in sub.splits["train"]}
    degree = np.bincount(sub.splits["train"][:, [0, 2]].ravel(), minlength=sub.num_entities)
    for split in ("valid", "test"):
        for h, r, t in sub.splits[split]:
            triple = (sub.entity_ids[h], sub.relation_ids[r], sub.entity_ids[t])
            if triple in original[split]:
                continue  # an original held-out triple, kept as WN18RR has it
            assert triple in original["train"]  # moved from train: no reverse or parallel edge left behind
            assert frozenset((h, t)) not in train_pairs and degree[h] > 0 and degree[t] > 0
    kept = {split: {(sub.entity_ids[h], sub.relation_ids[r], sub.entity_ids[t]) for h, r, t in sub.splits[split]}
            for split in ("train", "valid", "test")}
    for split in ("train", "valid", "test"):  # every original triple between the sampled entities is kept ...
        inside = _between(full, set(sub.entity_ids), split)
        assert inside <= kept["train"] | kept["valid"] | kept["test"]
        if split != "train":  # ... and an original held-out triple stays held out
            assert inside <= kept[split]
    provenance = json.loads((tmp_path / "a" / "PROVENANCE.json").read_text())
    assert provenance["seed"] == 3 and provenance["source_fingerprint"] == full.fingerprint


def _between(kg, entities: set[str], split: str) -> set[tuple[str, str, str]]:
    return {(kg.entity_ids[h], kg.relation_ids[r], kg.entity_ids[t]) for h, r, t in kg.splits[split]
            if kg.entity_ids[h] in entities and kg.entity_ids[t] in entities}


def test_subgraph_refuses_bad_sizes(tmp_path, capsys):
    from kgdistill.cli.app import main

    assert main(["subgraph", "wn18rr", "--entities", "99999999", "--output", str(tmp_path / "x")]) == 2
    assert "subgraph size" in capsys.readouterr().err and not (tmp_path / "x").exists()
