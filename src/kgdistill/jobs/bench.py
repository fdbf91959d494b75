"""Measure this machine's limits and kgdistill against them, in one run (``kgdistill bench``).

Reports matmul peak, encoder forward GFLOP/s (analytic FLOP count), teacher and student training samples/s,
entity-encoding speed-up of the smallest student, and (unless ``--quick``) a full WN18RR test evaluation split into
encoding and ranking. Medians of several repeats; ratios are measured side by side in the same process.
``--synthetic-entities N`` instead measures streaming evaluation (fp16 entity shards on disk) at a scale no real
encoding fits on a CPU budget: random unit vectors stand in for the encoded entities.
"""
from __future__ import annotations

import copy
import itertools
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import build_config, parse_overrides
from ..runtime import autocast
from ..training.objectives import ContrastiveObjective


def _median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n matmul in ``dtype`` (median of ``repeats``): this machine's practical peak."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    seconds = _median_time(lambda: a @ b, repeats)
    return 2 * n**3 / seconds / 1e9


def encoder_flops(config, tokens: int) -> float:
    """Forward FLOPs of one sequence: projections, feed-forward and attention of every layer."""
    h, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return layers * (8 * tokens * h * h + 4 * tokens * h * f + 4 * tokens * tokens * h)


def encode_rate(encoder, batch: int, tokens: int, precision: str, repeats: int) -> float:
    """Sequences per second of the encoder's forward pass on random ``batch x tokens`` ids under ``precision``."""
    ids = torch.randint(1000, 20000, (batch, tokens))
    mask = torch.ones_like(ids)
    encoder.eval()

    def run():
        with torch.no_grad(), autocast(torch.device("cpu"), precision):
            encoder(input_ids=ids, attention_mask=mask)

    return batch / _median_time(run, repeats)


def sequence_flops(config, attention_mask: torch.Tensor) -> float:
    """Forward FLOPs of a padded batch counting only its real tokens (what padding-free encoding would cost)."""
    return float(sum(encoder_flops(config, int(n)) for n in attention_mask.sum(1).tolist()))


def train_rate(config, batch_size: int, precision: str, repeats: int, layers: int | None = None, data=None,
               warmup: int = 1, times: list[float] | None = None,
               flops: list[float] | None = None) -> float:
    """Samples/s of full teacher (or student) steps on real WN18RR batches on the CPU: the trainer's own step
    (:meth:`~kgdistill.training.trainer.Trainer.train_step`) on batches drawn as it draws them
    (``train.length_bucketing``, ``train.packing``, ``train.fast_dropout``, ``train.fused_optimizer``, ``train.compile``
    and ``loss.self_negative`` apply).

    ``data``: a DataContext of the same tokenizer, reused across calls;
    ``times``: receives every step's seconds, the ``warmup`` steps first (where compilation shows);
    ``flops``: receives every step's training FLOPs over real tokens (forward + backward = 3 forward passes of each
    encoded sequence: query, tail and, with self-negatives, head)."""
    from ..store.context import DataContext
    from ..losses.contrastive import InfoNCELoss
    from ..models.builder import build_model
    from ..training.trainer import Trainer

    config.train.batch_size, config.train.precision, config.train.device = batch_size, precision, "cpu"
    config.model.num_layers = layers
    model, tokenizer = build_model(config)
    data = data or DataContext(config, tokenizer)
    objective = ContrastiveObjective(model, InfoNCELoss(model, config.loss, data.known_train, batch_size))
    examples = data.train_set()
    trainer = Trainer(tempfile.gettempdir(), config, objective, examples, None, tokenizer,
                      progress=False)  # train_step writes nothing to its run folder
    objective.train()
    steps = itertools.count()

    def step():
        t0 = time.perf_counter()
        batch = trainer.batch(next(steps))
        trainer.train_step(batch)
        if times is not None:
            times.append(time.perf_counter() - t0)
        if flops is not None:
            parts = [(model.hr_encoder, batch.hr), (model.tail_encoder, batch.tail)]
            if batch.head is not None:
                parts.append((model.tail_encoder, batch.head))
            flops.append(3 * sum(sequence_flops(enc.config, b.attention_mask) for enc, b in parts))

    return batch_size / _median_time(step, repeats, warmup)


def timed_step(trainer) -> float:
    """Seconds of one training step as :meth:`Trainer.train` takes it: the batch drawn, then the optimisation step."""
    t0 = time.perf_counter()
    batch = trainer.batch(trainer.state.step)
    trainer.train_step(batch)
    trainer.state.step += 1
    return time.perf_counter() - t0


def cost_interval(stage_times: list[float], teacher_times: list[float], confidence: float = 0.95,
                  resamples: int = 4000, seed: int = 0) -> tuple[float, float]:
    """An interval for median stage step / median teacher step, resampling whole rounds (a round's two steps ran
    side by side, so they are resampled together)."""
    import numpy as np

    stage, teacher = np.asarray(stage_times), np.asarray(teacher_times)
    rows = np.random.default_rng(seed).integers(len(stage), size=(resamples, len(stage)))
    ratios = np.median(stage[rows], axis=1) / np.median(teacher[rows], axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail))


def stage_costs(teacher: str | Path, variants: dict[str, list[str]], rounds: int, warmup: int = 2,
                preset: str | None = "quick", progress: bool = False, all_stages: bool = False) -> dict:
    """Each variant's first distillation stage (``all_stages``: every stage after the teacher, as ``VARIANT/STAGE``):
    its planned cost in teacher training steps beside its measured one.

    ``variants``: name -> pipeline overrides (on ``preset``, with ``distill.teacher=teacher``); the first distillation
    stage of each plan (pre-distillation where the plan has it, else the first grade) is built as ``kgdistill
    distill`` builds it, the teacher's own training from its saved config as ``kgdistill train`` does. A later stage
    is taught by its predecessor as built (saved untrained: a step's cost depends on the depths, not the weights).
    Each round takes one step of every trainer in a rotating order, so drift of the machine's speed hits all alike;
    medians over ``rounds`` after ``warmup``, a 95 % interval for their ratio (:func:`cost_interval`) and the
    quartiles of each round's own ratio (stage step / teacher step); ``totals``: each variant's distillation stages
    (controls left out), planned steps times measured step, against the teacher's steps times its step.
    ``progress``: a bar over the rounds."""
    from ..pmd.plan import STUDENT_KINDS, plan, stage_run_config
    from ..store.saved import load_run_config
    from .distill import student_trainer
    from .pipeline import plan_inputs
    from .train import teacher_trainer

    teacher = Path(teacher)
    teacher_config = load_run_config(teacher)
    teacher_steps = teacher_config.train.max_steps
    # the stages' checkpoints (the teachers of the stages after them) go with the folder, also when a step raises
    with tempfile.TemporaryDirectory(prefix="stage-cost-") as folder:
        scratch = Path(folder)
        trainers = {"teacher": teacher_trainer(teacher_config, scratch / "teacher", progress=False)[0]}
        stages, variant_of = {}, {}
        for name, overrides in variants.items():
            config = build_config(preset, overrides=parse_overrides([f"distill.teacher={teacher}", *overrides]))
            depth, lengths = plan_inputs(config)
            planned = plan(config, depth, teacher_steps, lengths)
            chosen = planned[1:] if all_stages else [next(s for s in planned if s.kind in STUDENT_KINDS)]
            folders, teaching = {planned[0].name: teacher}, {s.teacher for s in chosen}
            for stage in chosen:
                key = f"{name}/{stage.name}" if all_stages else name
                trainer = student_trainer(stage_run_config(config, stage, folders[stage.teacher]), scratch / key,
                                          progress=False)[0]
                if stage.name in teaching:  # its checkpoint-last teaches a later stage
                    trainer.save()
                folders[stage.name], stages[key], trainers[key], variant_of[key] = scratch / key, stage, trainer, name
        names = list(trainers)
        times: dict[str, list[float]] = {name: [] for name in names}
        for trainer in trainers.values():
            trainer.objective.train()
        for round_ in tqdm(range(warmup + rounds), desc="rounds", disable=not progress):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                seconds = timed_step(trainers[name])
                if round_ >= warmup:
                    times[name].append(seconds)
    teacher_s = statistics.median(times["teacher"])
    rows = [{"name": "teacher", "layers": trainers["teacher"].objective.model.num_layers, "kind": "teacher",
             "steps": teacher_steps, "planned_cost": 1.0, "measured_cost": 1.0, "s_per_step": teacher_s,
             "wall_s": teacher_steps * teacher_s}]
    for name, stage in stages.items():
        step_s = statistics.median(times[name])
        ratios = [a / b for a, b in zip(times[name], times["teacher"])]
        paired = statistics.quantiles(ratios, n=4, method="inclusive")
        teacher_model = getattr(trainers[name].objective, "teacher", None)  # a direct control has none
        rows.append({"name": name, "layers": stage.layers, "kind": stage.kind, "steps": stage.steps,
                     "teacher_layers": teacher_model.num_layers if teacher_model is not None else None,
                     "planned_cost": stage.cost, "measured_cost": step_s / teacher_s, "s_per_step": step_s,
                     "wall_s": stage.steps * step_s, "round_ratio_quartiles": paired,
                     "measured_cost_interval": cost_interval(times[name], times["teacher"])})
    totals = {name: sum(r["wall_s"] for r in rows[1:] if variant_of[r["name"]] == name and r["kind"] in
                        STUDENT_KINDS) / rows[0]["wall_s"] for name in variants}
    return {"machine": machine_info(), "teacher": str(teacher), "rounds": rounds, "warmup": warmup,
            "variants": variants, "rows": rows, "totals": totals, "times": times}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_info() -> dict:
    """Platform, torch version, threads and the CPU facts that decide the precision."""
    from ..runtime import cpu_info

    cpu = cpu_info()
    return {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": cpu["model"], "cpu_flags": cpu["flags"], "native_bf16": cpu["native_bf16"]}


def run(quick: bool = False, model_dir: str | None = None, repeats: int = 3) -> dict:
    """Every key in both modes; ``--quick`` only measures fewer and smaller things (one batch size, a slice of the
    test queries). Ratios to peak use the fastest precision this machine has."""
    from ..models.plm import build_student_encoder, even_layer_map, load_encoder, resolve_plm
    from ..runtime import precision_info

    torch.manual_seed(0)
    cpu = torch.device("cpu")
    auto = precision_info("auto", cpu)
    results: dict = {"machine": machine_info(), "auto_precision": auto["chosen"], "auto_reason": auto["reason"]}
    peaks = {p: matmul_peak(dtype, repeats=repeats) for p, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    results["matmul_peak_gflops_fp32"], results["matmul_peak_gflops_bf16"] = peaks["fp32"], peaks["bf16"]
    fastest = max(peaks, key=peaks.get)
    results["matmul_peak_gflops"], results["fastest_precision"] = peaks[fastest], fastest
    plm = load_encoder(resolve_plm("default"))
    tokens, batch = 50, 128
    flops = encoder_flops(plm.config, tokens)
    for precision in ("fp32", "bf16"):
        rate = encode_rate(plm, batch, tokens, precision, repeats)
        results[f"encode_seq_per_s_{precision}"] = rate
        results[f"encode_gflops_{precision}"] = rate * flops / 1e9
        results[f"encode_vs_own_peak_{precision}"] = rate * flops / 1e9 / peaks[precision]
    results["encode_gflops"] = results[f"encode_gflops_{auto['chosen']}"]
    results["encode_vs_peak"] = results["encode_gflops"] / results["matmul_peak_gflops"]
    student = build_student_encoder(plm, even_layer_map(plm.config.num_hidden_layers, 2))
    student_rate = encode_rate(student, batch, tokens, auto["chosen"], repeats)
    results["student_encode_speedup"] = student_rate / results[f"encode_seq_per_s_{auto['chosen']}"]
    config = build_config("quick")
    from ..store.context import DataContext
    from ..models.plm import load_tokenizer

    data = DataContext(config, load_tokenizer(resolve_plm("default")))
    results["train"] = {}
    steps = max(2, repeats - 1)
    for size in ([128] if quick else [128, 256]):
        for precision in ("fp32", "bf16"):
            step_flops: list[float] = []
            rate = train_rate(config, size, precision, steps, data=data, warmup=1, flops=step_flops)
            results["train"][f"teacher_b{size}_{precision}"] = rate
            if size == 128:
                results["train_flops_per_sample"] = statistics.median(step_flops) / size
    results["train"]["student2L_b128_" + auto["chosen"]] = train_rate(config, 128, auto["chosen"], steps, layers=2,
                                                                      data=data)
    padded = copy.deepcopy(config)
    padded.train.packing = False  # the previous default, side by side with packing (config.train.packing)
    results["train"][f"teacher_b128_{auto['chosen']}_padded"] = train_rate(padded, 128, auto["chosen"], steps, data=data)
    results["train_samples_per_s_padded"] = results["train"][f"teacher_b128_{auto['chosen']}_padded"]
    results["train_samples_per_s_fp32"] = results["train"]["teacher_b128_fp32"]
    results["train_samples_per_s_bf16"] = results["train"]["teacher_b128_bf16"]
    results["train_samples_per_s"] = results["train"][f"teacher_b128_{auto['chosen']}"]
    results["packing_speedup"] = results["train_samples_per_s"] / results["train_samples_per_s_padded"]
    results["auto_vs_fastest_train"] = results["train_samples_per_s"] / max(results["train_samples_per_s_fp32"],
                                                                            results["train_samples_per_s_bf16"])
    # the rate the fastest matmul peak would allow for the real tokens (three passes a sample, forward + backward)
    token_bound = results["matmul_peak_gflops"] * 1e9 / results["train_flops_per_sample"]
    results["train_token_bound_samples_per_s"] = token_bound
    results["train_vs_token_bound"] = results["train_samples_per_s"] / token_bound
    results["evaluation"] = evaluation_split(model_dir, results[f"encode_seq_per_s_{auto['chosen']}"],
                                             max_queries=500 if quick else None)
    results["eval_vs_encode_bound"] = results["evaluation"]["vs_encode_bound"]
    results["peak_rss_mb"] = peak_rss_mb()
    return results


def evaluation_split(model_dir: str | None, encode_rate: float, max_queries: int | None = None) -> dict:
    """WN18RR test evaluation (all entities; the first ``max_queries`` test triples, default all): time encoding vs
    ranking, against an encode-only bound at the measured encoding rate."""
    from ..store.context import DataContext
    from ..store.saved import load_model
    from ..models.builder import build_model

    config = build_config("quick")
    config.eval.max_queries = max_queries
    if model_dir:
        model, tokenizer, _ = load_model(model_dir)
    else:
        model, tokenizer = build_model(config)
    data = DataContext(config, tokenizer)
    result = data.evaluator(torch.device("cpu")).evaluate(model, "test", progress=False)
    s = result.seconds
    entity_tokens = int(data.evaluator().entity_store().lengths().sum())
    sequences = data.kg.num_entities + 2 * result.metrics["num_triples"]
    # encode-only bound: the same number of sequences at the measured 50-token rate (padding-free texts are shorter)
    bound = sequences / encode_rate
    return {"seconds": s, "encode_share": (s["encode_entities"] + s["encode_queries"]) / s["total"],
            "sequences": sequences, "mean_entity_tokens": entity_tokens / data.kg.num_entities,
            "encode_only_bound_s_at_50_tokens": bound, "vs_encode_bound": s["total"] / bound,
            "mrr": result.metrics["no_rerank"]["both"]["mrr"], "peak_rss_mb": peak_rss_mb()}


def synthetic_streaming(entities: int, queries: int = 2000, shards_dir: str | None = None, shard_size: int = 262_144,
                        query_chunk: int = 1024, dim: int = 384, top_k: int = 10, seed: int = 0) -> dict:
    """Streaming evaluation of ``queries`` random queries against ``entities`` random unit vectors in fp16 shards.

    Vectors are generated and written chunk by chunk, as encoding would write them, into a temporary folder under
    ``shards_dir`` (removed afterwards); each query gets a random gold and 1-5 known answers (the gold among them) to
    filter. Peak RSS is this process's high-water mark.
    """
    import numpy as np

    from ..data.batching import KnownTails
    from ..evaluation.metrics import rank_metrics
    from ..evaluation.ranks import known_answer_pairs
    from ..evaluation.streaming import rank_streaming, write_entity_shards

    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    def unit(rows: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator), dim=1)

    chunk = 65_536
    results: dict = {"machine": {**machine_info(), "load_avg_1m_at_start": os.getloadavg()[0]},
                     "entities": entities, "queries": queries, "dim": dim, "shard_size": shard_size,
                     "query_chunk": query_chunk, "top_k": top_k,
                     "note": (f"random unit vectors stand in for encoded entities; encoding is not timed ({entities:,} "
                              f"texts at the ~235 seq/s bf16 MiniLM rate of 2 CPU cores would take "
                              f"~{entities / 235 / 3600:.1f} h)")}
    if shards_dir is not None:
        Path(shards_dir).mkdir(parents=True, exist_ok=True)  # a new folder is fine; the shards go in a temp child
    with tempfile.TemporaryDirectory(prefix="kgdistill-bench-shards-", dir=shards_dir) as folder:
        t0 = time.perf_counter()
        store = write_entity_shards(folder, (unit(min(chunk, entities - start)) for start in range(0, entities, chunk)),
                                    entities, shard_size)
        results["write_s"] = time.perf_counter() - t0
        results["shards"] = len(store.shards)
        results["disk_gb"] = sum(size for _, _, size, _ in store.shards) / 1e9
        results["peak_rss_mb_after_write"] = peak_rss_mb()
        relations = 10
        heads, rels = rng.integers(0, entities, queries), rng.integers(0, relations, queries)
        gold = rng.integers(0, entities, queries)
        extra = rng.integers(0, 5, queries)  # known answers besides the gold
        known = KnownTails(np.stack([np.repeat(heads, extra + 1), np.repeat(rels, extra + 1),
                                     np.concatenate([[g, *rng.integers(0, entities, e)] for g, e in zip(gold, extra)])],
                                    1), entities, relations)
        triples = np.stack([heads, rels, gold], 1)
        query_vectors = unit(queries)
        ranks = np.zeros(queries)
        t0 = time.perf_counter()
        for start in range(0, queries, query_chunk):
            q = triples[start:start + query_chunk]
            rows, cols = known_answer_pairs(known, q)
            chunk_ranks, _ = rank_streaming(store, query_vectors[start:start + query_chunk], q, rows, cols,
                                            "realistic", top_k=top_k)
            ranks[start:start + len(q)] = chunk_ranks["no_rerank"]
        results["rank_s"] = time.perf_counter() - t0
    results["queries_per_s"] = queries / results["rank_s"]
    results["score_gflops"] = 2 * queries * entities * dim / results["rank_s"] / 1e9
    results["mean_rank"] = rank_metrics(ranks)["mr"]  # random gold: about entities / 2
    results["peak_rss_mb"] = peak_rss_mb()
    results["in_memory_would_need_gb"] = (entities * dim * 4 + query_chunk * entities * 4) / 1e9
    return results


def append_markdown(results: dict, path: Path, command: str) -> None:
    """Append ``results`` to a Markdown file as a dated JSON block headed by the command that produced them."""
    lines = [f"\n### bench run {time.strftime('%Y-%m-%d %H:%M')} — `{command}`\n",
             f"machine: {results['machine']}\n", "```json", json.dumps(results, indent=1), "```\n"]
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
