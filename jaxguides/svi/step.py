"""One SVI step, pure: ``svi(model, guide, optimizer)`` gives ``SVI(init, step)``.

``step(state, *args) -> (state, SVIInfo)``, blackjax's way. A step whose loss or
gradient is not finite leaves params and optimizer state untouched (only the step
count moves on). Step ``i`` draws from ``fold_in(rng_key, i)``. A state with epoch
cursors (``subsample/epoch.py``) takes its rows from them; with a
``SparseTransformation`` (``optim/sparse.py``) a step differentiates and writes
only the batch's rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxguides._errors import ModelTraceError
from jaxguides.elbo.loss import ELBOLoss, elbo_loss
from jaxguides.elbo.total import total
from jaxguides.model.concrete import (
    concretization_error,
    culprits,
    explain,
    leaf_labels,
)
from jaxguides.optim.optimizers import as_optax
from jaxguides.optim.sparse import SparseTransformation, apply_rows, row_spec, take_rows
from jaxguides.optim.trained import trained_part, with_constants
from jaxguides.subsample.epoch import advance, init_subsample
from jaxguides.subsample.sampler import epoch_plates, step_rows
from jaxguides.svi.state import (
    SVI,
    SVIInfo,
    SVIState,
)

__all__ = [
    "INIT_STREAM",
    "explained_trace_error",
    "init_state",
    "svi",
    "update_step",
    "usable",
]


def explained_trace_error(
    where: str, model: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], err: Exception
) -> ModelTraceError | None:
    """When ``err`` is a concretization error about traced model args (``svi``'s
    ``init`` / ``step`` inside a user's ``jit``, ``vmap``, ``scan``), a
    ``ModelTraceError`` naming them and the fix; else ``None``."""
    cause = concretization_error(err)
    leaves = jax.tree.leaves((args, kwargs))
    traced = [i for i, x in enumerate(leaves) if isinstance(x, jax.core.Tracer)]
    if cause is None or not traced:
        return None
    fix = (
        "Keep the data the model reads in Python out of the traced arguments: close over it, e.g. "
        "jax.jit(lambda state: algo.step(state, *args)) (a NumPy array stays concrete), or use "
        "jg.fit(..., static_argnames=...)."
    )
    needed, pinned = culprits(cause, args, kwargs, traced)
    names = list(dict.fromkeys(leaf_labels(model, args, kwargs)[i] for i in needed))
    where = f"it is traced in {where} (under jax.jit, vmap or lax.scan)"
    explained = ModelTraceError(getattr(err, "site", None), explain(cause, names, pinned, where, fix))
    explained.__cause__ = cause
    return explained


def usable(grads: Any) -> jax.Array:
    """Every gradient element and its square are finite.

    Adam-family optimizers square the gradient: a finite gradient whose square
    overflows (|g| > 1.8e19 in float32) would leave ``nu = inf`` in the optimizer
    state for good. ``g * g * 0`` is 0 where ``g**2`` is finite and NaN where ``g``
    is NaN or infinite or its square overflows, so its sum is finite exactly when
    the step is usable. A sum, not a ``max |g|``: XLA:CPU vectorises it (a NaN-
    propagating max it does not), and :func:`total` gives leaves of one shape and
    dtype one reduction (the timings: ``bench/RESULTS.md``).
    """
    return jnp.isfinite(total(x * x * 0 for x in jax.tree.leaves(grads)))


def update_step(
    loss_fn: Callable[..., jax.Array],
    optimizer: optax.GradientTransformation,
    state: SVIState,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[SVIState, jax.Array, jax.Array]:
    """One SVI step. A non-finite loss or gradient (or a gradient whose square
    overflows) keeps params, optimizer state and the epoch cursors as they were;
    only the step count moves on."""
    step_key = jax.random.fold_in(state.rng_key, state.step)  # dead code, compiled away, if nothing draws
    sparse = isinstance(optimizer, SparseTransformation) and isinstance(loss_fn, ELBOLoss)
    spec, subsample, blocks = None, state.subsample, {}
    trained, constant = trained_part(state.params)

    def loss_and_state(t: Any, **rows: Any) -> tuple[jax.Array, dict[str, Any]]:
        """The loss of params ``t`` (trained part) and the model's mutable state after it."""
        params = with_constants(t, constant)
        if isinstance(loss_fn, ELBOLoss):
            return loss_fn.evaluate_with_state(params, step_key, args, kwargs, **rows)
        return loss_fn(params, step_key, *args, **kwargs), {}

    if state.subsample is None and not sparse:  # the loss draws its own rows, if any
        (loss, model_state), grads = jax.value_and_grad(loss_and_state, has_aux=True)(trained)
    else:
        if not isinstance(loss_fn, ELBOLoss):
            raise TypeError("an SVIState with epoch cursors needs the ELBOLoss it was initialised for")
        blocks = dict(loss_fn.subsample_blocks)
        subsample, indices, step_key = step_rows(
            state.params.sites.plates, state.subsample, step_key, loss_fn.guide.create_plates, blocks, args, kwargs
        )
        spec = row_spec(trained, indices) if sparse else None
        if spec is not None and any(r is not None for r in spec):  # differentiate the batch's rows only
            local = {n: jnp.arange(i.shape[0], dtype=i.dtype) for n, i in indices.items()}
            (loss, model_state), grads = jax.value_and_grad(
                lambda t: loss_and_state(t, indices=indices, guide_indices=local), has_aux=True
            )(take_rows(trained, spec))
        else:
            spec = None
            (loss, model_state), grads = jax.value_and_grad(lambda t: loss_and_state(t, indices=indices), has_aux=True)(
                trained
            )
    finite = jnp.isfinite(loss) & usable(grads)
    if model_state:  # the model's numpyro.mutable state after this step, as it was typed before
        model_state = jax.tree.map(
            lambda new, old: jnp.asarray(new, jnp.result_type(old)), model_state, constant["model_state"]
        )
    updated = {**constant, "model_state": model_state} if model_state else constant
    if spec is None:  # dense: update only on finite steps; a cond, not a select over the whole state

        def commit(t: Any, opt_state: Any, new: Any, old: Any) -> tuple[Any, Any, Any]:
            updates, opt_state = optimizer.update(grads, opt_state, t)
            return optax.apply_updates(t, updates), opt_state, new

        def keep(t: Any, opt_state: Any, new: Any, old: Any) -> tuple[Any, Any, Any]:
            return t, opt_state, old

        trained, opt_state, constant = jax.lax.cond(finite, commit, keep, trained, state.opt_state, updated, constant)
    else:  # row-sparse: the batch's rows are written in place on every step, masked by `finite`
        # (a table written in place inside a cond branch is copied whole by XLA on every step)
        updates, opt_state = optimizer.update(grads, state.opt_state, trained, rows=spec, mask=finite)
        trained = apply_rows(trained, updates, spec, mask=finite)
        constant = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, constant)
    params = with_constants(trained, constant)
    if subsample is not None:
        subsample = advance(subsample, state.params.sites.plates, finite, blocks)
    return SVIState(params, opt_state, state.rng_key, state.step + 1, subsample), loss, finite


def svi(
    model: Callable[..., Any],
    guide: Any,
    optimizer: optax.GradientTransformation,
    *,
    loss: Callable[..., jax.Array] | None = None,
) -> SVI:
    """The low-level ``SVI(init, step)`` pair for writing your own loop.

    Args:
        model: the NumPyro model.
        guide: an ``AutoNormal`` or ``AutoDelta`` of it.
        optimizer: any optax ``GradientTransformation``.
        loss: ``loss(params, rng_key, *args, **kwargs)``; default
            ``elbo_loss(model, guide)``.

    Returns:
        ``SVI(init, step)``: ``init(rng_key, *args, **kwargs) -> SVIState`` and
        ``step(state, *args, **kwargs) -> (SVIState, SVIInfo)``, as blackjax's
        algorithms return them; ``info.loss`` is the step's loss, ``info.finite``
        and ``info.skipped`` say whether it was applied. ``step`` is pure: it can
        be jitted, ``lax.scan``-ned, ``vmap``-ped and donated. A step with a
        non-finite loss or gradient keeps params and optimizer state.

    Examples:
        >>> import jax, optax, numpyro, numpyro.distributions as dist, jaxguides as jg
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> algo = jg.svi(model, jg.AutoNormal(model), optax.adam(1e-2))
        >>> state = algo.init(jax.random.PRNGKey(0), 1.0)
        >>> state, info = jax.lax.scan(lambda s, _: algo.step(s, 1.0), state, length=10)
        >>> int(state.step), info.loss.shape, bool(info.finite.all())
        (10, (10,), True)
    """
    optimizer = as_optax(optimizer)
    loss_fn = elbo_loss(model, guide) if loss is None else loss

    def init(rng_key: jax.Array, *args: Any, **kwargs: Any) -> SVIState:
        try:
            return init_state(guide, optimizer, rng_key, args, kwargs, loss_fn)
        except Exception as err:  # noqa: BLE001 - re-raised, explained if it is about traced args
            explained = explained_trace_error("svi's init", model, args, kwargs, err)
            if explained is None:
                raise
            raise explained from explained.__cause__

    def step(state: SVIState, *args: Any, **kwargs: Any) -> tuple[SVIState, SVIInfo]:
        try:
            new_state, loss, finite = update_step(loss_fn, optimizer, state, args, kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised, explained if it is about traced args
            explained = explained_trace_error("svi's step", model, args, kwargs, err)
            if explained is None:
                raise
            raise explained from explained.__cause__
        return new_state, SVIInfo(loss, finite, ~finite)

    return SVI(init, step)


INIT_STREAM = 0xFFFFFFFF  # fold_in(rng_key, this) seeds init; step i folds in i < 2**31, never this


def init_state(
    guide: Any,
    optimizer: optax.GradientTransformation,
    rng_key: jax.Array,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    loss_fn: Any = None,
) -> SVIState:
    """The state before the first step; with ``loss_fn`` an ``ELBOLoss``, epoch
    cursors for the subsampled plates it draws (see ``jaxguides/subsample/epoch.py``)."""
    # Steps run from rng_key itself, init from a key folded off it: an init that
    # draws nothing (init_to_feasible) then compiles without random-number code.
    init_key = jax.random.fold_in(rng_key, INIT_STREAM)
    params = guide.init(init_key, *args, **kwargs)
    own_rows = isinstance(loss_fn, ELBOLoss)  # a custom loss draws its rows itself
    plates = epoch_plates(params.sites, loss_fn.guide.create_plates, args, kwargs) if own_rows else ()
    subsample = init_subsample(plates, rng_key)
    return SVIState(params, optimizer.init(trained_part(params)[0]), rng_key, jnp.zeros((), jnp.int32), subsample)
