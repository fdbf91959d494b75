"""Model cards: a ``README.md`` in the Hugging Face convention (YAML front matter, then prose) for a run folder, a
pipeline grade or an export folder, built from the files already there (model.json, metrics.json, config.yaml,
run.json, train_summary.json, export.json), so that a folder explains itself wherever it is copied."""
from __future__ import annotations

from pathlib import Path

import yaml

from ..data.loading import ALIASES
from ..errors import KGDistillError
from ..io import atomic_write_text
from ..models.plm import resolve_plm
from ..runfolder import RunFolder
from .saved import RunFiles, load_run_config, read_run_files

METRICS = ("mrr", "hits@1", "hits@3", "hits@10", "mr")
METRIC_NAMES = {"mrr": "MRR", "hits@1": "Hits@1", "hits@3": "Hits@3", "hits@10": "Hits@10", "mr": "MR"}
VARIANTS = {"no_rerank": "without re-ranking", "rerank": "with graph re-ranking"}
DATA_LICENCES = {
    "wn18rr": "WordNet 3.0 (Princeton WordNet licence); the WN18RR split is by Dettmers et al. (2018)",
    "fb15k-237": "Freebase data (CC BY); the FB15k-237 split is by Toutanova & Chen (2015); descriptions are first "
                 "sentences of the DKRL descriptions (see the bundled README)",
}


def front_matter(text: str) -> dict:
    """The YAML front matter of a model card (``---`` lines around it); empty when there is none."""
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---\n", 4)
    if end < 0:
        return {}
    data = yaml.safe_load(text[4:end])
    return data if isinstance(data, dict) else {}


def _plm_licence(plm: str) -> str | None:
    """The ``license`` of the PLM's own model card, when its folder is here and has one."""
    try:
        folder = resolve_plm(plm)
        return front_matter((folder / RunFolder.CARD).read_text(encoding="utf-8")).get("license")
    except (KGDistillError, OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _dataset_name(dataset: str) -> str:
    return ALIASES.get(dataset.lower()) or Path(dataset).name or dataset


def _percent(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if metric == "mr" else f"{value * 100:.2f}"


def _model_index(name: str, dataset: str, metrics: dict) -> list[dict]:
    results = []
    for variant, label in VARIANTS.items():
        both = (metrics.get(variant) or {}).get("both")
        if not both:
            continue
        results.append({
            "task": {"type": "link-prediction", "name": f"Link prediction, filtered, {label}"},
            "dataset": {"type": dataset, "name": dataset, "split": metrics.get("split", "test")},
            "metrics": [{"type": m, "value": both[m], "name": f"{METRIC_NAMES[m]} ({label})"}
                        for m in METRICS if m in both]})
    return [{"name": name, "results": results}] if results else []


def _training_lines(config, meta: dict, run: dict, summary: dict) -> list[str]:
    info = meta.get("info") or {}
    lines = []
    if run.get("dataset"):
        lines.append(f"- Data: {run['dataset']}.")
    source = "the teacher's" if info.get("initialised_from") == "teacher" else "the PLM's"
    entity = "; the entity encoder is the teacher's" if info.get("student_side") == "query" else ""
    lines.append(f"- Encoders: {meta.get('num_layers')} layers {info.get('layer_map')} taken from {source} "
                 f"{info.get('source_layers')}{entity}; PLM `{info.get('plm')}`; {meta.get('pooling', 'mean')} "
                 "pooling.")
    if info.get("ablation") == "direct":
        lines.append(f"- No distillation: SimKGC's loss alone at this depth (a control), initialised from "
                     f"`{info.get('teacher')}`.")
    elif info.get("teacher"):
        lines.append(f"- Distilled (PMD) from the teacher `{info['teacher']}`: mask rate {info.get('mask_rate')}, "
                     f"ablation {info.get('ablation', 'none')}"
                     + (f", score weight α={config.distill.alpha}, MGFD weight β={config.distill.beta}, MGFD "
                        f"{config.distill.mgfd}" if config is not None else "") + ".")
    if config is not None:
        negatives = ["in-batch"] + (["self"] if config.loss.self_negative else []) \
            + ([f"pre-batch ({config.loss.pre_batch})"] if config.loss.pre_batch else [])
        lines.append(f"- SimKGC InfoNCE with additive margin {config.loss.margin}, negatives: "
                     f"{', '.join(negatives)}; batch {config.train.batch_size}, learning rate {config.train.lr}, "
                     f"seed {config.seed}.")
    if summary.get("steps") is not None:
        lines.append(f"- {summary['steps']} steps in {summary.get('seconds', 0):.0f} s "
                     f"({summary.get('samples_per_second', 0):.1f} samples/s).")
    precision = run.get("precision") or {}
    versions = run.get("versions") or {}
    if precision or versions:
        lines.append(f"- Run on {precision.get('device', '?')} in {precision.get('chosen', '?')}; "
                     + ", ".join(f"{k} {versions[k]}" for k in ("kgdistill", "torch", "transformers") if k in versions)
                     + ".")
    return lines


def _metrics_lines(metrics: dict) -> list[str]:
    if not any(metrics.get(v, {}).get("both") for v in VARIANTS):
        return ["No test metrics in this folder; `kgdistill evaluate --model FOLDER` writes them."]
    lines = [f"Filtered ranking of every one of the {metrics['num_entities']:,} entities on the "
             f"{metrics.get('split', 'test')} split ({metrics['num_triples']:,} triples), tail and head "
             f"prediction averaged; MRR and Hits in %.", "",
             "| | " + " | ".join(METRIC_NAMES[m] for m in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for variant, label in VARIANTS.items():
        both = metrics.get(variant, {}).get("both")
        if both:
            lines.append(f"| {label} | " + " | ".join(_percent(both.get(m), m) for m in METRICS) + " |")
    rerank = metrics.get("rerank_config")
    if rerank:
        lines += ["", f"Re-ranking adds {rerank.get('weight')} to the score of entities within {rerank.get('hops')} "
                      f"hops of the query entity in the training graph (SimKGC)."]
    return lines


def _size_lines(files: RunFiles) -> list[str]:
    meta, metrics, export, model_dir = files.meta, files.metrics, files.export, files.model_dir
    params = meta.get("parameters") or {}
    size = "-" if files.size_mb is None else f"{files.size_mb:.1f} MB"
    lines = [f"- {meta.get('num_layers')} layers, hidden size {meta.get('hidden_size')}, "
             f"{params.get('total', 0) / 1e6:.2f} M parameters in both encoders "
             f"({params.get('non_embedding', 0) / 1e6:.2f} M without embeddings), weights {size} (safetensors)."]
    if files.entities_per_s:
        lines.append(f"- The test evaluation encoded all {metrics['num_entities']:,} entities in "
                     f"{metrics['seconds']['encode_entities']:.1f} s ({files.entities_per_s:,.0f} entities/s).")
    if export:
        lines.append(f"- Exported as {export.get('export_format')}"
                     + (f", {export['quantize']} dynamic quantisation" if export.get("quantize") else "")
                     + (f"; entity index {export['index']['entities']:,} × {export['index']['dtype']}"
                        if export.get("index") else "") + ".")
        onnx = export.get("onnx") or {}
        for path in sorted({*(onnx.get("files") or {}).values(), *(onnx.get("int8_files") or {}).values()}):
            if (model_dir / path).is_file():
                lines.append(f"- `{path}`: {(model_dir / path).stat().st_size / 2**20:.1f} MB.")
    return lines


def write_model_card(folder: str | Path, name: str | None = None) -> Path:
    """Write ``folder/README.md`` for a run folder, pipeline grade or export folder; returns its path.

    ``name`` is the folder's name in the card (default: its own; an export writes the card into a staging folder).
    """
    folder = Path(folder)
    name = name or folder.name
    files = read_run_files(folder)
    model_dir, meta, info, metrics, export = files.model_dir, files.meta, files.info, files.metrics, files.export
    config = load_run_config(model_dir)
    dataset = export.get("dataset_name") or _dataset_name(
        config.data.dataset if config is not None else str(info.get("dataset", "unknown")))
    plm = str(info.get("plm", config.model.plm if config is not None else "default"))
    licence = _plm_licence(plm)
    distilled = bool(info.get("teacher")) and info.get("ablation") != "direct"
    tags = ["kgdistill", "knowledge-graph-completion", "link-prediction", "simkgc", "bi-encoder"]
    if distilled:
        tags += ["pmd", "knowledge-distillation"]
    if export.get("export_format") == "onnx":
        tags.append("onnx")
    if export.get("quantize"):
        tags.append(export["quantize"])
    head = {"library_name": "kgdistill", "license": licence or "unknown", "tags": tags, "datasets": [dataset],
            "metrics": list(METRICS)}
    model_index = _model_index(name, dataset, metrics)
    if model_index:
        head["model-index"] = model_index
    kind = (f"a {meta.get('num_layers')}-layer student distilled with PMD (progressive distillation with masked "
            f"generation features, AAAI 2024) from a SimKGC teacher" if distilled else "a SimKGC bi-encoder "
            "(ACL 2022) fine-tuned from a pre-trained language model")
    backend = ', backend="onnx"' if export.get("export_format") == "onnx" else ""
    text_of = ("name, description and, when the description is short, the names of its neighbours"
               if config is None or config.data.use_neighbors else "name and description")
    body = [
        f"# {name}", "",
        f"Text-based knowledge graph completion on **{dataset}**: {kind}. A query encoder reads the text of an "
        f"entity and a relation, an entity encoder the text ({text_of}) of every entity; the answers to "
        "(head, relation, ?) and, through inverse relations, (?, relation, tail) are the entities whose vectors are "
        "nearest. Made with kgdistill (PyTorch, offline).", "",
        "## Training", "", *_training_lines(config, meta, files.run, files.summary), "",
        "## Test metrics", "", *_metrics_lines(metrics), "",
        "## Size and speed", "", *_size_lines(files), "",
        "## How to use", "",
        "```python",
        "from kgdistill import Predictor",
        "",
        f'p = Predictor.from_pretrained("path/to/{name}"{backend})  # its own dataset, entity index beside it',
        'print(p.predict_tails("<entity id or name>", "<relation id or text>", k=5).table())',
        'p.score("<head>", "<relation>", "<tail>")',
        "```", "",
        "```bash",
        f"kgdistill predict --model path/to/{name} --head '<entity>' --relation '<relation>' -k 10",
        "```", "",
        "## Licence", "",
        f"- PLM `{plm}`: {licence or 'not recorded in its folder; see its own model card'}.",
        f"- Data ({dataset}): {DATA_LICENCES.get(dataset, 'not recorded by kgdistill; see its own terms')}.",
        "- The weights derive from both; their terms apply to this model.", ""]
    text = "---\n" + yaml.safe_dump(head, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(body)
    path = folder / RunFolder.CARD
    atomic_write_text(path, text)
    return path
