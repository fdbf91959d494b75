"""Streaming evaluation over fp16 entity shards equals the in-memory ranking: ranks, ties, top-k, metrics, errors."""
import numpy as np
import pytest
import torch

from kgdistill.data.dataset import KnowledgeGraph
from kgdistill.evaluation.ranks import NeighborhoodReranker, rank_in_memory
from kgdistill.evaluation.streaming import EntityShards, EntityStoreError, rank_streaming, write_entity_shards

N, DIM, QUERIES = 40, 6, 17


def _grid_case(seed: int = 0):
    """Vectors on a 1/4 grid: every score is exact in fp16/fp32 whatever the summation order, and duplicated entities
    make deliberate ties. Filters: a few random known answers per query, the gold among them for every other query."""
    rng = np.random.default_rng(seed)
    entities = torch.as_tensor(rng.integers(-2, 3, (N, DIM)) / 4, dtype=torch.float32)
    entities[N // 2:] = entities[:N // 2]  # every score occurs at least twice
    query_vectors = torch.as_tensor(rng.integers(-2, 3, (QUERIES, DIM)) / 4, dtype=torch.float32)
    queries = np.stack([rng.integers(0, N, QUERIES), rng.integers(0, 2, QUERIES), rng.integers(0, N, QUERIES)], 1)
    filter_rows = np.repeat(np.arange(QUERIES), 4)
    filter_cols = rng.integers(0, N, 4 * QUERIES)
    filter_cols[::8] = queries[::2, 2]  # every other query lists its gold among the known answers
    return entities, query_vectors, queries, filter_rows, filter_cols


def _reranker(seed: int = 0) -> NeighborhoodReranker:
    rng = np.random.default_rng(seed)
    ids = [f"e{i}" for i in range(N)]
    train = np.stack([rng.integers(0, N, 30), np.zeros(30, int), rng.integers(0, N, 30)], 1)
    kg = KnowledgeGraph("toy", ids, ids, [""] * N, ["r"], ["r"],
                        {"train": train, "valid": np.zeros((0, 3), int), "test": np.zeros((0, 3), int)}, "x", "toy")
    return NeighborhoodReranker(kg, hops=1, weight=0.25)  # 0.25: re-ranked scores stay on the exact grid


@pytest.mark.parametrize("shard_size", [7, N, 1000])
@pytest.mark.parametrize("tie_policy", ["optimistic", "realistic", "pessimistic"])
def test_streaming_ranks_equal_in_memory_ranks_with_ties(tmp_path, tie_policy, shard_size):
    entities, query_vectors, queries, rows, cols = _grid_case()
    store = write_entity_shards(tmp_path, entities.split(11), N, shard_size)
    assert len(store.shards) == -(-N // shard_size)
    reranker = _reranker()
    expected, _ = rank_in_memory(entities, query_vectors, queries, rows, cols, tie_policy, reranker)
    got, _ = rank_streaming(store, query_vectors, queries, rows, cols, tie_policy, reranker)
    for name in ("no_rerank", "rerank"):
        np.testing.assert_array_equal(got[name], expected[name])
    optimistic, _ = rank_streaming(store, query_vectors, queries, rows, cols, "optimistic")
    pessimistic, _ = rank_streaming(store, query_vectors, queries, rows, cols, "pessimistic")
    assert (pessimistic["no_rerank"] > optimistic["no_rerank"]).any()  # the case really has ties
    assert not np.array_equal(got["rerank"], got["no_rerank"])  # and re-ranking really moves ranks


def test_running_topk_equals_topk_of_the_filtered_score_matrix(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    entities = torch.nn.functional.normalize(torch.randn(N, DIM), dim=1).half().float()
    query_vectors = torch.nn.functional.normalize(torch.randn(QUERIES, DIM), dim=1)
    gold = rng.integers(0, N, QUERIES)
    queries = np.stack([rng.integers(0, N, QUERIES), np.zeros(QUERIES, int), gold], 1)
    scores = query_vectors @ entities.T
    best = scores.argmax(1).numpy()
    # filter each query's best entity (a known answer) and its gold (which filtering must keep)
    rows, cols = np.repeat(np.arange(QUERIES), 2), np.stack([best, gold], 1).ravel()
    masked = scores.clone()
    masked[rows, cols] = float("-inf")
    masked[np.arange(QUERIES), gold] = scores[np.arange(QUERIES), gold]
    expected = masked.topk(10, dim=1)
    _, (values, indices) = rank_streaming(write_entity_shards(tmp_path, [entities], N, 7), query_vectors, queries,
                                          rows, cols, "realistic", top_k=10)
    assert torch.equal(indices, expected.indices)
    torch.testing.assert_close(values, expected.values, rtol=0, atol=1e-6)
    best_listed = (indices.numpy() == best[:, None]).any(1)
    np.testing.assert_array_equal(best_listed, best == gold)  # a filtered best is gone; a best that is gold stays


def test_shards_round_trip_in_entity_order(tmp_path):
    entities = torch.randn(N, DIM)
    chunks = [entities[:3], entities[3:25], entities[25:]]  # chunk edges unrelated to shard edges
    store = write_entity_shards(tmp_path, chunks, N, 7)
    stored = torch.cat([block for _, block in store.blocks(torch.device("cpu"))])
    assert torch.equal(stored, entities.half().float())
    picks = np.array([39, 0, 7, 6, 13, 21])
    assert torch.equal(store.rows(picks), entities.half().float()[picks])
    assert sorted(p.name for p in tmp_path.glob("shard-*.npy")) == [f"shard-{i:05d}.npy" for i in range(6)]
    with pytest.raises(ValueError, match="announced"):
        write_entity_shards(tmp_path, [entities[:30]], N, 7)
    with pytest.raises(EntityStoreError, match="entities.json: missing"):  # the failed write left no manifest
        EntityShards(tmp_path)


def _one_line_error(folder, verify: bool = False) -> str:
    with pytest.raises(EntityStoreError) as info:
        EntityShards(folder, verify_checksums=verify)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_damaged_shards_give_a_one_line_error_naming_the_file(tmp_path):
    write_entity_shards(tmp_path, [torch.randn(N, DIM)], N, 7)
    shard = tmp_path / "shard-00002.npy"
    data = shard.read_bytes()

    shard.write_bytes(data[:-10])
    message = _one_line_error(tmp_path)
    assert str(shard) in message and "truncated" in message

    flipped = bytearray(data)
    flipped[-1] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    EntityShards(tmp_path)  # same size and header: only the checksum can tell
    message = _one_line_error(tmp_path, verify=True)
    assert str(shard) in message and "checksum" in message

    shard.write_bytes(b"\x00" * len(data))
    message = _one_line_error(tmp_path)
    assert str(shard) in message and ".npy" in message

    shard.unlink()
    message = _one_line_error(tmp_path)
    assert str(shard) in message and "missing" in message


def _data_and_model(tiny_config, **overrides):
    from kgdistill.api import DataContext, build_model

    config = tiny_config(eval__dump_predictions=True, **overrides)
    model, tokenizer = build_model(config)
    return DataContext(config, tokenizer), model.eval()


def test_evaluator_streaming_gives_the_in_memory_metrics(tiny_config, tmp_path):
    data, model = _data_and_model(tiny_config, eval__shard_size=7, eval__query_chunk=5)
    cpu = torch.device("cpu")
    vectors = data.evaluator(cpu).encode_entities(model, progress=False)
    in_memory = data.evaluator(cpu).evaluate(model, "test", progress=False, entity_vectors=vectors.half().float())
    data.config.eval.streaming = True
    data.config.eval.shards_dir = str(tmp_path / "shards")
    evaluator = data.evaluator(cpu)
    streamed = evaluator.evaluate(model, "test", progress=False, entity_vectors=vectors)
    assert set(streamed.metrics) == set(in_memory.metrics) and "rerank" in streamed.metrics
    assert streamed.metrics == in_memory.metrics
    assert [p["rank"] for p in streamed.predictions] == [p["rank"] for p in in_memory.predictions]
    assert ([[c["id"] for c in p["top"]] for p in streamed.predictions]
            == [[c["id"] for c in p["top"]] for p in in_memory.predictions])
    assert len(EntityShards(tmp_path / "shards", verify_checksums=True).shards) == -(-data.kg.num_entities // 7)

    # encoded straight into shards, one shard's rows at a time: the evaluator's vectors, rounded to fp16
    data.config.eval.shards_dir = None
    with evaluator.entity_shards(model, progress=False) as store:
        folder = store.folder
        stored = torch.cat([block for _, block in store.blocks(cpu)])
    assert not folder.exists()  # a temporary folder is removed afterwards
    torch.testing.assert_close(stored, vectors.half().float(), rtol=0, atol=2e-3)


def test_shard_size_is_validated(tiny_config):
    from kgdistill.errors import ConfigError

    with pytest.raises(ConfigError, match="eval.shard_size"):
        tiny_config(eval__shard_size=0)


def test_bench_synthetic_streaming_runs_small_and_cleans_up(tmp_path, capsys):
    import json

    from kgdistill.cli import main

    assert main(["bench", "--synthetic-entities", "3000", "--synthetic-queries", "40", "--shard-size", "700",
                 "--query-chunk", "16", "--shards-dir", str(tmp_path), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["shards"] == 5 and results["disk_gb"] > 3000 * 384 * 2 / 1e9
    assert 800 < results["mean_rank"] < 2200  # random gold among 3000 entities
    assert results["peak_rss_mb"] > 0 and "encoding is not timed" in results["note"]
    assert not any(tmp_path.iterdir())  # the shards are removed afterwards
    assert main(["bench", "--synthetic-entities", "800", "--synthetic-queries", "10", "--shards-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out  # without --json: one "key value" line a measurement, like every command's table
    assert any(line.split()[:1] == ["shards"] for line in table.splitlines()) and not table.lstrip().startswith("{")
