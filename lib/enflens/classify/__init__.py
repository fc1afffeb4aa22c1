"""Classifiers: latent-cloud models (:mod:`~enflens.classify.latent_models`), image CNNs
(:mod:`~enflens.classify.image_models`), the study's model registry and augmentations
(:mod:`~enflens.classify.registry`) and the trainer (:mod:`~enflens.classify.train`)."""
