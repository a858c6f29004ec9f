"""Every cache jaxguides keeps, in one registry, and :func:`clear_caches` to empty them.

jaxguides holds no other state between calls. Its caches are:

- ``"optimizers"`` (``optim/canonical.py``): the first optimizer seen of each
  structure, so that ``fit(..., optax.adam(1e-2))`` written inline reuses the
  compilation of an equal optimizer built before;
- ``"chunk rates"`` (``loop/fit.py``): the chunks ``fit`` has compiled, with
  their last measured seconds per step, so that a later ``fit`` of the same
  chunk skips the compile-ahead thread and the 64-step first chunk;
- the compiled programs of ``jax.jit`` entry points registered with
  :func:`jitted` (init and the chunks, for one fit and for ``fit_many``).

The footgun they exist for, and the one they make: the first ``fit`` in a
process compiles and probes, later ones of the same (model, guide, optimizer,
shapes) start at once; results are the same either way (bit for bit), only
the timing differs. The caches hold references to optimizers, guides and
models seen; ``jg.clear_caches()`` frees them and makes the next fit behave
like the first one of a process (a benchmark of cold starts wants that).
"""

from __future__ import annotations

import collections
from typing import Any

__all__ = ["BoundedCache", "clear_caches", "jitted"]


class BoundedCache(collections.OrderedDict[Any, Any]):
    """A mapping that forgets its least recently used entry past ``max_size``
    entries; registered, so :func:`clear_caches` empties it."""

    def __init__(self, name: str, max_size: int):
        super().__init__()
        self.name, self.max_size = name, max_size
        _CACHES.append(self)

    def lookup(self, key: Any) -> Any:
        """The value at ``key`` (marked as recently used), or ``None``."""
        if key not in self:
            return None
        self.move_to_end(key)
        return self[key]

    def remember(self, key: Any, value: Any) -> None:
        """Set ``key``, forgetting the oldest entry when full."""
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.max_size:
            self.popitem(last=False)


_CACHES: list[BoundedCache] = []
_JITTED: list[Any] = []


def jitted(fn: Any) -> Any:
    """Register a ``jax.jit``-ed function whose compilations :func:`clear_caches` drops."""
    _JITTED.append(fn)
    return fn


def clear_caches() -> None:
    """Empty every cache jaxguides keeps (see the module docstring): the next fit
    traces, compiles and paces itself as the first one in a process does.

    Examples:
        >>> import jaxguides as jg
        >>> jg.clear_caches()
    """
    for cache in _CACHES:
        cache.clear()
    for fn in _JITTED:
        fn.clear_cache()
