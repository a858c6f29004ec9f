"""Epoch permutations: which rows of each subsampled plate a step sees.

NumPyro draws a plate's subsample afresh on every step with
``random.choice(..., replace=False)``, a sort of all N rows: O(N log N) per
step (tens of milliseconds for N = 100,000 on a CPU core, where the rest of a
logistic-regression step with a batch of 1,000 takes well under one). Here
each plate instead carries a :class:`PlateCursor` in the SVI state: a
permutation of its N rows, drawn once per epoch, and an offset into it. A
step takes the next ``subsample_size`` rows of the permutation (O(batch));
when fewer than a batch remain, the next epoch's permutation is drawn first
(O(N), once per epoch). A step whose loss or gradient is not finite does not
use up its rows. So

* every batch is ``subsample_size`` distinct rows, a (pseudo-)uniformly
  random subset, the same law per step as NumPyro's, so the estimator's
  ``size / subsample_size`` scaling stays unbiased;
* each epoch visits every row exactly once when ``subsample_size`` divides
  ``size``; otherwise the ``size % subsample_size`` rows left at the end of a
  permutation sit that epoch out (different rows each epoch);
* everything is a pure function of the cursor, so a checkpointed fit resumes
  bit for bit.

The permutation is a keyed Feistel network (six rounds of a murmur3 mixer)
on ``Z_a x Z_b``, a domain at most ``sqrt(N)`` larger than ``[0, N)``, with
cycle walking for the few images outside it -- O(N) elementwise work
without a sort, a cumulative sum or a scatter. It is a pseudo-random
permutation in the sense of format-preserving encryption, not a draw from the
uniform law over all N! orders; for stochastic optimisation that is the same.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxguides._sites import PlateFrame

__all__ = [
    "PlateCursor",
    "SubsampleState",
    "advance",
    "batch_indices",
    "feistel_permutation",
    "init_subsample",
    "next_batch",
]

_ROUNDS = 6


class PlateCursor(NamedTuple):
    """Where one subsampled plate is in its current epoch.

    Attributes:
        key: the fit's key; epoch ``e`` of this plate is
            ``feistel_permutation(fold_in(fold_in(key, stream), e), size)``.
        perm: ``int32[size]``, this epoch's order of the plate's rows.
        offset: ``int32[]``, rows of ``perm`` already used this epoch.
        epoch: ``int32[]``, the epoch ``perm`` belongs to (0 for the first;
            -1 before the first step, which draws epoch 0).
        stream: ``int32[]``, this plate's stream of permutation keys.
    """

    key: jax.Array
    perm: jax.Array
    offset: jax.Array
    epoch: jax.Array
    stream: jax.Array


class SubsampleState(NamedTuple):
    """The cursors of the plates a fit subsamples itself (a pytree).

    Attributes:
        plates: ``{plate name: PlateCursor}``.
    """

    plates: dict[str, PlateCursor]


def _mix(x: jax.Array) -> jax.Array:
    """murmur3's 32-bit finaliser: a fast bijective mixer of uint32 words."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _feistel(round_keys: jax.Array, x: jax.Array, a: int, b: int) -> jax.Array:
    """A bijection of ``[0, a*b)`` (uint32 in, uint32 out); ``a`` a power of two.

    ``x = hi * a + lo`` is the pair ``(lo, hi)`` in ``Z_a x Z_b``; a round maps
    ``(u, v)`` in ``Z_m x Z_n`` to ``(v, (u + F(v)) mod m)`` in ``Z_n x Z_m``
    (invertible: ``u = (w - F(v)) mod m``). An even number of rounds comes back
    to ``Z_a x Z_b``.
    """
    u, v, m, n = x & jnp.uint32(a - 1), x >> (a.bit_length() - 1), a, b
    for i in range(_ROUNDS):
        u, v, m, n = v, (u + _mix(v ^ round_keys[i]) % jnp.uint32(m)) % jnp.uint32(m), n, m
    return v * jnp.uint32(a) + u


def feistel_permutation(rng_key: jax.Array, size: int) -> jax.Array:
    """A pseudo-random permutation of ``arange(size)``, ``int32[size]``, in O(size).

    A Feistel network on ``Z_a x Z_b``, ``a = 2**k`` about ``sqrt(size)`` and
    ``b = ceil(size / a)``: a domain at most ``a - 1`` rows larger than the
    plate, so the few images ``>= size`` are walked on through the network
    until they land in ``[0, size)`` (cycle walking: still a permutation),
    a handful of passes at most, with no sort, cumulative sum or scatter.

    Examples:
        >>> import jax, numpy as np
        >>> perm = feistel_permutation(jax.random.PRNGKey(0), 10)
        >>> sorted(np.asarray(perm).tolist()) == list(range(10))
        True
    """
    if size < 2:
        return jnp.zeros((size,), jnp.int32)
    a = 1 << max(1, (size.bit_length() - 1) // 2)
    b = -(-size // a)
    round_keys = jax.random.bits(rng_key, (_ROUNDS,), jnp.uint32)

    def walk(y: jax.Array) -> jax.Array:
        return jnp.where(y >= size, _feistel(round_keys, y, a, b), y)

    image = _feistel(round_keys, jnp.arange(size, dtype=jnp.uint32), a, b)
    image = jax.lax.while_loop(lambda y: jnp.any(y >= size), walk, image)
    return image.astype(jnp.int32)


_STREAM = 0x6A670100  # plate i's permutation keys come from fold_in(rng_key, _STREAM + i)


def init_subsample(plates: tuple[PlateFrame, ...], rng_key: jax.Array) -> SubsampleState | None:
    """Cursors for ``plates`` (``None`` if there are none), with every row of
    an empty epoch -1 used up: the first step draws epoch 0's permutation, as
    it draws every later one, so init itself computes no random numbers."""
    if not plates:
        return None
    cursors = {}
    for i, p in enumerate(plates):
        size, stream = jnp.asarray(p.size, jnp.int32), jnp.asarray(_STREAM + i, jnp.int32)
        cursors[p.name] = PlateCursor(
            rng_key, jnp.zeros((p.size,), jnp.int32), size, jnp.asarray(-1, jnp.int32), stream
        )
    return SubsampleState(cursors)


def _frames(state: SubsampleState, plates: tuple[PlateFrame, ...]) -> list[PlateFrame]:
    by_name = {p.name: p for p in plates}
    return [by_name[name] for name in state.plates]


def _roll(cur: PlateCursor, plate: PlateFrame) -> PlateCursor:
    """``cur``, or the start of the next epoch if fewer than a batch of rows remain."""

    def next_epoch(cur: PlateCursor) -> PlateCursor:
        epoch = cur.epoch + 1
        perm = feistel_permutation(jax.random.fold_in(jax.random.fold_in(cur.key, cur.stream), epoch), plate.size)
        return cur._replace(perm=perm, offset=jnp.zeros((), jnp.int32), epoch=epoch)

    return jax.lax.cond(cur.offset + plate.subsample_size > plate.size, next_epoch, lambda c: c, cur)


def next_batch(state: SubsampleState, plates: tuple[PlateFrame, ...]) -> tuple[SubsampleState, dict[str, jax.Array]]:
    """This step's rows, ``{plate: int32[subsample_size]}``, and the cursors they come from.

    When fewer than a batch of rows remain, the next epoch's permutation is
    drawn first (O(size)), under ``lax.cond``, so the other steps do not pay
    for it (under ``vmap`` the ``cond`` becomes a ``select``, which does).
    The ``cond`` comes before the rows are read: XLA then updates the
    permutation in place instead of copying it on every step.
    ``plates`` are the model's plate frames (a superset of the cursors' plates).
    """
    cursors, rows = dict(state.plates), {}
    for p in _frames(state, plates):
        cur = cursors[p.name] = _roll(cursors[p.name], p)
        rows[p.name] = jax.lax.dynamic_slice(cur.perm, (cur.offset,), (p.subsample_size,))
    return SubsampleState(cursors), rows


def batch_indices(state: SubsampleState, plates: tuple[PlateFrame, ...]) -> dict[str, jax.Array]:
    """The rows the next step will see, ``{plate: int32[subsample_size]}``."""
    return next_batch(state, plates)[1]


def advance(state: SubsampleState, plates: tuple[PlateFrame, ...], ok: jax.Array | bool = True) -> SubsampleState:
    """The cursors after a step on their batch (from :func:`next_batch`): the batch
    is used up if the step was ``ok``; a non-finite step leaves it to be drawn again."""
    cursors = dict(state.plates)
    for p in _frames(state, plates):
        cur = cursors[p.name]
        cursors[p.name] = cur._replace(offset=jnp.where(ok, cur.offset + p.subsample_size, cur.offset))
    return SubsampleState(cursors)
