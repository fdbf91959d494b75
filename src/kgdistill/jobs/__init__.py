"""Every job, each a function of a resolved :class:`~kgdistill.config.RunConfig` and a run folder: ``train``
(:mod:`~kgdistill.jobs.train`), ``evaluate`` (:mod:`~kgdistill.jobs.evaluate`), ``distill``
(:mod:`~kgdistill.jobs.distill`), ``pipeline`` (:mod:`~kgdistill.jobs.pipeline`) and ``tune``
(:mod:`~kgdistill.jobs.tune`)."""
