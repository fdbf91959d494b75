"""Run folders as the layers above use them: a saved model's folder and config (:mod:`~kgdistill.store.saved`),
the data a job runs on (:mod:`~kgdistill.store.context`) and model cards (:mod:`~kgdistill.store.model_card`)."""
