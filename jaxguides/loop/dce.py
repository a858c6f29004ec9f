"""Dead-code elimination for a function traced inside a ``lax.while_loop``.

``jax.jit`` removes dead equations from the program it lowers, recursing into
``cond``, ``scan`` and nested ``jit`` bodies, but not into a ``while_loop``'s
body (JAX has no dead-code rule for ``while``). An SVI step traced there keeps
every value it computes and drops: the threefry key splits that NumPyro's
``seed`` handler makes for sites and plates whose keys a MAP step never uses,
for instance. XLA deletes them later, but lowering them to MLIR first costs
time on every cold start (measured in ``bench/RESULTS.md``).
:func:`without_dead_code` traces the function to a jaxpr, keeps the equations
its outputs need and evaluates those in the caller's trace: same values, same
effects, a smaller loop body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.extend.core import ClosedJaxpr, jaxpr_as_fun

try:  # JAX's own pass (internal: no public API exposes it); without it, nothing is pruned
    from jax._src.interpreters.partial_eval import dce_jaxpr as _dce_jaxpr
except ImportError:  # pragma: no cover - a JAX that moved it
    _dce_jaxpr = None  # type: ignore[assignment]

__all__ = ["without_dead_code"]


def without_dead_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with the equations its outputs do not need removed.

    Args:
        fn: a pure function of pytrees of arrays (traced once per call).

    Returns:
        A function with ``fn``'s signature and results. Equations with side
        effects (callbacks, prints) are kept whether used or not.
    """
    if _dce_jaxpr is None:
        return fn

    def pruned(*args: Any) -> Any:
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        jaxpr = closed.jaxpr
        kept, used = _dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars), instantiate=True)
        inputs = [x for x, u in zip(jax.tree.leaves(args), used) if u]
        outputs = jaxpr_as_fun(ClosedJaxpr(kept, closed.consts))(*inputs)
        return jax.tree.unflatten(jax.tree.structure(out_shape), outputs)

    return pruned
