"""Entity and relation text (``kgdistill.data.text``): name and description joined, inverse relations, and neighbour
text that never leaks the gold answer or comes from outside the training graph."""
import numpy as np

from conftest import make_toy_kg
from kgdistill.data.loading import load_dataset
from kgdistill.data.text import TextBuilder, join_name_description, with_inverses


def test_join_name_description():
    assert join_name_description("dog", "dog a domestic animal") == "dog: a domestic animal"
    assert join_name_description("dog", "") == "dog"
    assert join_name_description("dog", "a pet") == "dog: a pet"


def test_inverse_relations_offset_and_text(tiny_kg):
    kg = load_dataset(str(tiny_kg))
    queries = with_inverses(kg.splits["train"], kg.num_relations)
    n = len(kg.splits["train"])
    assert (queries[n:, 0] == kg.splits["train"][:, 2]).all() and (queries[n:, 2] == kg.splits["train"][:, 0]).all()
    assert (queries[n:, 1] == kg.splits["train"][:, 1] + kg.num_relations).all()
    texts = TextBuilder(kg)
    assert texts.relation_text(kg.num_relations) == "inverse " + kg.relation_texts[0]


def test_neighbour_text_excludes_gold_in_training_only():
    texts = TextBuilder(make_toy_kg(), min_words=20)
    assert texts.entity_text(0) == "A: B C D"  # evaluation: all training neighbours, sorted by id
    assert texts.entity_text(0, exclude=1) == "A: C D"  # training (a, r, b): b must not leak into a's text
    assert texts.variant(0, 1) == (0, 1) and texts.variant(0, -1) == (0, -1)
    assert texts.entity_text(1, exclude=0) == texts.entity_text(1)  # long description: no neighbours appended


def test_neighbours_come_from_training_graph_only():
    kg = make_toy_kg()
    kg.splits["test"] = np.array([[2, 0, 3]])
    assert "D" not in TextBuilder(kg).entity_text(2)
