"""The evaluation jobs: a just-trained model in its run folder, or any saved model."""
from __future__ import annotations

import copy
from pathlib import Path

from ..config import RunConfig
from ..evaluation.ranking import EvaluationResult
from ..models.biencoder import BiEncoder
from ..runtime import pick_device
from ..store.context import DataContext
from ..store.saved import chosen_checkpoint, load_model, model_config
from ..runfolder import RunFolder


def evaluate_in_run(run_dir: Path, data: DataContext, model: BiEncoder, config: RunConfig,
                    progress: bool = True) -> EvaluationResult:
    """Evaluate a run's just-trained model (its best checkpoint with ``eval.checkpoint=best``); writes
    ``metrics.json`` into the run folder."""
    if config.eval.checkpoint == "best" and (run_dir / RunFolder.BEST).exists():
        model = BiEncoder.load(run_dir / RunFolder.BEST)
    result = data.evaluator().evaluate(model.to(pick_device(config.train.device)), progress=progress)
    result.save(run_dir)
    return result


def evaluate(model_path: str | Path, config: RunConfig | None = None, output: str | Path | None = None,
             progress: bool = True) -> EvaluationResult:
    """Filtered ranking of a saved model on ``eval.split`` (default test); writes ``metrics.json`` into the folder
    given (a run folder, or one of its checkpoint folders, whose metrics then leave the run's own untouched) or into
    ``output``.

    ``config`` (default: the defaults) supplies the evaluation and device settings; the model's own dataset, text
    settings and precision apply unless the config's ``data.dataset`` or ``train.precision`` was set by the user (so
    a run trained at fp32 is not re-scored in bf16 behind its back), and a run folder is scored at the checkpoint it
    was evaluated at when trained unless ``eval.checkpoint`` was (:func:`~kgdistill.store.saved.chosen_checkpoint`)."""
    config = copy.deepcopy(config or RunConfig())
    config.eval.checkpoint = chosen_checkpoint(model_path, config)
    model, tokenizer, folder = load_model(model_path, config.eval.checkpoint)
    job = model_config(folder, config.data.dataset if "data.dataset" in config.explicit else None)
    job.eval, job.train.device = config.eval, config.train.device
    if "train.precision" in config.explicit:
        job.train.precision = config.train.precision
    data = DataContext(job, tokenizer)
    device = pick_device(job.train.device)
    result = data.evaluator(device).evaluate(model.to(device), progress=progress)
    result.save(Path(output) if output else Path(model_path))
    return result
