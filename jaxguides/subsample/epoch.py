"""Epoch permutations: which rows of each subsampled plate a step sees.

NumPyro draws a plate's subsample afresh on every step with
``random.choice(..., replace=False)``, a sort of all N rows: O(N log N) per
step (tens of milliseconds for N = 100,000 on a CPU core, where the rest of a
logistic-regression step with a batch of 1,000 takes well under one). Here
each plate instead carries a :class:`PlateCursor` in the SVI state: an epoch
number and an offset into that epoch's permutation of the plate's N rows. A
step takes positions ``offset ... offset + subsample_size - 1`` of the
permutation, computed for those positions only (O(batch), nothing of size N
is stored or drawn); when fewer than a batch of positions remain, the step
starts the next epoch, whose permutation has other keys. A step whose loss or
gradient is not finite does not use up its rows. So

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
cycle walking for the few images outside it: position ``i`` of the
permutation is the network applied to ``i`` until it lands in ``[0, N)``.
Its round keys are hashed from the fit's key, the plate's stream and the
epoch with the same mixer (no threefry: cheap to compile and to run on every
step). It is a pseudo-random permutation in the sense of format-preserving
encryption, not a draw from the uniform law over all N! orders; for
stochastic optimisation that is the same.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxguides.model.sites import PlateFrame
from jaxguides.subsample.indices import block_sizes, join_blocks

__all__ = [
    "PlateCursor",
    "SubsampleState",
    "advance",
    "batch_indices",
    "epoch_rows",
    "init_subsample",
    "next_batch",
]

_ROUNDS = 6
_GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: spreads small counters over all 32 bits


class PlateCursor(NamedTuple):
    """Where one subsampled plate is in its current epoch.

    Attributes:
        key: the fit's key; epoch ``e`` of this plate is the permutation
            ``epoch_rows(key, stream, e, arange(size), size)``.
        offset: ``int32[]``, positions of this epoch's permutation already used.
        epoch: ``int32[]``, the current epoch (0 for the first; -1 before the
            first step, which starts epoch 0).
        stream: ``int32[]``, this plate's stream of permutations.
    """

    key: jax.Array
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


def _round_keys(key: jax.Array, stream: jax.Array, epoch: jax.Array, block: Any = None) -> jax.Array:
    """``uint32[_ROUNDS]`` keys of one epoch's network, hashed from the key's
    words, the stream, the epoch and (for a plate drawn in blocks) the block
    (each step recomputes them: a few scalar ops)."""
    words = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    words = jnp.ravel(words).astype(jnp.uint32)
    h = _mix(_mix(jnp.asarray(stream).astype(jnp.uint32) + jnp.uint32(_GOLDEN)) ^ jnp.asarray(epoch).astype(jnp.uint32))
    if block is not None:
        h = _mix(h ^ (jnp.asarray(block).astype(jnp.uint32) + jnp.uint32(1)) * jnp.uint32(_GOLDEN))
    for i in range(words.shape[0]):
        h = _mix(h ^ words[i])
    return _mix(h + jnp.arange(1, _ROUNDS + 1, dtype=jnp.uint32) * jnp.uint32(_GOLDEN))


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


def epoch_rows(
    key: jax.Array, stream: Any, epoch: Any, positions: jax.Array, size: int, block: Any = None
) -> jax.Array:
    """Rows at ``positions`` of one epoch's pseudo-random permutation of ``arange(size)``.

    A Feistel network on ``Z_a x Z_b``, ``a = 2**k`` about ``sqrt(size)`` and
    ``b = ceil(size / a)``: a domain at most ``a - 1`` rows larger than the
    plate, so the few images ``>= size`` are walked on through the network
    until they land in ``[0, size)`` (cycle walking: still a permutation),
    0-2 passes in practice. Work is O(positions), whatever ``size`` is.

    Args:
        key: the fit's key; ``stream``, ``epoch``: ints (or int32 scalars)
            that select the permutation.
        positions: ``int[...]``, each in ``[0, size)``.
        size: the plate's size (static).
        block: for a plate drawn in blocks, which block's permutation (of
            its ``size`` rows); ``None`` for a plate drawn whole.

    Returns:
        ``int32[positions.shape]``; ``positions = arange(size)`` gives the
        whole permutation.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> perm = epoch_rows(jax.random.PRNGKey(0), 0, 0, jnp.arange(10), 10)
        >>> sorted(perm.tolist()) == list(range(10))
        True
    """
    positions = jnp.asarray(positions)
    if size < 2:
        return jnp.zeros(positions.shape, jnp.int32)
    a = 1 << max(1, (size.bit_length() - 1) // 2)
    b = -(-size // a)
    round_keys = _round_keys(key, stream, epoch, block)

    def walk(y: jax.Array) -> jax.Array:
        return jnp.where(y >= size, _feistel(round_keys, y, a, b), y)

    image = _feistel(round_keys, positions.astype(jnp.uint32), a, b)
    image = jax.lax.while_loop(lambda y: jnp.any(y >= size), walk, image)
    return image.astype(jnp.int32)


_STREAM = 0x6A670100  # plate i's permutations are stream _STREAM + i


def init_subsample(plates: tuple[PlateFrame, ...], rng_key: jax.Array) -> SubsampleState | None:
    """Cursors for ``plates`` (``None`` if there are none), with every position
    of an empty epoch -1 used up: the first step starts epoch 0, as it starts
    every later one, so init itself computes nothing."""
    if not plates:
        return None
    cursors = {}
    for i, p in enumerate(plates):
        size, stream = jnp.asarray(p.size, jnp.int32), jnp.asarray(_STREAM + i, jnp.int32)
        cursors[p.name] = PlateCursor(rng_key, size, jnp.asarray(-1, jnp.int32), stream)
    return SubsampleState(cursors)


def _frames(state: SubsampleState, plates: tuple[PlateFrame, ...]) -> list[PlateFrame]:
    by_name = {p.name: p for p in plates}
    return [by_name[name] for name in state.plates]


def _rows(cur: PlateCursor, plate: PlateFrame, blocks: int, positions: jax.Array) -> jax.Array:
    """Rows at ``positions`` of the epoch's permutation, ``int32[blocks * len(positions)]``:
    with ``blocks = k > 1``, block ``b`` permutes its own rows ``[b R, (b+1) R)``
    (``R = size / k``) and gives the ``b``-th slice of the batch."""
    if blocks == 1:
        return epoch_rows(cur.key, cur.stream, cur.epoch, positions, plate.size)
    per_block = plate.size // blocks
    local = jax.vmap(lambda b: epoch_rows(cur.key, cur.stream, cur.epoch, positions, per_block, block=b))(
        jnp.arange(blocks, dtype=jnp.int32)
    )
    return join_blocks(local, per_block)


def next_batch(
    state: SubsampleState, plates: tuple[PlateFrame, ...], blocks: dict[str, int] | None = None
) -> tuple[SubsampleState, dict[str, jax.Array]]:
    """This step's rows, ``{plate: int32[subsample_size]}``, and the cursors they come from.

    When fewer than a batch of positions remain in the epoch, the step starts
    the next epoch (offset 0). O(subsample_size) per plate, with no branch:
    the rows are computed for this batch's positions only. ``plates`` are the
    model's plate frames (a superset of the cursors' plates). A plate with
    ``blocks[plate] = k > 1`` (split over ``k`` devices) is drawn per block, as
    :func:`jaxguides.subsample.indices.draw_indices` stratifies: block ``b`` of the
    batch is ``subsample_size / k`` rows of block ``b`` of the plate, each block
    its own epoch permutation, all in step (the cursor's offset counts
    positions within a block).
    """
    cursors, rows = dict(state.plates), {}
    for p in _frames(state, plates):
        k = (blocks or {}).get(p.name, 1)
        per_block, take = block_sizes(p, k)
        cur = cursors[p.name]
        new = cur.offset + take > per_block
        offset, epoch = jnp.where(new, jnp.zeros_like(cur.offset), cur.offset), jnp.where(new, cur.epoch + 1, cur.epoch)
        cur = cursors[p.name] = cur._replace(offset=offset, epoch=epoch)
        positions = cur.offset + jnp.arange(take, dtype=cur.offset.dtype)
        rows[p.name] = _rows(cur, p, k, positions)
    return SubsampleState(cursors), rows


def batch_indices(
    state: SubsampleState, plates: tuple[PlateFrame, ...], blocks: dict[str, int] | None = None
) -> dict[str, jax.Array]:
    """The rows the next step will see, ``{plate: int32[subsample_size]}``."""
    return next_batch(state, plates, blocks)[1]


def advance(
    state: SubsampleState,
    plates: tuple[PlateFrame, ...],
    ok: jax.Array | bool = True,
    blocks: dict[str, int] | None = None,
) -> SubsampleState:
    """The cursors after a step on their batch (from :func:`next_batch`, with the
    same ``blocks``): the batch is used up if the step was ``ok``; a non-finite
    step leaves it to be drawn again."""
    cursors = dict(state.plates)
    for p in _frames(state, plates):
        cur = cursors[p.name]
        take = block_sizes(p, (blocks or {}).get(p.name, 1))[1]
        cursors[p.name] = cur._replace(offset=jnp.where(ok, cur.offset + take, cur.offset))
    return SubsampleState(cursors)
