"""One object per optimizer configuration, so equal optimizers share compilations.

``fit`` compiles its chunk with the optimizer as a static argument of
``jax.jit``, and optax transformations compare by identity: two
``optax.adam(1e-2)`` objects are different cache keys, so
``jg.fit(model, guide, optax.adam(1e-2), ...)`` written inline would compile
again on every call. :func:`canonical` maps an optimizer to the first one seen
with the same *structure*: the same code objects, carrying equal Python
values (``model/identity.py``'s :func:`carried`: closure cells, defaults, a
partial's arguments; numbers, strings, tuples, dicts, functions compared the
same way).
Anything else it closes over (arrays, other objects) must be the very same
object. An optimizer it cannot describe is returned as it is, so the worst
case is what jit does anyway: a compilation per object.
"""

from __future__ import annotations

import functools
import types
from typing import Any

from jaxguides._caches import BoundedCache
from jaxguides.model.identity import carried, innermost

__all__ = ["canonical"]

_SEEN = BoundedCache("optimizers", max_size=64)  # structure -> the first optimizer seen with it
_SCALARS = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis))


def _fingerprint(obj: Any, active: set[int]) -> Any:
    """A hashable description of ``obj``; equal descriptions trace the same program."""
    if isinstance(obj, _SCALARS):
        return (type(obj), obj)
    if id(obj) in active:  # a cycle (a recursive closure): name it by identity
        return ("cycle", id(obj))
    active.add(id(obj))
    try:
        if isinstance(obj, (tuple, list)):
            return (type(obj), tuple(_fingerprint(x, active) for x in obj))
        if isinstance(obj, dict):
            return (dict, tuple((_fingerprint(k, active), _fingerprint(v, active)) for k, v in obj.items()))
        if isinstance(obj, (types.FunctionType, functools.partial)):
            core = innermost(obj)  # what runs: its code and the globals it reads
            is_function = isinstance(core, types.FunctionType)
            runs = (core.__code__, id(core.__globals__)) if is_function else _fingerprint(core, active)
            values = tuple((label, _fingerprint(v, active)) for label, v in carried(obj, defaults=True))
            return (type(obj), runs, values)
        return ("object", id(obj))  # kept alive by the registered optimizer, so the id is not reused
    finally:
        active.discard(id(obj))


def canonical(optimizer: Any) -> Any:
    """The first optimizer seen with the same structure as ``optimizer`` (or itself)."""
    if any(seen is optimizer for seen in _SEEN.values()):  # already canonical: skip the fingerprint
        return optimizer
    try:
        key = (type(optimizer), _fingerprint(tuple(optimizer), set()))
        hash(key)
    except (TypeError, RecursionError):
        return optimizer
    found = _SEEN.lookup(key)
    if found is not None:
        return found
    _SEEN.remember(key, optimizer)
    return optimizer
