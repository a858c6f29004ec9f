"""What an SVI loop carries: ``SVIState`` (a pytree), ``SVIInfo`` (a step's report), ``SVI`` (the pair)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from jaxguides.subsample.epoch import SubsampleState

__all__ = ["SVI", "SVIInfo", "SVIState"]


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


class SVIInfo(NamedTuple):
    """What one step reports, beside the new state (blackjax's ``(state, info)``).

    Attributes:
        loss: the step's loss, a scalar (not finite when ``finite`` is False).
        finite: the loss and every gradient were finite and the update was applied.
        skipped: ``~finite``: params, optimizer state and epoch cursors were kept
            as they were; only ``state.step`` moved on.
    """

    loss: jax.Array
    finite: jax.Array
    skipped: jax.Array


class SVI(NamedTuple):
    """A pair of pure functions, ``init`` and ``step`` (see :func:`svi`)."""

    init: Callable[..., SVIState]
    step: Callable[..., tuple[SVIState, SVIInfo]]
