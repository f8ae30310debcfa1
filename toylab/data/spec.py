"""Argument validation and the ``spec`` contract shared by every toylab dataset.

Every dataset describes itself with a JSON-serialisable ``spec`` dict (only
``str``/``int``/``float``/``bool``/``list``/``None`` values) whose ``"kind"``
names the class; :func:`toylab.data.make_dataset` rebuilds the dataset from it.
The helpers here check constructor arguments and spec dicts and raise
:class:`ValueError` messages that say what was expected and what was got.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable


def _describe(value: Any) -> str:
    """A short ``repr`` with the type, for error messages."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def check_int(name: str, value: Any, *, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) in ``[minimum, maximum]``.

    Raises:
        ValueError: naming the argument, the expected range and the value got.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {_describe(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_float(name: str, value: Any, *, minimum: float | None = None,
                maximum: float | None = None) -> float:
    """Return ``float(value)`` if it is a finite real number in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_probability(name: str, value: Any) -> float:
    """Return ``float(value)`` if it is a probability in ``[0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a probability in [0, 1], got {_describe(value)}")
    value = float(value)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    return value


def check_seed(seed: Any) -> int:
    """Return ``seed`` if it is an ``int`` (any sign; not a ``bool``)."""
    return check_int("seed", seed)


def check_spec(spec: Any, kind: str, fields: Iterable[str]) -> dict[str, Any]:
    """Check that ``spec`` is a dict for ``kind`` holding exactly ``fields`` besides ``"kind"``.

    Returns:
        The constructor keyword arguments: ``spec`` without ``"kind"``.

    Raises:
        ValueError: if a field is missing or unexpected, listing the required fields.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"a dataset spec must be a dict, got {_describe(spec)}")
    if spec.get("kind") != kind:
        raise ValueError(f"expected a spec with kind {kind!r}, got kind {spec.get('kind')!r}")
    required = sorted(fields)
    present = sorted(k for k in spec if k != "kind")
    missing = [f for f in required if f not in spec]
    unexpected = [f for f in present if f not in required]
    if missing or unexpected:
        raise ValueError(
            f"spec of kind {kind!r} must have the fields {required} (plus 'kind'); "
            f"missing {missing}, unexpected {unexpected}"
        )
    return {k: spec[k] for k in required}


def check_json_able(spec: dict[str, Any]) -> dict[str, Any]:
    """Assert (cheaply) that ``spec`` survives a JSON round trip unchanged; return it."""
    if json.loads(json.dumps(spec)) != spec:  # pragma: no cover - a programming error
        raise AssertionError(f"spec is not JSON round-trippable: {spec}")
    return spec
