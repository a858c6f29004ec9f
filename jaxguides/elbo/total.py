"""One scalar from many arrays, with as few reductions as possible."""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp


def total(arrays: Iterable[jax.Array]) -> jax.Array:
    """``sum(jnp.sum(a) for a in arrays)``, adding arrays of one shape and dtype
    elementwise first, so each (shape, dtype) costs one reduction.

    On XLA:CPU each reduction is a kernel of its own that reads (and often first
    materialises) its whole input; the ELBO's per-site log densities of one
    plate and the non-finite guard's per-leaf terms share one instead.
    Empty arrays are left out; no arrays give a float32 zero.
    """
    groups: dict[tuple[tuple[int, ...], jnp.dtype], jax.Array] = {}
    for a in arrays:
        a = jnp.asarray(a)
        if a.size:
            key = (a.shape, a.dtype)
            groups[key] = groups[key] + a if key in groups else a
    sums = [jnp.sum(g) for g in groups.values()]
    return sum(sums[1:], sums[0]) if sums else jnp.zeros((), jnp.float32)
