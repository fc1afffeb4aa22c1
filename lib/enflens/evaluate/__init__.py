"""Evaluation: classification metrics (:mod:`~enflens.evaluate.metrics`) and rotation
robustness of fits, latents and classifiers (:mod:`~enflens.evaluate.rotation`)."""
