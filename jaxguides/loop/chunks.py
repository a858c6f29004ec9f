"""Compiled chunks: up to ``length`` steps in one ``lax.while_loop`` that stops at a
non-finite step (or skips it), reporting losses and flags in one array; the
jitted, donated entry points for one fit and for ``vmap``-ped fits."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxguides._caches import jitted
from jaxguides.loop.args import (
    Static,
    combine,
)
from jaxguides.loop.dce import without_dead_code
from jaxguides.parallel.sharding import PlateLayout, place
from jaxguides.svi.state import (
    SVIState,
)
from jaxguides.svi.step import (
    init_state,
    update_step,
)

__all__ = [
    "CHUNK_STATIC",
    "Chunk",
    "chunk_end",
    "read_report",
    "run_chunk",
    "run_chunk_many",
    "run_init",
    "run_init_many",
    "run_steps",
]


class Chunk(NamedTuple):
    state: SVIState
    # int32[length + 2]: the losses' float32 bits, the first non-finite step (-1 if
    # none; on_nonfinite="raise"), the steps skipped (on_nonfinite="skip"). One
    # array, so the host reads a chunk's outcome in one transfer.
    report: jax.Array


def read_report(report: jax.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(losses [..., length], bad_step [...], skipped [...])`` of a chunk's report."""
    host = np.asarray(report)
    return host[..., :-2].view(np.float32), host[..., -2], host[..., -1]


def run_steps(
    state: SVIState,
    end: jax.Array,
    dynamic: list[Any],
    loss_fn: Callable[..., jax.Array],
    optimizer: optax.GradientTransformation,
    static: Static,
    length: int,
    skip: bool,
    layout: PlateLayout | None = None,
) -> Chunk:
    pin = (lambda s: s) if layout is None else layout.constrain  # same layout in and out
    state = pin(state)
    start = state.step
    end = jnp.minimum(end, start + length)  # the loss buffer holds `length` steps

    def update(state: SVIState, dynamic: list[Any]) -> tuple[SVIState, jax.Array, jax.Array]:
        return update_step(loss_fn, optimizer, state, *combine(dynamic, static))

    update = without_dead_code(update)  # a while body is not pruned by jit: see loop/dce.py

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
        else:  # stop: keep the last finite state exactly as it was (update_step kept the rest)
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
    return Chunk(pin(state), report)


CHUNK_STATIC = ("loss_fn", "optimizer", "static", "length", "skip", "layout")


# The state is donated: fit hands each chunk a state only it holds (init's, a
# checkpoint's, the last chunk's), so XLA updates it in place, with no copy of
# params and optimizer state into the loop (and no second copy of them in memory).
@jitted
@functools.partial(jax.jit, static_argnames=CHUNK_STATIC, donate_argnums=0)
def run_chunk(state: SVIState, end: jax.Array, dynamic: list[Any], **static: Any) -> Chunk:
    return run_steps(state, end, dynamic, **static)


@jitted
@functools.partial(jax.jit, static_argnames=(*CHUNK_STATIC, "batched_args"), donate_argnums=0)
def run_chunk_many(state: SVIState, end: jax.Array, dynamic: list[Any], batched_args: bool, **static: Any) -> Chunk:
    run = functools.partial(run_steps, **static)
    return jax.vmap(run, in_axes=(0, None, 0 if batched_args else None))(state, end, dynamic)  # type: ignore[call-arg]


@jitted
@functools.partial(jax.jit, static_argnames=("guide", "optimizer", "static", "layout", "loss_fn"))
def run_init(
    rng_key: jax.Array,
    dynamic: list[Any],
    guide: Any,
    optimizer: optax.GradientTransformation,
    static: Static,
    layout: PlateLayout | None = None,
    loss_fn: Any = None,
) -> SVIState:
    state = init_state(guide, optimizer, rng_key, *combine(dynamic, static), loss_fn)
    return state if layout is None else layout.constrain(state)


@jitted
@functools.partial(jax.jit, static_argnames=("guide", "optimizer", "static", "batched_args"))
def run_init_many(
    rng_keys: jax.Array,
    dynamic: list[Any],
    guide: Any,
    optimizer: optax.GradientTransformation,
    static: Static,
    batched_args: bool,
) -> SVIState:
    def one(key: jax.Array, dyn: list[Any]) -> SVIState:
        return init_state(guide, optimizer, key, *combine(dyn, static))

    return jax.vmap(one, in_axes=(0, 0 if batched_args else None))(rng_keys, dynamic)


def chunk_end(stop: int, layout: PlateLayout | None) -> Any:
    """A chunk's last step, as the (replicated) argument it takes: a host scalar,
    so that making it compiles nothing."""
    end = np.int32(stop)
    return end if layout is None else place(end, layout.replicated)
