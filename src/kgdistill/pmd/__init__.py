"""PMD's planning: the ladder's stages and their configs (:mod:`~kgdistill.pmd.plan`) and the report over
their run folders (:mod:`~kgdistill.pmd.report`). The jobs that run them are ``kgdistill.jobs.distill`` and
``kgdistill.jobs.pipeline``."""
