"""Data: the lensing simulator (:mod:`~enflens.data.lensing`), the HDF5 dataset store
(:mod:`~enflens.data.store`, re-exported here) and noise-free re-renders
(:mod:`~enflens.data.renders`). Command line: ``python -m enflens.data --help``."""

from enflens.data.store import (
    CLASS_ALIASES,
    FORMAT,
    IMPORT_FORMAT,
    PARAM_FIELDS,
    SPLITS,
    DataFileError,
    LensingSet,
    SplitRows,
    generate,
    images_sha256,
    import_deeplense,
    load,
    main,
    sample_params,
)

__all__ = [
    "CLASS_ALIASES",
    "FORMAT",
    "IMPORT_FORMAT",
    "PARAM_FIELDS",
    "SPLITS",
    "DataFileError",
    "LensingSet",
    "SplitRows",
    "generate",
    "images_sha256",
    "import_deeplense",
    "load",
    "main",
    "sample_params",
]
