"""Which rows of each subsampled plate a step uses: the one place that chooses.

Three ways to choose, composed by :func:`step_rows`:

- **epoch** (``subsample/epoch.py``): the fit's own cursors walk a keyed
  permutation per epoch, O(batch) a step; the plates a fit draws this way are
  :func:`epoch_plates`;
- **user** (``create_plates``): the rows a guide's ``create_plates`` gives;
- **fresh** (``subsample/indices.py``, ``draw_indices``): a new draw, in
  ``blocks[plate]`` strata when the plate is split over devices, as NumPyro
  draws (and as ``elbo_loss`` draws when it is called without rows).

The ELBO receives the chosen rows; sharding only sets the number of blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from jaxguides.model.sites import ModelSites, PlateFrame
from jaxguides.subsample.epoch import SubsampleState, next_batch
from jaxguides.subsample.indices import Indices, draw_indices, user_plate_indices

__all__ = ["epoch_plates", "step_rows"]


def epoch_plates(
    sites: ModelSites, create_plates: Callable[..., Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[PlateFrame, ...]:
    """The subsampled plates a fit draws from epoch permutations: those that
    ``create_plates`` does not fix (a plate drawn in per-device blocks, as a
    sharded one is, gets one permutation per block)."""
    fixed = user_plate_indices(create_plates, jax.random.PRNGKey(0), args, kwargs)
    return tuple(p for p in sites.subsampled_plates if p.name not in fixed)


def step_rows(
    plates: tuple[PlateFrame, ...],
    cursors: SubsampleState | None,
    step_key: jax.Array,
    create_plates: Callable[..., Any] | None,
    blocks: dict[str, int],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[SubsampleState | None, Indices, jax.Array]:
    """``(cursors, rows, key)``: this step's rows of every subsampled plate -- the
    epoch cursors' next batch (with the cursors it came from), the user's
    ``create_plates`` rows, fresh (stratified) draws for the rest -- and the key
    left for the loss. Only fresh draws take a key of their own (split off
    ``step_key``)."""
    cursors, own = next_batch(cursors, plates, blocks) if cursors is not None else (None, {})
    rest = tuple(p for p in plates if p.name not in own)
    if create_plates is None and not any(p.subsampled for p in rest):
        return cursors, own, step_key
    plate_key, step_key = jax.random.split(step_key)
    return cursors, {**draw_indices(rest, plate_key, create_plates, args, kwargs, blocks), **own}, step_key
