"""Config dataclasses from plain dicts (profiles, checkpoints, cache records).

One place for the check every config goes through: keys that the dataclass does not have are an
error that names the config and lists the allowed keys (a typo in a profile must never be
silently ignored), and JSON lists become tuples where the dataclass holds tuples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def check_keys(given: Iterable[str], allowed: Iterable[str], what: str) -> None:
    """Raise ValueError naming ``what`` if ``given`` has keys outside ``allowed``.

    >>> check_keys({"a": 1}, ["a", "b"], "demo")
    >>> check_keys({"c": 1}, ["a", "b"], "demo")
    Traceback (most recent call last):
    ...
    ValueError: demo: unknown keys ['c']; allowed ['a', 'b']
    """
    allowed = sorted(allowed)
    bad = sorted(set(given) - set(allowed))
    if bad:
        raise ValueError(f"{what}: unknown keys {bad}; allowed {allowed}")


def from_dict(cls: type[T], values: Mapping[str, Any] | None, what: str) -> T:
    """``cls(**values)`` for a dataclass ``cls``, with unknown keys rejected (:func:`check_keys`)
    and lists turned into tuples (JSON has no tuples).

    >>> @dataclasses.dataclass
    ... class C:
    ...     a: int = 1
    ...     b: tuple = (1, 2)
    >>> from_dict(C, {"b": [3, 4]}, "C")
    C(a=1, b=(3, 4))
    """
    values = dict(values or {})
    check_keys(values, [f.name for f in dataclasses.fields(cls)], what)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config dataclass (tuples kept), the inverse of :func:`from_dict`."""
    return dataclasses.asdict(cfg)
