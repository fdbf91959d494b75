"""Hyperparameter search on the validation split with Optuna (what PyKEEN's ``hpo_pipeline`` is to PyKEEN).

The search space maps config keys to distributions (the ``search`` section of ``kgdistill tune --config FILE``)::

    search:
      train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
      train.batch_size: {type: categorical, choices: [64, 128]}
      train.max_steps: {type: int, low: 100, high: 400, step: 100}
      distill.grades[0].lr: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}

Every trial runs in ``DIR/trials/trial-NNNN`` on the base config with its sampled values and ``eval.split=valid``:
the test split is never evaluated. Its objective is the filtered valid MRR without re-ranking (the train job's
evaluation; the pipeline job's smallest student). The train job reports every validation's selection metric
(``valid_mrr`` with ``train.valid_ranking``, else ``valid_acc@1``) to the pruner; a pruned trial stops after writing
its last checkpoint, so its folder is a run that ``train --resume`` continues.

``DIR/study.db`` (SQLite) holds the study, so a second call on the same folder continues it up to ``trials`` finished
(complete or pruned) trials in all, and a trial killed mid-run is run again with its parameters. Afterwards
``DIR/best_config.yaml`` is the best trial's config with the base's ``eval.split`` (what ``kgdistill train --config``
takes), ``DIR/trials.md`` / ``trials.json`` the table and ``DIR/trials.png`` the plot. Needs Optuna
(``pip install 'kgdistill[tune]'``).
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import RunConfig, config_from_dict, load_config_file
from ..errors import ConfigError, KGDistillError
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text, lock_folder
from ..results import Result, figure_png
from ..training.callbacks import Callback, StepEnd, selection_metric
from .pipeline import pipeline
from .train import train
from ..runfolder import RunFolder

STUDY = "study.db"
STUDY_NAME = "kgdistill-tune"
TRIALS = "trials"
TRIAL_INFO = "trial.json"
BEST_CONFIG = "best_config.yaml"
PRUNERS = ("median", "hyperband", "none")
KINDS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"}, "categorical": {"choices"}}
_PART = re.compile(r"^([A-Za-z_]\w*)((?:\[\d+\])*)$")

# A trial's job: (config, run folder, callbacks for the trainer) -> the objective, valid MRR.
TrialJob = Callable[[RunConfig, Path, list[Callback]], float]


def _optuna():
    try:
        import optuna
    except ImportError:
        raise KGDistillError("kgdistill tune needs Optuna (pip install 'kgdistill[tune]')") from None
    return optuna


def make_pruner(name: str):
    """An Optuna pruner by name: median (Optuna's default), hyperband or none."""
    optuna = _optuna()
    if name not in PRUNERS:
        raise KGDistillError(f"pruner {name!r}: expected one of {', '.join(PRUNERS)}")
    return {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
            "none": optuna.pruners.NopPruner}[name]()


# ---------------------------------------------------------------------------------------------------- the space
def _path(key: str) -> list[str | int]:
    """``distill.grades[0].lr`` -> ``['distill', 'grades', 0, 'lr']``."""
    out: list[str | int] = []
    for part in key.split("."):
        match = _PART.match(part)
        if not match:
            raise ConfigError(f"search key '{key}': expected dotted config keys with [index] for list items")
        out.append(match.group(1))
        out += [int(i) for i in re.findall(r"\d+", match.group(2))]
    return out


def set_key(values: dict, key: str, value: Any) -> None:
    """Set a dotted config key (list items by ``[index]``) in nested config dicts; it must already exist there."""
    node: Any = values
    path = _path(key)
    for depth, part in enumerate(path):
        here = key if depth == len(path) - 1 else ".".join(str(p) for p in path[:depth + 1])
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise ConfigError(f"search key '{key}': the base config has no item {part} there (set the list, e.g. "
                                  f"distill.grades, in the base config first)")
        elif not isinstance(node, dict) or part not in node:
            raise ConfigError(f"search key '{key}': unknown config key '{here}'")
        if depth == len(path) - 1:
            if isinstance(node[part], (dict, list)):
                raise ConfigError(f"search key '{key}': a section or list, not a value")
            node[part] = value
        else:
            node = node[part]


def check_space(space: Any, base: RunConfig) -> dict[str, dict]:
    """The search space, checked: every key a config value of ``base``, every distribution well formed."""
    if not isinstance(space, dict) or not space:
        raise ConfigError("search: expected a mapping of config keys to distributions, e.g. "
                          "train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}")
    values = base.to_dict()
    for key, spec in space.items():
        where = f"search key '{key}'"
        if not isinstance(spec, dict) or spec.get("type") not in KINDS:
            raise ConfigError(f"{where}: expected {{type: float|int|categorical, ...}}, got {spec!r}")
        unknown = set(spec) - KINDS[spec["type"]] - {"type"}
        if unknown:
            raise ConfigError(f"{where}: unknown field '{sorted(unknown)[0]}' for type {spec['type']}")
        if spec["type"] == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices or \
                    not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
                raise ConfigError(f"{where}: 'choices' must be a non-empty list of numbers, strings, booleans or null")
        else:
            number = int if spec["type"] == "int" else (int, float)
            low, high = (_number(spec.get(b), f"{where}: '{b}'", number) for b in ("low", "high"))
            if not low <= high:
                raise ConfigError(f"{where}: 'low' {low} is above 'high' {high}")
            if spec.get("log") and low <= 0:
                raise ConfigError(f"{where}: a log scale needs 'low' > 0")
        set_key(values, key, None)  # the key exists in the base config
    return space


def _number(value: Any, where: str, kind) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-5 (without a dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    return value


def load_tune_file(path: str | Path) -> tuple[dict, dict]:
    """The base config values (every section but ``search``) and the search space (``search``) of a tune file."""
    values = load_config_file(path)
    space = values.pop("search", None)
    if space is None:
        raise ConfigError(f"{path}: no 'search' section (config key -> distribution, e.g. train.lr: "
                          f"{{type: float, low: 1.0e-5, high: 1.0e-3, log: true}})")
    return values, space


def _suggest(trial, key: str, spec: dict) -> Any:
    if spec["type"] == "categorical":
        return trial.suggest_categorical(key, spec["choices"])
    low, high = (_number(spec[b], key, (int, float)) for b in ("low", "high"))
    if spec["type"] == "int":
        return trial.suggest_int(key, int(low), int(high), step=spec.get("step", 1), log=spec.get("log", False))
    return trial.suggest_float(key, float(low), float(high), step=spec.get("step"), log=spec.get("log", False))


def trial_config(base: RunConfig, params: dict[str, Any], split: str = "valid") -> RunConfig:
    """``base`` with a trial's values, evaluated on ``split``; validated like any config."""
    values = base.to_dict()
    for key, value in params.items():
        set_key(values, key, value)
    values["eval"]["split"] = split
    return config_from_dict(values)


# ---------------------------------------------------------------------------------------------------- trials
class PruneOnValidation(Callback):
    """Reports every validation's selection metric to an Optuna trial; when its pruner says so, training stops at the
    end of that step (after the log and checkpoint callbacks ran), with a fresh ``checkpoint-last``."""

    def __init__(self, trial):
        self.trial, self.prune = trial, False
        self.reported: dict[int, float] = {}  # step -> value

    def on_validate(self, trainer, metrics: dict) -> None:
        self.reported[trainer.step] = float(metrics[selection_metric(metrics)])
        self.trial.report(self.reported[trainer.step], trainer.step)
        self.prune = self.trial.should_prune()

    def on_step_end(self, trainer, step: StepEnd) -> None:
        if self.prune:
            trainer.save(RunFolder.LAST)
            raise _optuna().TrialPruned(f"pruned at step {step.step}")


def train_trial(config: RunConfig, run_dir: Path, callbacks: list[Callback]) -> float:
    """The train job as a trial: a teacher trained and evaluated on ``config.eval.split``; its filtered MRR."""
    outcome = train(config, run_dir, progress=False, callbacks=callbacks)
    return float(outcome.evaluation.metrics["no_rerank"]["both"]["mrr"])


def pipeline_trial(config: RunConfig, run_dir: Path, callbacks: list[Callback]) -> float:
    """The pipeline job as a trial: the whole ladder, evaluated on ``config.eval.split``; the smallest PMD student's
    MRR. Not pruned: the ladder takes no trainer callbacks."""
    rows = pipeline(config, run_dir, progress=False).rows
    row = next((r for r in reversed(rows) if r["kind"] == "pmd"), rows[-1])
    return float(row["no_rerank"]["mrr"])


JOBS = {"train": train_trial, "pipeline": pipeline_trial}


def _requeue_killed(study, storage, optuna) -> None:
    """Trials left running by a killed process (this folder is locked, so none is alive) are failed and their
    parameters queued again, once; so are trials interrupted by Ctrl-C."""
    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    for t in study.trials:
        killed = t.state == optuna.trial.TrialState.RUNNING
        if killed:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        if (killed or t.user_attrs.get("interrupted")) and t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})


def _open_study(out: Path, base: RunConfig, space: dict, job_name: str, sampler, pruner):
    optuna = _optuna()
    storage = optuna.storages.RDBStorage(f"sqlite:///{(out / STUDY).resolve()}")
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True,
                                sampler=sampler, pruner=pruner)
    if sampler is None:  # seeded, and seeded anew on a resume, which would otherwise repeat the first samples
        study.sampler = optuna.samplers.TPESampler(seed=base.seed + len(study.trials))
    setup = {"base_config": base.to_dict(), "space": space, "job": job_name}
    saved = {key: study.user_attrs.get(key) for key in setup}
    if not study.trials and saved["space"] is None:
        for key, value in setup.items():
            study.set_user_attr(key, value)
    else:
        for key, value in setup.items():
            if saved[key] != json.loads(json.dumps(value)):
                raise KGDistillError(f"{out / STUDY}: holds a study with another {key.replace('_', ' ')}; continue it "
                                     f"with the same settings or choose another output folder")
    _requeue_killed(study, storage, optuna)
    return study


def tune(config: RunConfig, space: dict, output_dir: str | Path, trials: int, job: str | TrialJob = "train",
         sampler=None, pruner=None) -> TuneResult:
    """Search ``space`` around ``config`` until ``output_dir`` holds ``trials`` finished trials (see the module's
    docstring); returns the table of every trial and the best one.

    ``job`` runs one trial: ``train`` (:func:`train_trial`), ``pipeline`` (:func:`pipeline_trial`) or a
    :data:`TrialJob`; ``sampler`` and ``pruner`` are Optuna's (default: TPE seeded with ``config.seed`` plus the number
    of trials already in the study, and the median pruner)."""
    optuna = _optuna()
    if trials < 1:
        raise KGDistillError(f"trials {trials}: must be at least 1")
    if isinstance(job, str) and job not in JOBS:
        raise KGDistillError(f"job {job!r}: expected one of {', '.join(JOBS)} or a function")
    job_name, run_job = (job, JOBS[job]) if isinstance(job, str) else (getattr(job, "__name__", "custom"), job)
    space = check_space(space, config)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    lock_folder(out)  # one process a study: trials found running were killed
    study = _open_study(out, config, space, job_name, sampler, pruner)
    State = optuna.trial.TrialState

    def objective(trial) -> float:
        run_dir = out / TRIALS / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        params = {key: _suggest(trial, key, spec) for key, spec in space.items()}
        try:
            trial_cfg = trial_config(config, params)
        except ConfigError as exc:
            raise ConfigError(f"trial {trial.number} ({_params_text(params)}): {exc}") from None
        info = {"number": trial.number, "params": params, "run_dir": str(run_dir)}
        pruning = PruneOnValidation(trial)
        try:
            value = run_job(trial_cfg, run_dir, [pruning])
        except optuna.TrialPruned as exc:
            atomic_write_json(run_dir / TRIAL_INFO, {**info, "state": "pruned", "reason": str(exc),
                                                     "reported": pruning.reported})
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        atomic_write_json(run_dir / TRIAL_INFO, {**info, "state": "complete", "value": value})
        return value

    done = sum(t.state in (State.COMPLETE, State.PRUNED) for t in study.trials)
    if done < trials:
        study.optimize(objective, n_trials=trials - done, catch=())
    result = TuneResult.from_study(out, study, config)
    result.save(out)
    return result


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------------- results
@dataclass
class TuneResult(Result):
    """What ``tune`` returns: one row per trial (number, state, objective, parameters, run folder, last step reported)
    and the best trial's config (``best_config``: nested dicts, the base's ``eval.split``), None before any
    completed trial."""

    output_dir: Path
    trials: list[dict]
    best: dict | None
    best_config: dict | None

    @classmethod
    def from_study(cls, out: Path, study, base: RunConfig) -> TuneResult:
        """The table of a study; the best trial's config rebuilt from ``base`` and its parameters."""
        rows = []
        for t in sorted(study.trials, key=lambda t: t.number):
            steps = sorted(t.intermediate_values)
            seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
                if t.datetime_complete and t.datetime_start else None
            rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
                         "last_step": steps[-1] if steps else None,
                         "last_reported": t.intermediate_values[steps[-1]] if steps else None,
                         "seconds": seconds, "run_dir": t.user_attrs.get("run_dir")})
        complete = [r for r in rows if r["state"] == "complete"]
        best = max(complete, key=lambda r: r["value"]) if complete else None
        best_config = None
        if best is not None:
            best_config = trial_config(base, best["params"], base.eval.split).to_dict()
        return cls(out, rows, best, best_config)

    def to_dict(self) -> dict:
        """What ``trials.json`` holds."""
        return {"output_dir": str(self.output_dir), "best": self.best, "trials": self.trials}

    def table(self) -> str:
        """The trials as a Markdown table (``trials.md``), the best one marked."""
        keys = list(self.trials[0]["params"]) if self.trials else []
        lines = ["| trial | state | valid MRR | " + " | ".join(keys) + (" | " if keys else "") + "last step | s |",
                 "|---|---|---|" + "---|" * len(keys) + "---|---|"]
        for r in self.trials:
            mark = " (best)" if self.best is not None and r["number"] == self.best["number"] else ""
            value = f"{r['value'] * 100:.2f}{mark}" if r["value"] is not None else "-"
            params = "".join(f"{_fmt(r['params'].get(k, '-'))} | " for k in keys)
            seconds = f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"
            lines.append(f"| {r['number']} | {r['state']} | {value} | {params}{r['last_step'] or '-'} | {seconds} |")
        if self.best is not None:
            lines += ["", f"best: trial {self.best['number']}, valid MRR {self.best['value'] * 100:.2f} "
                          f"({_params_text(self.best['params'])}); config in {self.output_dir / BEST_CONFIG}"]
        return "\n".join(lines)

    def plot(self) -> bytes:
        """PNG: the objective of every trial and the best so far; pruned trials at their last reported value."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        complete = [r for r in self.trials if r["state"] == "complete"]
        pruned = [r for r in self.trials if r["state"] == "pruned" and r["last_reported"] is not None]
        ax.plot([r["number"] for r in complete], [r["value"] for r in complete], "o", label="valid MRR (complete)")
        if pruned:
            ax.plot([r["number"] for r in pruned], [r["last_reported"] for r in pruned], "x", color="grey",
                    label="pruned (last value reported to the pruner)")
        best, xs, ys = -math.inf, [], []
        for r in complete:
            best = max(best, r["value"])
            xs.append(r["number"])
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("trial")
        ax.set_ylabel("valid MRR (filtered, no re-rank)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return figure_png(fig, dpi=100)

    def save(self, folder: str | Path) -> Path:
        """``trials.json``, ``trials.md``, ``trials.png`` and, once a trial completed, ``best_config.yaml``."""
        folder = Path(folder)
        atomic_write_json(folder / "trials.json", self.to_dict())
        atomic_write_text(folder / "trials.md", self.table() + "\n")
        atomic_write_bytes(folder / "trials.png", self.plot())
        if self.best_config is not None:
            header = (f"# best of {len(self.trials)} trials: trial {self.best['number']}, valid MRR "
                      f"{self.best['value']:.4f} ({_params_text(self.best['params'])})\n"
                      f"# its run folder: {self.best['run_dir']}\n")
            atomic_write_text(folder / BEST_CONFIG, header + yaml.safe_dump(self.best_config, sort_keys=False))
        return folder

