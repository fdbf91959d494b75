"""Training state (optimiser, scheduler, step, loss buffers) as safetensors + JSON: resumable, never pickled."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import CheckpointError
from ..io import atomic_write_json, save_tensors

STATE_DIR = "trainer_state"


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_state(folder: Path, optimizer, scheduler, objective_state: dict[str, torch.Tensor],
                        progress: dict) -> None:
    """Called inside a model folder being written, before its manifest (so the manifest covers these files)."""
    out = folder / STATE_DIR
    out.mkdir(parents=True, exist_ok=True)
    tensors, meta = _flatten_optimizer(optimizer)
    save_tensors(out / "optimizer.safetensors", tensors)
    save_tensors(out / "objective.safetensors", {k: v.detach().contiguous().cpu() for k, v in objective_state.items()})
    atomic_write_json(out / "state.json", {"optimizer": meta, "scheduler": scheduler.state_dict(),
                                           "progress": progress, "cpu_rng": torch.get_rng_state().tolist()})


def load_training_state(folder: Path, optimizer, scheduler) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore the optimiser, scheduler and RNG from a checkpoint folder; returns the objective's tensors and the
    progress record."""
    out = folder / STATE_DIR
    if not (out / "state.json").is_file():
        raise CheckpointError(f"{folder}: no {STATE_DIR}/state.json; cannot resume from it")
    try:
        meta = json.loads((out / "state.json").read_text(encoding="utf-8"))
        optimizer.load_state_dict(_unflatten_optimizer(load_file(str(out / "optimizer.safetensors")), meta["optimizer"]))
        scheduler.load_state_dict(meta["scheduler"])
        objective_state = load_file(str(out / "objective.safetensors"))
        torch.set_rng_state(torch.tensor(meta["cpu_rng"], dtype=torch.uint8))
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"{out}: cannot restore training state ({str(exc).splitlines()[0][:160]})") from None
    return objective_state, meta["progress"]
