"""The optimizers ``fit``, ``fit_many`` and ``svi`` accept: optax, or NumPyro's.

NumPyro's optimizers (``numpyro.optim.Adam(0.01)``, ``ClippedAdam``, ``SGD``,
..., and ``numpyro.optim.optax_to_numpyro(tx)``) follow the
``jax.example_libraries.optimizers`` triple ``(init_fn, update_fn,
get_params_fn)``, whose state holds the params themselves. :func:`as_optax`
turns one into an optax ``GradientTransformation`` whose update is the
difference between the params NumPyro's step gives and the current ones, so
a fit takes NumPyro's steps (to float rounding); an ``optax_to_numpyro``
wrapper gives back the optax transformation it wraps, exactly. Anything else
is refused before compiling, naming what was passed and what is accepted.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from numpyro.optim import Minimize, _NumPyroOptim

__all__ = ["NumPyroOptimState", "as_optax"]


class NumPyroOptimState(NamedTuple):
    """State of a NumPyro optimizer seen as optax: its step count and own state."""

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax names it
    inner: Any


_ACCEPTED = (
    "an optax GradientTransformation (e.g. optax.adam(1e-2)) or a NumPyro optimizer "
    "(e.g. numpyro.optim.Adam(1e-2), numpyro.optim.optax_to_numpyro(optax.adam(1e-2)))"
)


def as_optax(optimizer: Any) -> optax.GradientTransformation:
    """``optimizer`` as an optax ``GradientTransformation``.

    Raises:
        TypeError: anything else (a string, an uncalled factory such as
            ``optax.adam``, NumPyro's ``Minimize``), naming it and what is accepted.
    """
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    if isinstance(optimizer, Minimize):
        raise TypeError(
            "numpyro.optim.Minimize runs a whole BFGS minimisation per call and has no per-step "
            "update for fit to take; use optax.lbfgs() (an optax GradientTransformation) instead."
        )
    if isinstance(optimizer, _NumPyroOptim):
        wrapped = _wrapped_optax(optimizer)
        return wrapped if wrapped is not None else _from_numpyro(optimizer)
    if callable(optimizer) and getattr(optimizer, "__module__", "").startswith(("optax", "numpyro.optim")):
        name = getattr(optimizer, "__qualname__", repr(optimizer))
        raise TypeError(
            f"the optimizer is {optimizer.__module__}.{name}, a factory, not an optimizer: call it, "
            f"e.g. {name}(1e-2). fit accepts {_ACCEPTED}."
        )
    raise TypeError(f"the optimizer is {optimizer!r} ({type(optimizer).__name__}); fit accepts {_ACCEPTED}.")


def _wrapped_optax(optimizer: _NumPyroOptim) -> optax.GradientTransformation | None:
    """The optax transformation inside ``numpyro.optim.optax_to_numpyro(tx)``, else ``None``."""
    fn = optimizer.update_fn
    cells = dict(zip(getattr(fn, "__code__", None) and fn.__code__.co_freevars or (), fn.__closure__ or ()))
    cell = cells.get("transformation")
    value = cell.cell_contents if cell is not None else None
    return value if isinstance(value, optax.GradientTransformation) else None


def _from_numpyro(optimizer: _NumPyroOptim) -> optax.GradientTransformation:
    if optimizer.update_with_value:
        raise TypeError(
            f"{type(optimizer).__name__} needs the loss value at each update; pass an optax "
            f"GradientTransformation instead. fit accepts {_ACCEPTED}."
        )
    if type(optimizer).update is not _NumPyroOptim.update:  # ClippedAdam clips in its own update
        return _from_numpyro_object(optimizer)
    # the functions, not the object: two numpyro.optim.Adam(1e-2) then share a compilation
    init_fn, update_fn, get_params_fn = optimizer.init_fn, optimizer.update_fn, optimizer.get_params_fn

    def init(params: Any) -> NumPyroOptimState:
        return NumPyroOptimState(jnp.zeros((), jnp.int32), init_fn(params))

    def update(grads: Any, state: NumPyroOptimState, params: Any = None) -> tuple[Any, NumPyroOptimState]:
        inner = update_fn(state.count, grads, state.inner)
        return _difference(get_params_fn(inner), params), NumPyroOptimState(state.count + 1, inner)

    return optax.GradientTransformation(init, update)


def _from_numpyro_object(optimizer: _NumPyroOptim) -> optax.GradientTransformation:
    """A NumPyro optimizer through its own ``init`` / ``update`` / ``get_params`` methods."""

    def init(params: Any) -> NumPyroOptimState:
        count, inner = optimizer.init(params)
        return NumPyroOptimState(jnp.asarray(count, jnp.int32), inner)

    def update(grads: Any, state: NumPyroOptimState, params: Any = None) -> tuple[Any, NumPyroOptimState]:
        count, inner = optimizer.update(grads, (state.count, state.inner))
        new = optimizer.get_params((count, inner))
        return _difference(new, params), NumPyroOptimState(jnp.asarray(count, jnp.int32), inner)

    return optax.GradientTransformation(init, update)


def _difference(new: Any, params: Any) -> Any:
    """The optax update that moves ``params`` to ``new`` (NumPyro's step gives params, not updates)."""
    if params is None:
        raise ValueError("a NumPyro optimizer's update needs params: call update(grads, state, params)")
    return jax.tree.map(lambda n, p: (n - p).astype(jnp.result_type(p)), new, params)
