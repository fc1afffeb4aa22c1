"""The study: one cached function per stage (:mod:`~enflens.study.stages`), the cache
(:mod:`~enflens.study.cache`), the papermill pipeline (:mod:`~enflens.study.pipeline`), where
results and figures go (:mod:`~enflens.study.results`) and the report
(:mod:`~enflens.study.report`)."""
