"""Text building, inverse relations, neighbour leakage, and SimKGC's false-negative masks."""
import numpy as np

from kgdistill.data.batching import KnownTails, TrainBatch
from kgdistill.data.dataset import KnowledgeGraph
from kgdistill.data.loading import load_dataset
from kgdistill.data.text import TextBuilder, join_name_description, with_inverses
from kgdistill.losses.contrastive import build_masks


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


def _toy_kg():
    ids = ["a", "b", "c", "d"]
    train = np.array([[0, 0, 1], [0, 0, 2], [3, 0, 0]])
    return KnowledgeGraph("toy", ids, ["A", "B", "C", "D"], ["", "long " * 30, "", ""], ["r"], ["rel"],
                          {"train": train, "valid": np.zeros((0, 3), int), "test": np.zeros((0, 3), int)}, "f", "toy")


def test_neighbour_text_excludes_gold_in_training_only():
    texts = TextBuilder(_toy_kg(), min_words=20)
    assert texts.entity_text(0) == "A: B C D"  # evaluation: all training neighbours, sorted by id
    assert texts.entity_text(0, exclude=1) == "A: C D"  # training (a, r, b): b must not leak into a's text
    assert texts.variant(0, 1) == (0, 1) and texts.variant(0, -1) == (0, -1)
    assert texts.entity_text(1, exclude=0) == texts.entity_text(1)  # long description: no neighbours appended


def test_neighbours_come_from_training_graph_only():
    kg = _toy_kg()
    kg.splits["test"] = np.array([[2, 0, 3]])
    assert "D" not in TextBuilder(kg).entity_text(2)


def test_false_negative_masks_hand_built():
    kg = _toy_kg()
    known = KnownTails(with_inverses(kg.splits["train"], 1), 4, 1)
    # batch: (a,r,b), (a,r,c), (d,r,a), (b, inverse r, a)
    batch = TrainBatch(None, None, None, heads=np.array([0, 0, 3, 1]), relations=np.array([0, 0, 0, 1]),
                       tails=np.array([1, 2, 0, 0]))
    masks = build_masks(batch, known)
    keep = masks.in_batch.numpy()
    assert keep.diagonal().all()
    assert not keep[0, 1] and not keep[1, 0]  # c is a known answer of (a, r) and b too
    assert not keep[2, 3] and not keep[3, 2]  # same tail entity a in rows 2 and 3
    assert keep[0, 2]  # a is not an answer of (a, r)
    # self-negative: is the head a known answer of its own query? never here
    assert masks.self_negative.all()


def test_tiny_tokenizer_knows_its_words(tiny_plm):
    """Guards the fixture itself: a tokenizer mapping every word to [UNK] would make many tests vacuous."""
    from kgdistill.models.plm import load_tokenizer

    assert load_tokenizer(tiny_plm).tokenize("dog cat e3") == ["dog", "cat", "e3"]
