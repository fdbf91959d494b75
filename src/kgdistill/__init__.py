"""kgdistill: text-based knowledge graph completion (SimKGC) made small and fast by progressive distillation (PMD).

Public API (imports are lazy, so ``import kgdistill`` stays cheap and runs nothing):
``train``, ``evaluate``, ``distill``, ``pipeline``, ``load_dataset``, ``build_config``, ``Predictor``.
"""
__version__ = "0.1.0"

_EXPORTS = {
    "train": ("kgdistill.api", "train"),
    "evaluate": ("kgdistill.api", "evaluate"),
    "load_model": ("kgdistill.api", "load_model"),
    "distill": ("kgdistill.distill.ladder", "distill"),
    "pipeline": ("kgdistill.distill.ladder", "pipeline"),
    "load_dataset": ("kgdistill.data.dataset", "load_dataset"),
    "build_config": ("kgdistill.config", "build_config"),
    "RunConfig": ("kgdistill.config", "RunConfig"),
    "Predictor": ("kgdistill.inference.predictor", "Predictor"),
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        module, attr = _EXPORTS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'kgdistill' has no attribute {name!r}")


__all__ = list(_EXPORTS)
