"""The SVI loop: a pure ``init`` / ``step`` pair, and ``fit`` on top of it.

``svi(model, guide, optimizer)`` gives blackjax-style ``SVI(init, step)``:
``init(rng_key, *args, **kwargs) -> SVIState`` and
``step(state, *args, **kwargs) -> (state, loss)``, both pure and jittable.
A step whose loss or gradient is not finite leaves params and optimizer
state untouched (only the step count moves on). Step ``i`` draws its random
numbers from ``fold_in(rng_key, i)``; ``state.rng_key`` stays the key given.

``fit`` runs steps in compiled chunks (a ``lax.while_loop`` of up to
``chunk_size`` steps), shows a tqdm bar with the running loss between chunks,
stops on a non-finite step with the last finite state (or skips such steps),
and writes atomic checkpoints it resumes from bit for bit (only for the run
that wrote them: ``_run_identity.py``). It refuses NaN data first
(``_data_check.py``), and stops on Ctrl-C at a chunk boundary
(``_interrupt.py``); XLA compiles on two compile threads while the main thread
traces and then waits, so that Ctrl-C is seen even during a long compile. ``fit_many`` fits K
seeds (or K datasets) at once with ``vmap``.

Subsampled plates: ``init`` gives every subsampled plate that the fit draws
itself an epoch cursor (``SVIState.subsample``, see ``_epoch.py``), so a step
takes the next batch of rows of a per-epoch permutation, computed for that
batch only, in O(batch), instead of NumPyro's O(N) draw per step. With
``optimizer=jg.sparse_adam(...)`` a step differentiates the loss with respect
to the batch's rows of the local latents only and updates just those rows
(``_sparse.py``): O(batch), not O(N).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxguides._canonical import canonical
from jaxguides._checkpoint import Checkpointer, opened, read_fit_checkpoint, resume_state, write_fit_checkpoint
from jaxguides._concrete import (
    Concrete,
    arg_entries,
    concretization_error,
    culprits,
    explain,
    leaf_labels,
    numpy_args,
    static_leaves,
)
from jaxguides._data_check import check_finite_data, nonfinite_members
from jaxguides._dce import without_dead_code
from jaxguides._elbo import ELBOLoss, elbo_loss
from jaxguides._epoch import SubsampleState, advance, init_subsample, next_batch
from jaxguides._errors import FitInterrupted, ModelTraceError, NonFiniteLossError
from jaxguides._interrupt import current as current_interrupts
from jaxguides._interrupt import interruptible
from jaxguides._optimizers import as_optax
from jaxguides._run_identity import Record, run_record
from jaxguides._sharding import PlateLayout, place, shard_args
from jaxguides._sparse import SparseTransformation, apply_rows, row_spec, take_rows
from jaxguides._subsample import Indices, draw_indices, user_plate_indices
from jaxguides._total import total
from jaxguides._trained import trained_part, with_constants

__all__ = ["SVI", "FitResult", "SVIState", "fit", "fit_many", "svi"]


class SVIState(NamedTuple):
    """Everything a fit needs to go on: a pytree, saved whole in checkpoints.

    Attributes:
        params: the guide's params.
        opt_state: the optax optimizer state.
        rng_key: the fit's key; step ``i`` draws from ``fold_in(rng_key, i)``,
            so a step that draws nothing costs no random-number work.
        step: number of steps taken (``int32`` scalar).
        subsample: the epoch cursors of the subsampled plates the fit draws
            itself (:class:`SubsampleState`), or ``None``: no such plate, a
            custom loss, or a state built by hand, whose steps draw each
            batch afresh as NumPyro does.
    """

    params: Any
    opt_state: optax.OptState
    rng_key: jax.Array
    step: jax.Array
    subsample: SubsampleState | None = None


class SVI(NamedTuple):
    """A pair of pure functions, ``init`` and ``step`` (see :func:`svi`)."""

    init: Callable[..., SVIState]
    step: Callable[..., tuple[SVIState, jax.Array]]


# ---- arguments: arrays are traced, everything else is static --------------------
@dataclasses.dataclass(frozen=True)
class _Static:
    treedef: Any
    leaves: tuple[tuple[int, Any], ...]


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _partition(
    args: tuple[Any, ...], kwargs: dict[str, Any], concrete: set[int] | frozenset[int] = frozenset()
) -> tuple[list[Any], _Static]:
    """``(dynamic, static)``: array leaves traced, the rest static; the array
    leaves at positions ``concrete`` are static too, by value (see ``_concrete.py``)."""
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    traced = [_is_array(x) and i not in concrete for i, x in enumerate(leaves)]
    dynamic = [x if t else None for x, t in zip(leaves, traced)]
    static = tuple((i, Concrete(x) if _is_array(x) else x) for i, (x, t) in enumerate(zip(leaves, traced)) if not t)
    try:
        hash(static)
    except TypeError as err:
        raise TypeError(f"model arguments must be arrays or hashable Python values: {err}") from None
    return dynamic, _Static(treedef, static)


def _combine(dynamic: list[Any], static: _Static) -> tuple[tuple[Any, ...], dict[str, Any]]:
    fixed = {i: x.value if isinstance(x, Concrete) else x for i, x in static.leaves}
    leaves = [fixed[i] if i in fixed else x for i, x in enumerate(dynamic)]
    return jax.tree_util.tree_unflatten(static.treedef, leaves)


def _with_concrete_args(
    name: str,
    run: Callable[..., Any],
    model: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    static_argnames: Sequence[int | str],
) -> Any:
    """``run(args, kwargs, concrete)`` with the leaves ``static_argnames`` names
    kept concrete. If tracing the model fails on a traced value, once more with
    every NumPy array argument concrete too, with a warning; an error that
    remains names the argument and ``static_argnames``. Such an error is raised
    while tracing, before any step has run, so the second run starts afresh."""
    concrete = static_leaves(model, args, kwargs, static_argnames)
    for attempt in range(2):
        try:
            return run(args, kwargs, concrete)
        except Exception as err:  # noqa: BLE001 - only a concretization error is handled
            cause = concretization_error(err)
            if cause is None:
                raise
            labels, entries = leaf_labels(model, args, kwargs), arg_entries(model, args, kwargs)
            leaves = jax.tree.leaves((args, kwargs))
            traced = [i for i, x in enumerate(leaves) if _is_array(x) and i not in concrete]
            needed, pinned = culprits(cause, args, kwargs, traced)
            names = list(dict.fromkeys(labels[i] for i in needed))
            suggest = tuple(dict.fromkeys(entries[i] for i in needed))
            numpy_leaves = {i for i in traced if isinstance(leaves[i], (np.ndarray, np.generic))}
            more = numpy_args(args, kwargs, concrete)
            if attempt == 1 or not numpy_leaves or (pinned and not numpy_leaves & set(needed)):
                fix = (
                    f"Keep it concrete with {name}(..., static_argnames={suggest!r}) (a jax.Array is kept concrete "
                    "only when named there): its value then keys the compilation, one compilation per distinct value."
                )
                site = getattr(err, "site", None)
                raise ModelTraceError(site, explain(cause, names, pinned, f"{name} traces it", fix)) from cause
            kept = [labels[i] for i in sorted(numpy_leaves)]
            warnings.warn(
                f"{name}: the model needs the concrete value of {', '.join(names)}; it is traced again with the "
                f"NumPy array arguments {list(dict.fromkeys(kept))} kept concrete (static). Each distinct value of "
                "them compiles anew, and each is a constant of the compiled program: keep concrete only what the "
                f"model reads in Python, {name}(..., static_argnames={suggest!r}), which also silences this.",
                stacklevel=3,
            )
            concrete = concrete | static_leaves(model, args, kwargs, more)
    raise AssertionError("unreachable")


def _explained(
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


# ---- one step -----------------------------------------------------------------------
def _usable(grads: Any) -> jax.Array:
    """Every gradient element and its square are finite.

    Adam-family optimizers square the gradient: a finite gradient whose square
    overflows (|g| > 1.8e19 in float32) would leave ``nu = inf`` in the optimizer
    state for good. ``g * g * 0`` is 0 where ``g**2`` is finite and NaN where ``g``
    is NaN or infinite or its square overflows, so its sum is finite exactly when
    the step is usable. A sum, not a ``max |g|``: XLA:CPU vectorises it (a NaN-
    propagating max it does not), and :func:`total` gives leaves of one shape and
    dtype one reduction (hierarchical K=1,000 AutoDelta: 4.6 -> 3.9 µs a step).
    """
    return jnp.isfinite(total(x * x * 0 for x in jax.tree.leaves(grads)))


def _epoch_plates(loss_fn: Any, sites: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The subsampled plates a fit draws from epoch permutations: those of an
    ``ELBOLoss`` that ``create_plates`` does not fix (a plate drawn in
    per-device blocks, as a sharded one is, gets one permutation per block)."""
    if not isinstance(loss_fn, ELBOLoss):
        return ()
    fixed = user_plate_indices(loss_fn.guide.create_plates, jax.random.PRNGKey(0), args, kwargs)
    return tuple(p for p in sites.subsampled_plates if p.name not in fixed)


def _step_indices(
    loss_fn: ELBOLoss, state: SVIState, step_key: jax.Array, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[SubsampleState | None, Indices, jax.Array]:
    """This step's rows of every subsampled plate: the epoch cursors' next batch
    (with the cursors it came from), the user's ``create_plates`` rows, fresh
    (stratified) draws for the rest; and the key left for the loss. Only fresh
    draws take a key of their own (split off ``step_key``)."""
    plates, blocks = state.params.sites.plates, dict(loss_fn.subsample_blocks)
    cursors, own = next_batch(state.subsample, plates, blocks) if state.subsample is not None else (None, {})
    rest = tuple(p for p in plates if p.name not in own)
    create_plates = loss_fn.guide.create_plates
    if create_plates is None and not any(p.subsampled for p in rest):
        return cursors, own, step_key
    plate_key, step_key = jax.random.split(step_key)
    return cursors, {**draw_indices(rest, plate_key, create_plates, args, kwargs, blocks), **own}, step_key


def _update(
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
        subsample, indices, step_key = _step_indices(loss_fn, state, step_key, args, kwargs)
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
    finite = jnp.isfinite(loss) & _usable(grads)
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
        ``step(state, *args, **kwargs) -> (SVIState, loss)``. ``step`` is pure:
        it can be jitted, ``lax.scan``-ned, ``vmap``-ped and donated. A step with
        a non-finite loss or gradient keeps params and optimizer state.

    Examples:
        >>> import jax, optax, numpyro, numpyro.distributions as dist, jaxguides as jg
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> algo = jg.svi(model, jg.AutoNormal(model), optax.adam(1e-2))
        >>> state = algo.init(jax.random.PRNGKey(0), 1.0)
        >>> state, losses = jax.lax.scan(lambda s, _: algo.step(s, 1.0), state, length=10)
        >>> int(state.step)
        10
    """
    optimizer = as_optax(optimizer)
    loss_fn = elbo_loss(model, guide) if loss is None else loss

    def init(rng_key: jax.Array, *args: Any, **kwargs: Any) -> SVIState:
        try:
            return _init_state(guide, optimizer, rng_key, args, kwargs, loss_fn)
        except Exception as err:  # noqa: BLE001 - re-raised, explained if it is about traced args
            explained = _explained("svi's init", model, args, kwargs, err)
            if explained is None:
                raise
            raise explained from explained.__cause__

    def step(state: SVIState, *args: Any, **kwargs: Any) -> tuple[SVIState, jax.Array]:
        try:
            new_state, loss, _ = _update(loss_fn, optimizer, state, args, kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised, explained if it is about traced args
            explained = _explained("svi's step", model, args, kwargs, err)
            if explained is None:
                raise
            raise explained from explained.__cause__
        return new_state, loss

    return SVI(init, step)


_INIT_STREAM = 0xFFFFFFFF  # fold_in(rng_key, this) seeds init; step i folds in i < 2**31, never this


def _init_state(
    guide: Any,
    optimizer: optax.GradientTransformation,
    rng_key: jax.Array,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    loss_fn: Any = None,
) -> SVIState:
    """The state before the first step; with ``loss_fn`` an ``ELBOLoss``, epoch
    cursors for the subsampled plates it draws (see ``jaxguides/_epoch.py``)."""
    # Steps run from rng_key itself, init from a key folded off it: an init that
    # draws nothing (init_to_feasible) then compiles without random-number code.
    init_key = jax.random.fold_in(rng_key, _INIT_STREAM)
    params = guide.init(init_key, *args, **kwargs)
    plates = _epoch_plates(loss_fn, params.sites, args, kwargs) if loss_fn is not None else ()
    subsample = init_subsample(plates, rng_key)
    return SVIState(params, optimizer.init(trained_part(params)[0]), rng_key, jnp.zeros((), jnp.int32), subsample)


# ---- compiled chunks ----------------------------------------------------------------
class _Chunk(NamedTuple):
    state: SVIState
    # int32[length + 2]: the losses' float32 bits, the first non-finite step (-1 if
    # none; on_nonfinite="raise"), the steps skipped (on_nonfinite="skip"). One
    # array, so the host reads a chunk's outcome in one transfer.
    report: jax.Array


def _read(report: jax.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(losses [..., length], bad_step [...], skipped [...])`` of a chunk's report."""
    host = np.asarray(report)
    return host[..., :-2].view(np.float32), host[..., -2], host[..., -1]


def _chunk(
    state: SVIState,
    end: jax.Array,
    dynamic: list[Any],
    loss_fn: Callable[..., jax.Array],
    optimizer: optax.GradientTransformation,
    static: _Static,
    length: int,
    skip: bool,
    layout: PlateLayout | None = None,
) -> _Chunk:
    pin = (lambda s: s) if layout is None else layout.constrain  # same layout in and out
    state = pin(state)
    start = state.step
    end = jnp.minimum(end, start + length)  # the loss buffer holds `length` steps

    def update(state: SVIState, dynamic: list[Any]) -> tuple[SVIState, jax.Array, jax.Array]:
        return _update(loss_fn, optimizer, state, *_combine(dynamic, static))

    update = without_dead_code(update)  # a while body is not pruned by jit: see _dce.py

    # A while loop, not a scan of cond(active, step, idle): a step that writes rows in
    # place (sparse_adam) inside a cond branch makes XLA copy every table it writes.
    # The step count is the loop counter: the loss of step s goes to losses[s - start].
    def active(carry: tuple[Any, ...]) -> jax.Array:
        state, ok, _, _ = carry
        return (state.step < end) & ok

    def body(carry: tuple[Any, ...]) -> tuple[Any, ...]:
        state, ok, skipped, losses = carry
        new, loss, finite = update(state, dynamic)
        if skip:
            skipped = skipped + (~finite).astype(jnp.int32)
        else:  # stop: keep the last finite state exactly as it was (_update kept the rest)
            ok = finite
            new = new._replace(step=jnp.where(finite, new.step, state.step))
        losses = losses.at[state.step - start].set(loss.astype(jnp.float32))  # float64 under x64
        return pin(new), ok, skipped, losses

    init = (state, jnp.array(True), jnp.array(0, jnp.int32), jnp.full((length,), jnp.nan, jnp.float32))
    state, ok, skipped, losses = jax.lax.while_loop(active, body, init)
    bad = jnp.where(ok, -1, state.step)  # a stopped chunk stands at its non-finite step
    flags = jnp.stack([bad, skipped]).astype(jnp.int32)
    report = jnp.concatenate([jax.lax.bitcast_convert_type(losses, jnp.int32), flags])
    if layout is not None:
        report = layout.constrain_replicated(report)
    return _Chunk(pin(state), report)


_STATIC = ("loss_fn", "optimizer", "static", "length", "skip", "layout")


# The state is donated: fit hands each chunk a state only it holds (init's, a
# checkpoint's, the last chunk's), so XLA updates it in place, with no copy of
# params and optimizer state into the loop (and no second copy of them in memory).
@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnums=0)
def _run_chunk(state: SVIState, end: jax.Array, dynamic: list[Any], **static: Any) -> _Chunk:
    return _chunk(state, end, dynamic, **static)


@functools.partial(jax.jit, static_argnames=(*_STATIC, "batched_args"), donate_argnums=0)
def _run_chunk_many(state: SVIState, end: jax.Array, dynamic: list[Any], batched_args: bool, **static: Any) -> _Chunk:
    run = functools.partial(_chunk, **static)
    return jax.vmap(run, in_axes=(0, None, 0 if batched_args else None))(state, end, dynamic)  # type: ignore[call-arg]


@functools.partial(jax.jit, static_argnames=("guide", "optimizer", "static", "layout", "loss_fn"))
def _init(
    rng_key: jax.Array,
    dynamic: list[Any],
    guide: Any,
    optimizer: optax.GradientTransformation,
    static: _Static,
    layout: PlateLayout | None = None,
    loss_fn: Any = None,
) -> SVIState:
    state = _init_state(guide, optimizer, rng_key, *_combine(dynamic, static), loss_fn)
    return state if layout is None else layout.constrain(state)


@functools.partial(jax.jit, static_argnames=("guide", "optimizer", "static", "batched_args"))
def _init_many(
    rng_keys: jax.Array,
    dynamic: list[Any],
    guide: Any,
    optimizer: optax.GradientTransformation,
    static: _Static,
    batched_args: bool,
) -> SVIState:
    def one(key: jax.Array, dyn: list[Any]) -> SVIState:
        return _init_state(guide, optimizer, key, *_combine(dyn, static))

    return jax.vmap(one, in_axes=(0, 0 if batched_args else None))(rng_keys, dynamic)


# ---- fit ------------------------------------------------------------------------------
def _nanmean(x: np.ndarray, axis: int | None = None) -> Any:
    """``np.nanmean`` without its warning on all-NaN slices (skipped steps): NaN there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What ``fit`` / ``fit_many`` return.

    Attributes:
        params: final params (stacked along a leading K axis for ``fit_many``).
        losses: per-step losses, ``np.ndarray[num_steps]`` (``[K, num_steps]``).
        state: the final :class:`SVIState` (resume or continue from it).
        num_skipped: steps skipped for a non-finite loss (``on_nonfinite="skip"``).
    """

    params: Any
    losses: np.ndarray
    state: SVIState
    num_skipped: Any = 0

    def best(self, window: int | None = None) -> FitResult:
        """The member of a ``fit_many`` result with the lowest final loss.

        The final loss is the mean over the last ``window`` steps (default: the
        last 10% of the steps), which is less noisy than one step's estimate.
        """
        losses = np.asarray(self.losses)
        if losses.ndim != 2:
            raise ValueError("best() picks among the K fits of fit_many; this result holds one fit")
        window = window or max(1, losses.shape[1] // 10)
        final = _nanmean(losses[:, -window:], axis=1)
        final = np.where(np.isfinite(final), final, np.inf)
        i = int(np.argmin(final))
        pick = functools.partial(jax.tree.map, lambda x: x[i])
        return FitResult(pick(self.params), losses[i], pick(self.state), np.asarray(self.num_skipped)[i])


_MAX_CHUNK = 4096  # steps one default chunk can hold (its loss buffer): one compilation for every fit length
_FIRST_CHUNK = 64  # steps of the first default chunk, so the bar moves soon
_CHUNK_SECONDS = 0.25  # default chunks grow (or shrink) to about this long


class _NoBar:
    """What ``fit`` calls on its bar, doing nothing (a disabled tqdm still costs ~25 µs a call)."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None

    def set_postfix(self, **kwargs: Any) -> None:
        return None

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        return None

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        return None

    def reset(self, total: int | None = None) -> None:
        return None


def _progress(enabled: bool, **kwargs: Any) -> Any:
    """A tqdm bar, or a no-op one when ``progress_bar=False``. Its description
    names the phase: ``fit: tracing``, ``fit: compiling``, then ``fit`` while
    steps run (``fit: interrupted`` after Ctrl-C)."""
    return tqdm(**kwargs) if enabled else _NoBar()


def _chunk_length(num_steps: int, chunk_size: int | None) -> int:
    """Steps a compiled chunk can hold (static: it keys the compilation)."""
    if chunk_size is None:
        return _MAX_CHUNK
    return max(1, min(chunk_size, max(num_steps, 1)))


def _default_chunk(num_steps: int) -> int:
    """About 2% of the run, a power of two in [64, 1024]."""
    return min(max(64, 1 << (max(num_steps // 50, 1) - 1).bit_length()), 1024)


class _Pacer:
    """Steps for the next chunk. With ``chunk_size`` given, always that many.
    By default chunks start at 64 steps and then aim at ``_CHUNK_SECONDS`` of
    compute each (at most ``_MAX_CHUNK``), so a step of a few microseconds is
    not dominated by the chunks' fixed cost (dispatch, the loop's entry, the
    host sync: ~0.15 ms each on a 2-core CPU) and the bar still moves a few times
    a second. The first chunk's time includes that fixed cost, so the estimate
    errs towards shorter chunks. A fit of a chunk that an earlier fit has run
    (same model, guide, optimizer, shapes: ``rate``, its seconds per step)
    starts at that rate's length instead, with no 64-step probe. The count is
    a runtime argument of the compiled chunk, not part of its compilation;
    results do not depend on it. Across processes (``jax.distributed``) every
    process must pass the same count, so there chunks keep a fixed length of
    about 2% of the run."""

    def __init__(self, num_steps: int, chunk_size: int | None, length: int, rate: float | None = None):
        self.length, self.rate = length, rate
        self.fixed = chunk_size is not None or jax.process_count() > 1
        if chunk_size is None and self.fixed:
            self.steps = _default_chunk(num_steps)
        elif chunk_size is not None:
            self.steps = length
        else:
            self.steps = _FIRST_CHUNK if rate is None else self._steps_for(rate)
        self.steps = min(self.steps, length)

    def _steps_for(self, rate: float) -> int:
        return max(1, min(int(_CHUNK_SECONDS / max(rate, 1e-9)), self.length))

    def update(self, done: int, seconds: float) -> None:
        if self.fixed or done < 1:
            return
        if done >= _FIRST_CHUNK:  # a shorter chunk's time is mostly its fixed cost
            self.rate = seconds / done
        self.steps = self._steps_for(seconds / done)


def _check_init(guide: Any, rng_key: jax.Array, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """``init_to_value`` values against the supports the concrete args give, before
    compiling (under ``jit`` bounds that are model args are traced and unchecked).
    Runs the model once, eagerly, and only for ``init_to_value``."""
    if hasattr(guide, "check_init"):
        guide.check_init(rng_key, *args, **kwargs)


def _check_args(num_steps: Any, on_nonfinite: str, checkpoint_every: Any, chunk_size: Any) -> None:
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 0:
        raise ValueError(f"num_steps must be an int >= 0, got {num_steps!r}")
    if on_nonfinite not in ("raise", "skip"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
    for name, value in (("checkpoint_every", checkpoint_every), ("chunk_size", chunk_size)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def _dtype(x: Any) -> Any:
    return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


def fit(
    model: Callable[..., Any],
    guide: Any,
    optimizer: optax.GradientTransformation,
    rng_key: jax.Array,
    num_steps: int,
    *args: Any,
    loss: Callable[..., jax.Array] | None = None,
    progress_bar: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    checkpoint_keep: int = 2,
    on_nonfinite: str = "raise",
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    shard_plates: dict[str, Any] | None = None,
    static_argnames: Sequence[int | str] = (),
    **kwargs: Any,
) -> FitResult:
    """Fit ``guide`` to ``model`` with ``optimizer`` for ``num_steps`` steps.

    Steps run in compiled chunks (a ``lax.while_loop``) of ``chunk_size``
    steps; by default the first chunk has 64 steps (none if an earlier fit ran
    this chunk: its rate is known) and later ones about 0.25 s of work each
    (at most 4,096 steps), one compilation for any run length.
    The progress bar names its phase (``fit: tracing``, ``fit: compiling``,
    then ``fit``) and shows ``loss (mean of last chunk)``; its last line gives
    the last chunk's mean and ``last=``, ``result.losses[-1]``. Compilation is
    cached per (model, guide, loss, optimizer, argument shapes); an optimizer
    built anew with the same settings (``optax.adam(1e-2)`` written inline)
    counts as the same one.

    Array arguments are checked once for NaN / inf before compiling; one that
    holds them makes the model run once, eagerly, and a ``ValueError`` names
    the observed site that takes them unmasked (or the argument, when they
    make another site's log density non-finite). Entries masked with
    ``obs_mask=`` or ``handlers.mask`` are fine.

    Ctrl-C (SIGINT, in the main thread) stops the fit at the next chunk
    boundary, or as soon as tracing and compiling return, and raises
    :class:`FitInterrupted` (a ``KeyboardInterrupt``) holding the ``params``,
    ``state``, ``step`` and ``losses`` of the last completed step, after
    writing the checkpoint when one is set. A second Ctrl-C ends the process
    at once, even while XLA compiles. Outside ``fit`` Python's handler is left
    as it was.

    Args:
        model, guide, optimizer: the NumPyro model, its guide, an optax optimizer.
        rng_key: PRNG key; the same key gives bit-identical results.
        num_steps: total number of steps (a resumed fit runs the remainder).
        *args, **kwargs: the model's arguments (arrays are traced; other values
            are static and key the compilation cache).
        static_argnames: model arguments kept concrete, for a model that reads
            data values in Python (``len(np.unique(idx))``, an ``if`` on a
            value): keyword names, positional parameter names or positions.
            Their array values become compile-time constants and key the
            compilation (by bytes, shape and dtype): each distinct value
            compiles anew, and a large array makes a large program. Without
            it, a model whose tracing fails on a traced value is traced once
            more with every NumPy array argument kept concrete, with a warning
            naming them (``jax.Array`` arguments stay traced: name them here).
        loss: ``loss(params, rng_key, *args, **kwargs)``; default ``elbo_loss``.
        progress_bar: show a tqdm bar.
        checkpoint: path of a checkpoint directory (written through Orbax,
            never unpickled). If it holds a checkpoint the fit resumes from its
            newest step; a step is saved every ``checkpoint_every`` steps, at
            the end, on a non-finite stop and on Ctrl-C, asynchronously (the
            next chunk runs while it is written; ``fit`` returns or raises once
            the last one is committed), each step committed atomically. It records
            its run (model and its config, guide, optimizer, loss, key, the
            arguments' shapes and dtypes and a fingerprint of their data), and
            a checkpoint of another run is refused with
            :class:`CheckpointError` naming what differs.
        checkpoint_every: steps between checkpoints (default: only at the end).
        checkpoint_keep: how many of the newest saved steps the directory keeps.
        on_nonfinite: ``"raise"`` stops at the first non-finite loss or
            gradient with :class:`NonFiniteLossError` holding the last finite
            params and state; ``"skip"`` leaves params unchanged on such steps,
            goes on, counts them in ``num_skipped`` and warns with the count
            (``RuntimeWarning``); when every step was skipped it raises
            :class:`NonFiniteLossError`.
        chunk_size: steps per compiled chunk (default: sized by time, above).
        mesh: a ``jax.sharding.Mesh`` to run on, data parallel (default: the
            default device). See ``jaxguides/_sharding.py``.
        shard_plates: ``{plate name: mesh axis}``. The plate's data (array
            arguments whose leading axis has the plate's full size; pass a
            ``jax.Array`` already laid out on ``mesh`` to choose another axis)
            and its local latents (params and their optimizer state) are split
            along that axis; all else is replicated, and XLA reduces the
            gradient across devices. Params equal the one-device fit's up to
            float summation order (``rtol=1e-5, atol=1e-6`` after hundreds of
            Adam steps on a well-conditioned model). A sharded subsampled plate
            draws ``subsample_size / n`` rows on each of its ``n`` devices, from
            that device's own rows. Across processes (``jax.distributed``)
            every process calls ``fit`` alike, with a mesh over
            ``jax.devices()``; ``result.params`` are then global arrays
            (``multihost_utils.process_allgather`` brings them whole). Each
            process writes only its own shards of a checkpoint (on a filesystem
            all processes see) and reads back those of its devices in this
            fit's layout: bit for bit on the same layout; another mesh is fine.

    Returns:
        :class:`FitResult` with ``params``, ``losses`` (``np.ndarray[num_steps]``),
        the final ``state`` and ``num_skipped``.

    Raises:
        FitInterrupted: on Ctrl-C (``except jg.FitInterrupted as e: e.params``).
        NonFiniteLossError: a non-finite step (``on_nonfinite="raise"``), or
            every step skipped (``"skip"``).
        CheckpointError: ``checkpoint`` is damaged, crafted, in the old
            single-file format, or of another run.
        ValueError: non-finite data the model would use unmasked.

    Examples:
        >>> import jax, optax, numpyro, numpyro.distributions as dist, jaxguides as jg
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> guide = jg.AutoNormal(model)
        >>> result = jg.fit(model, guide, optax.adam(0.05), jax.random.PRNGKey(0), 500,
        ...                 jax.numpy.ones(3), progress_bar=False)
        >>> result.losses.shape
        (500,)
    """
    if not isinstance(checkpoint_keep, int) or isinstance(checkpoint_keep, bool) or checkpoint_keep < 1:
        raise ValueError(f"checkpoint_keep must be an int >= 1, got {checkpoint_keep!r}")
    with opened(checkpoint, checkpoint_keep) as checkpointer:  # returns or raises once the last save is committed
        options: dict[str, Any] = dict(
            loss=loss,
            progress_bar=progress_bar,
            checkpoint=checkpointer,
            checkpoint_every=checkpoint_every,
            on_nonfinite=on_nonfinite,
            chunk_size=chunk_size,
            mesh=mesh,
            shard_plates=shard_plates,
        )
        run = functools.partial(_fit, model, guide, optimizer, rng_key, num_steps, **options)
        return _with_concrete_args("fit", run, model, args, kwargs, static_argnames)


@interruptible(lambda result: _interrupted_late(result))
def _fit(
    model: Callable[..., Any],
    guide: Any,
    optimizer: optax.GradientTransformation,
    rng_key: jax.Array,
    num_steps: int,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    concrete: set[int],
    *,
    loss: Callable[..., jax.Array] | None,
    progress_bar: bool,
    checkpoint: Checkpointer | None,
    checkpoint_every: int | None,
    on_nonfinite: str,
    chunk_size: int | None,
    mesh: jax.sharding.Mesh | None,
    shard_plates: dict[str, Any] | None,
) -> FitResult:
    """:func:`fit` with the array leaves at ``concrete`` kept concrete."""
    _check_args(num_steps, on_nonfinite, checkpoint_every, chunk_size)
    check_finite_data(model, args, kwargs)
    _check_init(guide, rng_key, args, kwargs)
    optimizer = canonical(as_optax(optimizer))  # an equal optimizer built anew reuses the compilation
    loss_fn = elbo_loss(model, guide) if loss is None else loss
    dynamic, static = _partition(args, kwargs, concrete)
    layout = None
    if mesh is not None or shard_plates:  # data parallel: see jaxguides/_sharding.py
        layout, rng_key, dynamic = _shard_inputs(mesh, shard_plates, guide, optimizer, rng_key, dynamic, static)  # type: ignore[arg-type]
        loss_fn = layout.stratify(loss_fn)
    length = _chunk_length(num_steps, chunk_size)
    chunk_static = dict(
        loss_fn=loss_fn, optimizer=optimizer, static=static, length=length, skip=on_nonfinite == "skip", layout=layout
    )
    end = _end(num_steps, layout)
    init = functools.partial(_init, guide=guide, optimizer=optimizer, static=static, layout=layout, loss_fn=loss_fn)
    resuming = checkpoint is not None and checkpoint.exists()
    run_id = run_record(model, guide, optimizer, loss, rng_key, args, kwargs) if checkpoint is not None else None
    payload = read_fit_checkpoint(os.fspath(checkpoint), run_id) if resuming else None  # type: ignore[arg-type]  # before compiling
    seen = (guide, tuple(sorted(chunk_static.items())), _avals((rng_key, end, dynamic)))
    first = seen not in _SEEN  # then compile the chunk ahead, beside init
    interrupts = current_interrupts()
    run = functools.partial(_run_chunk, **chunk_static)
    with _progress(progress_bar, total=num_steps, desc="fit: tracing") as bar:
        # Tracing runs here; XLA compiles on the compile threads while this thread waits in Python,
        # so Ctrl-C is seen at once (and a second one ends the process) even during a long compile.
        compiling: list[concurrent.futures.Future[Any]] = []
        try:
            ahead = first and layout is None and not resuming  # the chunk, from init's shapes, beside init
            if ahead:
                compiling.append(_compile_ahead(init, chunk_static, rng_key, end, dynamic))
            if first:
                compiling.append(_compile_beside(init, rng_key, dynamic))
                bar.set_description("fit: compiling")
            _wait(compiling)
            state = init(rng_key, dynamic)
            losses = np.full(num_steps, np.nan, np.float32)
            skipped = 0
            if payload is not None:
                state, saved, skipped = resume_state(os.fspath(checkpoint), payload, state, num_steps)  # type: ignore[arg-type]
                state = state if layout is None else jax.tree.map(place, state, layout.state_shardings(state))
                n = min(len(saved), num_steps)
                losses[:n] = saved[:n]
            if first and not ahead:  # the chunk, from the state itself (a resumed one, a sharded one)
                bar.set_description("fit: tracing")
                compiling.append(_compile_beside(run, state, _end(num_steps, layout), dynamic))
                bar.set_description("fit: compiling")
                _wait(compiling)
        finally:  # XLA is never left compiling beside an exception (interpreter exit racing it crashed)
            _wait(compiling)
        step = int(state.step) if resuming else 0  # init starts at 0: no wait for it before the first chunk
        last_saved, done = step, 0
        if first and len(_SEEN) < 4096:
            _SEEN[seen] = None
        pacer = _Pacer(num_steps, chunk_size, length, _SEEN.get(seen))
        _begin_steps(bar, step, "fit")
        while step < num_steps:
            if interrupts.requested():  # Ctrl-C: stop here, with the state of the last chunk
                raise _interrupted(bar, checkpoint, state, losses, step, skipped, last_saved, run_id)
            stop = min(step + pacer.steps, num_steps)
            if checkpoint is not None and checkpoint_every:
                stop = min(stop, last_saved + checkpoint_every)
            started = time.perf_counter()
            out = run(state, _end(stop, layout), dynamic)
            chunk_losses, bad_step, chunk_skipped = _read(out.report)  # one sync, one transfer
            bad = int(bad_step)
            done = (bad if bad >= 0 else stop) - step
            pacer.update(done, time.perf_counter() - started)
            losses[step : step + done] = chunk_losses[:done]
            state, step = out.state, step + done
            skipped += int(chunk_skipped)
            if bad >= 0:
                if checkpoint is not None:
                    write_fit_checkpoint(checkpoint, state, losses[:step], skipped, run_id)
                raise NonFiniteLossError(bad, state.params, state, losses[:bad].copy())
            if checkpoint is not None and checkpoint_every and step - last_saved >= checkpoint_every:
                write_fit_checkpoint(checkpoint, state, losses[:step], skipped, run_id)
                last_saved = step
            if done and progress_bar:  # no refresh of its own: update() redraws at most every 0.1 s
                bar.set_postfix_str(
                    f"loss (mean of last chunk)={_nanmean(losses[step - done : step]):.4g}", refresh=False
                )
            bar.update(done)
        if done and progress_bar:  # the last line: what the result holds
            last = f"loss (mean of last {done} steps)={_nanmean(losses[step - done : step]):.4g}"
            bar.set_postfix_str(f"{last}, last={losses[step - 1]:.4g}", refresh=False)
    if checkpoint is not None and (last_saved != step or not checkpoint.exists()):
        write_fit_checkpoint(checkpoint, state, losses[: min(step, num_steps)], skipped, run_id)
    if pacer.rate is not None and seen in _SEEN:  # the next fit of this chunk starts at this rate
        _SEEN[seen] = pacer.rate
    if on_nonfinite == "skip" and skipped:
        _report_skipped(state, losses, skipped, num_steps)
    return FitResult(state.params, losses, state, skipped)


def _begin_steps(bar: Any, step: int, description: str) -> None:
    """The bar from the first step on: ``step`` steps done (a resumed fit), its
    clock and rate counted from now, not from the start of tracing."""
    bar.reset()
    bar.n = bar.initial = bar.last_print_n = step
    bar.set_description(description)


def _interrupted(
    bar: Any,
    checkpoint: Checkpointer | None,
    state: SVIState,
    losses: np.ndarray,
    step: int,
    skipped: int,
    last_saved: int,
    run_id: Record | None,
) -> FitInterrupted:
    """The error for Ctrl-C at ``step``, after writing the checkpoint (when one is set)."""
    bar.set_description("fit: interrupted", refresh=False)
    if checkpoint is not None and (last_saved != step or not checkpoint.exists()):
        write_fit_checkpoint(checkpoint, state, losses[:step], skipped, run_id)
    path = None if checkpoint is None else os.fspath(checkpoint)
    return FitInterrupted(step, state.params, state, losses[:step].copy(), path)


def _interrupted_late(result: FitResult) -> FitInterrupted:
    """Ctrl-C after the last chunk: the finished result, as the interrupt."""
    return FitInterrupted(int(np.max(result.state.step)), result.params, result.state, result.losses)


def _report_skipped(state: SVIState, losses: np.ndarray, skipped: int, num_steps: int) -> None:
    """``on_nonfinite="skip"``: a warning with the count, an error when no step counted."""
    if skipped >= num_steps:
        advice = (
            f"With on_nonfinite='skip' all {num_steps} steps were skipped, so the params are still the initial "
            "ones: check the data and the model for values outside a distribution's support."
        )
        raise NonFiniteLossError(0, state.params, state, losses[:0].copy(), advice=advice)
    warnings.warn(
        f"fit: {skipped} of {num_steps} steps were skipped for a non-finite loss or gradient "
        "(on_nonfinite='skip'): they left the params as they were, and their losses are NaN in result.losses.",
        RuntimeWarning,
        stacklevel=_caller_level(),
    )


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside jaxguides: a warning points at the user's call."""
    frame: Any = sys._getframe(1)
    level, package = 1, os.path.dirname(__file__)
    while frame is not None and os.path.dirname(frame.f_code.co_filename) == package:
        frame, level = frame.f_back, level + 1
    return level


def _end(stop: int, layout: PlateLayout | None) -> Any:
    """A chunk's last step, as the (replicated) argument it takes: a host scalar,
    so that making it compiles nothing."""
    end = np.int32(stop)
    return end if layout is None else place(end, layout.replicated)


# Two threads: the chunk and init compile side by side (XLA releases the GIL).
_COMPILER = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="jaxguides-compile")


def _compile_beside(fn: Any, *args: Any) -> concurrent.futures.Future[Any]:
    """Trace ``fn(*args)`` (a ``functools.partial`` of a jitted function) here
    and compile it on a compile thread.

    Tracing stays on this thread (NumPyro's handler stack is global). The
    compiled program lands in the jitted function's cache, so the real call
    finds it there. A failure here is left to the real call to report.
    """
    try:
        lowered = fn.func.lower(*args, **fn.keywords)
    except Exception:  # noqa: BLE001 - the real call raises it properly
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        done.set_result(None)
        return done

    def compile_quietly() -> None:
        try:
            lowered.compile()
        except Exception:  # noqa: BLE001
            pass

    return _COMPILER.submit(compile_quietly)


def _compile_ahead(
    init: Callable[..., SVIState], chunk_static: dict[str, Any], rng_key: jax.Array, end: jax.Array, dynamic: list[Any]
) -> concurrent.futures.Future[Any]:
    """Compile the chunk from the shapes of ``init``'s state, while ``init`` compiles and runs."""
    try:
        abstract = jax.eval_shape(init, rng_key, dynamic)
    except Exception:  # noqa: BLE001 - the real call raises it properly
        abstract = None
    return _compile_beside(functools.partial(_run_chunk, **chunk_static), abstract, end, dynamic)


def _wait(compiling: list[concurrent.futures.Future[Any]]) -> None:
    """Wait for the compile threads: a wait in Python, so SIGINT's handler runs at once."""
    while compiling:
        compiling.pop().result()


# (guide, chunk's static args, argument avals) fit has compiled -> the chunk's
# last measured seconds per step (None until a chunk of >= 64 steps has run)
_SEEN: dict[Any, float | None] = {}


def _avals(tree: Any) -> tuple[Any, ...]:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((np.shape(x), _dtype(x)) for x in leaves)


def _shard_inputs(
    mesh: jax.sharding.Mesh,
    shard_plates: dict[str, Any] | None,
    guide: Any,
    optimizer: optax.GradientTransformation,
    rng_key: jax.Array,
    dynamic: list[Any],
    static: _Static,
) -> tuple[PlateLayout, jax.Array, list[Any]]:
    """The layout of a sharded fit, and its key and data as global arrays on ``mesh``."""
    layout = PlateLayout.build(mesh, shard_plates)
    abstract = jax.eval_shape(
        functools.partial(_init, guide=guide, optimizer=optimizer, static=static), rng_key, dynamic
    )
    layout.check(abstract.params.sites)
    args, kwargs = _combine(dynamic, static)
    args, kwargs = shard_args(args, mesh, dict(layout.plates), abstract.params.sites, kwargs=kwargs)
    fixed = {i for i, _ in static.leaves}  # the same leaves as before stay static (concrete ones too)
    dynamic = [None if i in fixed else x for i, x in enumerate(_partition(args, kwargs)[0])]
    return layout, place(rng_key, layout.replicated), dynamic


def fit_many(
    model: Callable[..., Any],
    guide: Any,
    optimizer: optax.GradientTransformation,
    rng_keys: jax.Array,
    num_steps: int,
    *args: Any,
    batched_args: bool = False,
    loss: Callable[..., jax.Array] | None = None,
    progress_bar: bool = True,
    chunk_size: int | None = None,
    static_argnames: Sequence[int | str] = (),
    **kwargs: Any,
) -> FitResult:
    """K fits at once with ``vmap``: one per key in ``rng_keys`` (shape ``[K, 2]``).

    With ``batched_args=True`` every array argument has a leading K axis (K
    datasets of the same shape), else all fits see the same data. A fit whose
    loss turns non-finite keeps its last finite params for that step and goes
    on (its count is in ``num_skipped[k]``). ``result.best()`` picks the fit
    with the lowest final loss. ``static_argnames`` keeps arguments concrete
    as in :func:`fit` (with the same fallback); a concrete argument is shared
    by the K fits, never batched. Non-finite data is refused as in
    :func:`fit` (each dataset with ``batched_args``), and Ctrl-C raises
    :class:`FitInterrupted` with the K fits' state at the last chunk boundary.

    Returns:
        :class:`FitResult` with params stacked on a leading K axis and
        ``losses`` of shape ``[K, num_steps]``.
    """
    options: dict[str, Any] = dict(
        batched_args=batched_args, loss=loss, progress_bar=progress_bar, chunk_size=chunk_size
    )
    run = functools.partial(_fit_many, model, guide, optimizer, rng_keys, num_steps, **options)
    return _with_concrete_args("fit_many", run, model, args, kwargs, static_argnames)


@interruptible(lambda result: _interrupted_late(result))
def _fit_many(
    model: Callable[..., Any],
    guide: Any,
    optimizer: optax.GradientTransformation,
    rng_keys: jax.Array,
    num_steps: int,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    concrete: set[int],
    *,
    batched_args: bool,
    loss: Callable[..., jax.Array] | None,
    progress_bar: bool,
    chunk_size: int | None,
) -> FitResult:
    """:func:`fit_many` with the array leaves at ``concrete`` kept concrete."""
    _check_args(num_steps, "skip", None, chunk_size)
    dynamic, static = _partition(args, kwargs, concrete)
    if batched_args:  # one dataset is enough to check init values against their supports
        _check_init(guide, rng_keys[0], *_combine([None if x is None else x[0] for x in dynamic], static))
    else:
        _check_init(guide, rng_keys[0], args, kwargs)
    optimizer = canonical(as_optax(optimizer))
    loss_fn = elbo_loss(model, guide) if loss is None else loss
    for member in nonfinite_members(dynamic) if batched_args else [None]:  # NaN data: named before compiling
        data = (
            (args, kwargs) if member is None else _combine([None if x is None else x[member] for x in dynamic], static)
        )
        check_finite_data(model, *data)
    k = len(rng_keys)
    interrupts = current_interrupts()
    init = functools.partial(_init_many, guide=guide, optimizer=optimizer, static=static, batched_args=batched_args)
    length = _chunk_length(num_steps, chunk_size) if chunk_size else _default_chunk(num_steps)
    run = functools.partial(
        _run_chunk_many,
        batched_args=batched_args,
        loss_fn=loss_fn,
        optimizer=optimizer,
        static=static,
        length=length,
        skip=True,
    )
    end = jnp.asarray(num_steps, jnp.int32)
    with _progress(progress_bar, total=num_steps, desc=f"fit x{k}: tracing") as bar:
        compiling: list[concurrent.futures.Future[Any]] = []
        try:  # compiled on the compile threads, as in fit (a cached program costs ~0.1 ms here)
            compiling.append(_compile_beside(init, rng_keys, dynamic))
            bar.set_description(f"fit x{k}: compiling")
            _wait(compiling)
            state = init(rng_keys, dynamic)
            bar.set_description(f"fit x{k}: tracing")
            compiling.append(_compile_beside(run, state, end, dynamic))
            bar.set_description(f"fit x{k}: compiling")
            _wait(compiling)
        finally:  # XLA is never left compiling beside an exception
            _wait(compiling)
        losses = np.full((k, num_steps), np.nan, np.float32)
        skipped = np.zeros(k, np.int64)
        step = done = 0
        _begin_steps(bar, 0, f"fit x{k}")
        while step < num_steps:
            if interrupts.requested():  # Ctrl-C: stop here, with the state of the last chunk
                bar.set_description(f"fit x{k}: interrupted", refresh=False)
                raise FitInterrupted(step, state.params, state, losses[:, :step].copy())
            out = run(state, end, dynamic)
            done = min(length, num_steps - step)
            chunk_losses, _, chunk_skipped = _read(out.report)
            losses[:, step : step + done] = chunk_losses[:, :done]
            skipped += chunk_skipped
            state, step = out.state, step + done
            if progress_bar:
                mean = _nanmean(losses[:, step - done : step])
                bar.set_postfix_str(f"loss (mean over fits, last chunk)={mean:.4g}", refresh=False)
            bar.update(done)
        if done and progress_bar:  # the last line: what the result holds
            last = _nanmean(losses[:, step - 1])
            bar.set_postfix_str(f"loss (mean over fits, last {done} steps)={mean:.4g}, last={last:.4g}", refresh=False)
    return FitResult(state.params, losses, state, skipped)
