"""Conditional neural fields: the ENF decoder (:mod:`~enflens.fields.enf`), the Functa-style CNF
baseline (:mod:`~enflens.fields.cnf`) and the adapters that let one Meta-SGD loop fit either
(:mod:`~enflens.fields.adapters`)."""
