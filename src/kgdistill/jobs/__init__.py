"""Jobs on run folders, shared by every layer above: a saved model's folder and config
(:mod:`~kgdistill.jobs.saved`), the data a job runs on (:mod:`~kgdistill.jobs.context`), the teacher's training
(:mod:`~kgdistill.jobs.train`), evaluation (:mod:`~kgdistill.jobs.evaluate`) and model cards
(:mod:`~kgdistill.jobs.model_card`)."""
