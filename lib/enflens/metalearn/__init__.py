"""Meta-SGD: the inner loop (:mod:`~enflens.metalearn.inner`), the outer loop
(:mod:`~enflens.metalearn.outer`), encoding images into latents
(:mod:`~enflens.metalearn.encode`) and the latent stores they are written to
(:mod:`~enflens.metalearn.latent_store`)."""
