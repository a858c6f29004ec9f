"""Subsample indices for the subsampled plates of a model.

The guide and the model must see the same rows: the ELBO draws one index
array per subsampled plate here and hands it to both (the guide gathers its
full-size params with it, the model gets it through ``substitute``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
from numpyro import handlers

from jaxguides.model.sites import LatentSite, PlateFrame

__all__ = ["block_sizes", "draw_indices", "join_blocks", "gather_rows", "plate_scale", "user_plate_indices"]

Indices = dict[str, jax.Array]


def user_plate_indices(
    create_plates: Callable[..., Any] | None, rng_key: jax.Array, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Indices:
    """Indices of the plates returned by a user's ``create_plates(*args, **kwargs)``."""
    if create_plates is None:
        return {}
    with handlers.trace() as tr, handlers.seed(rng_seed=rng_key):
        plates = create_plates(*args, **kwargs)
    got = plates
    try:
        plates = [plates] if isinstance(plates, numpyro.plate) else list(plates)
    except TypeError:
        plates = [got]
    if not all(isinstance(p, numpyro.plate) for p in plates):
        raise TypeError(
            "create_plates(*args, **kwargs) must return a numpyro.plate or an iterable of plates, "
            f"got {type(got).__name__}"
        )
    return {p.name: tr[p.name]["value"] for p in plates}


def draw_indices(
    plates: tuple[PlateFrame, ...],
    rng_key: jax.Array,
    create_plates: Callable[..., Any] | None = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    blocks: dict[str, int] | None = None,
) -> Indices:
    """One index array (shape ``(subsample_size,)``) per subsampled plate.

    Plates returned by ``create_plates`` use the user's indices; the others
    draw ``subsample_size`` rows without replacement, as NumPyro does. A plate
    with ``blocks[plate] = k > 1`` is stratified: block ``b`` of its rows,
    ``[b*size/k, (b+1)*size/k)``, gives ``subsample_size/k`` of them (so each
    device of a plate sharded ``k`` ways draws from its own rows, in order).
    Every row is still drawn with probability ``subsample_size/size``, so the
    ``size/subsample_size`` scaling keeps the estimate unbiased.
    """
    user_key, own_key = jax.random.split(rng_key)
    indices = user_plate_indices(create_plates, user_key, args, kwargs or {})
    for i, plate in enumerate(plates):
        if plate.subsampled and plate.name not in indices:
            key = jax.random.fold_in(own_key, i)
            k = (blocks or {}).get(plate.name, 1)
            if k > 1:
                indices[plate.name] = _block_choice(key, plate, k)
            else:
                indices[plate.name] = jax.random.choice(key, plate.size, (plate.subsample_size,), replace=False)
    return indices


def block_sizes(plate: PlateFrame, k: int) -> tuple[int, int]:
    """``(rows per block, batch rows per block)`` of ``plate`` drawn in ``k`` blocks."""
    if plate.size % k or plate.subsample_size % k:
        raise ValueError(
            f"plate {plate.name!r} (size {plate.size}, subsample_size {plate.subsample_size}) cannot be "
            f"drawn in {k} equal blocks; both sizes must be multiples of {k}."
        )
    return plate.size // k, plate.subsample_size // k


def join_blocks(local: jax.Array, rows: int) -> jax.Array:
    """Plate rows ``int[k * take]`` from each block's own rows ``local: int[k, take]``
    (block ``b`` holds the plate's rows ``[b rows, (b+1) rows)``), block by block."""
    return (local + rows * jnp.arange(local.shape[0], dtype=local.dtype)[:, None]).reshape(-1)


def _block_choice(key: jax.Array, plate: PlateFrame, k: int) -> jax.Array:
    rows, take = block_sizes(plate, k)
    return join_blocks(
        jax.vmap(lambda b: jax.random.choice(b, rows, (take,), replace=False))(jax.random.split(key, k)), rows
    )


def gather_rows(site: LatentSite, x: jax.Array, indices: Indices | None, unconstrained: bool = True) -> jax.Array:
    """Rows of a full-size per-site array ``x`` for the current subsample."""
    if not indices:
        return x
    for frame in site.plates:
        if frame.subsampled and frame.name in indices:
            x = jnp.take(x, indices[frame.name], axis=site.plate_axis(frame, unconstrained))
    return x


def plate_scale(site: LatentSite, indices: Indices | None) -> float:
    """``size / subsample_size`` over the subsampled plates ``site`` sits in."""
    scale = 1.0
    for frame in site.plates:
        if indices and frame.subsampled and frame.name in indices:
            scale *= frame.size / indices[frame.name].shape[0]
    return scale
