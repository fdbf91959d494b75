"""PMD: the distillation objective (:mod:`~kgdistill.distill.objective`), the progressive ladder
(:mod:`~kgdistill.distill.ladder`: ``distill`` one stage, ``pipeline`` all of them) and its report
(:mod:`~kgdistill.distill.report`).

``kgdistill.distill`` names both this package and the ``distill`` function of the public API; once the package is
imported Python binds the name to it, so the package is callable as that function.
"""
import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from .ladder import distill

        return distill(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
