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

The permutation is a keyed Feistel network on ``ceil(log2 N)`` bits (six
rounds of a murmur3 mixer), restricted to ``[0, N)`` by dropping the images
``>= N`` and compacting -- O(N) elementwise work without a sort, about 20x
cheaper than ``jax.random.permutation`` on a CPU. It is a pseudo-random
permutation in the sense of format-preserving encryption, not a draw from the
uniform law over all N! orders; for stochastic optimisation that is the same.
"""

from __future__ import annotations

import math
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


def _feistel(round_keys: jax.Array, x: jax.Array, bits: int) -> jax.Array:
    """A bijection of ``[0, 2**bits)`` (uint32 in, uint32 out), unbalanced halves."""
    lo_bits, hi_bits = bits // 2, bits - bits // 2
    hi, lo = x >> lo_bits, x & jnp.uint32((1 << lo_bits) - 1)
    for i in range(_ROUNDS):  # (hi: hi_bits, lo: lo_bits) -> (lo, hi ^ F(lo)): a bijection
        mask = jnp.uint32((1 << hi_bits) - 1)
        hi, lo = lo, (hi ^ _mix(lo ^ round_keys[i])) & mask
        lo_bits, hi_bits = hi_bits, lo_bits
    return (hi << lo_bits) | lo


def feistel_permutation(rng_key: jax.Array, size: int) -> jax.Array:
    """A pseudo-random permutation of ``arange(size)``, ``int32[size]``, in O(size).

    Examples:
        >>> import jax, numpy as np
        >>> perm = feistel_permutation(jax.random.PRNGKey(0), 10)
        >>> sorted(np.asarray(perm).tolist()) == list(range(10))
        True
    """
    if size < 2:
        return jnp.zeros((size,), jnp.int32)
    bits = max(math.ceil(math.log2(size)), 2)
    round_keys = jax.random.bits(rng_key, (_ROUNDS,), jnp.uint32)
    image = _feistel(round_keys, jnp.arange(1 << bits, dtype=jnp.uint32), bits)
    keep = image < size  # restrict to [0, size): keep those images, in order
    slot = jnp.where(keep, jnp.cumsum(keep, dtype=jnp.int32) - 1, size)
    return jnp.zeros((size,), jnp.int32).at[slot].set(image.astype(jnp.int32), mode="drop")


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
