"""Row-sparse Adam: a step of a subsampled plate touches only the batch's rows.

A model with K local latents in a subsampled plate gets a gradient that is
exactly zero outside the current batch. Dense Adam still rewrites every row
of the params and of both moments on every step, O(K). ``sparse_adam`` is an
optax ``GradientTransformationExtraArgs`` whose ``update`` also accepts
``rows=``: for each params leaf either ``None`` (a global leaf, updated
densely, exactly as ``optax.adam``) or :class:`Rows` (the leaf's gradient is
given for those rows only, and only those rows of the params and moments are
read and written). ``fit`` and ``svi(...).step`` detect it and differentiate
the loss with respect to the batch's rows only, so a step costs O(batch).

What dense Adam does to a row between two of its batches (gradient zero):
its moments decay, ``m <- b1 m``, ``v <- b2 v``, and the row keeps moving by
``-lr * m_hat / (sqrt(v_hat) + eps)``, the momentum's tail. Row-sparse Adam
reproduces both, lazily, from the step ``last`` of each element's previous
update:

* the moments are decayed exactly, by ``b ** (t - last)``, when the row is
  touched again at step ``t``; the bias correction uses the global step ``t``.
  So a touched row's moments, and its own update on that step, equal dense
  Adam's;
* the momentum tail is applied at once, on the step that creates it: with
  ``r = b1 / sqrt(b2)`` the tail of the steps after ``t`` sums to
  ``r / (1 - r)`` times the step's update (geometric, with the bias
  corrections held at step ``t`` and ``eps`` held in the direction). When the
  row comes back after ``gap`` steps, the part of that tail past its return,
  ``r ** gap / (1 - r)`` times the earlier update, is taken back, since dense
  Adam carries it on inside the decayed moments.

So a row's trajectory, sampled at its batches, follows dense Adam's up to the
frozen bias correction in the tail; rows a step does not touch keep their
values, and the fit converges like dense Adam (``tests/test_sparse.py``).
TensorFlow's ``LazyAdam`` and PyTorch's ``SparseAdam`` neither decay skipped
moments nor apply the tail, and so move a row about ``sqrt(size /
subsample_size)`` times less per epoch than dense Adam does.

Rows must be distinct within a step (the epoch cursor of ``fit`` guarantees
it); a row listed twice would get two updates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxguides.subsample.indices import Indices

__all__ = [
    "Rows",
    "SparseAdamState",
    "SparseTransformation",
    "apply_rows",
    "row_spec",
    "sparse_adam",
    "take_rows",
]


class Rows(NamedTuple):
    """The rows of one params leaf that a step touches: ``index`` along ``axis``.

    Not a pytree to pass through ``jit``: build it inside the traced step.
    """

    axis: int
    index: jax.Array  # type: ignore[assignment]  # shadows tuple.index, by design


RowSpec = list  # list[Rows | None], aligned with jax.tree.leaves(params)


class SparseAdamState(NamedTuple):
    """State of :func:`sparse_adam`.

    Attributes:
        count: ``int32[]``, steps taken.
        mu: first moments, like params (full size).
        nu: second moments, like params (full size).
        last: ``int32`` per element, like params: the step of the element's
            latest update (its moments are as of that step).
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax names it
    mu: Any
    nu: Any
    last: Any


class SparseTransformation(optax.GradientTransformationExtraArgs):
    """An optax transformation whose ``update`` takes ``rows=`` (see :func:`sparse_adam`).

    A marker subclass: ``fit`` gives it row gradients; anything else (including
    ``optax.chain`` around it) sees an ordinary dense transformation.
    """


# ---- rows of params ------------------------------------------------------------------------
def row_spec(params: Any, indices: Indices) -> RowSpec:
    """For each leaf of guide ``params``: :class:`Rows` if it holds a latent site's
    values (``params.leaf_sites()``) in a subsampled plate of ``indices``, else ``None``.

    Raises:
        NotImplementedError: a site sits in two subsampled plates.
    """
    sites = {s.name: s for s in params.sites.latents}
    spec: RowSpec = []
    for name, leaf in zip(params.leaf_sites(), jax.tree.leaves(params)):
        site = sites.get(name) if name is not None else None
        frames = [f for f in site.plates if f.name in indices] if site is not None else []
        if site is not None and len(frames) > 1:
            raise NotImplementedError(
                f"latent site '{site.name}' sits in {len(frames)} subsampled plates "
                f"({[f.name for f in frames]}); sparse_adam updates rows of one plate per site. "
                "Use optax.adam for this model."
            )
        if site is not None and frames:
            axis = jnp.ndim(leaf) + site.plate_axis(frames[0])
            spec.append(Rows(axis, indices[frames[0].name]))
        else:
            spec.append(None)
    return spec


def _at(rows: Rows, ndim: int) -> tuple[Any, ...]:
    return (slice(None),) * rows.axis + (rows.index,) + (slice(None),) * (ndim - rows.axis - 1)


def take_rows(tree: Any, spec: RowSpec) -> Any:
    """``tree`` (like params) with each row leaf gathered to its rows, O(batch)."""
    leaves, treedef = jax.tree.flatten(tree)
    out = [x if r is None else jnp.take(x, r.index, axis=r.axis) for x, r in zip(leaves, spec)]
    return jax.tree.unflatten(treedef, out)


def _put_rows(tree: Any, values: Any, spec: RowSpec, old: Any = None, mask: jax.Array | None = None) -> Any:
    """``tree`` with ``values`` written at its rows (dense leaves replaced); where
    ``mask`` is False the rows get ``old`` (their values as read) back instead."""
    leaves, treedef = jax.tree.flatten(tree)
    olds = jax.tree.leaves(old) if mask is not None else [None] * len(leaves)
    out = []
    for x, v, o, r in zip(leaves, jax.tree.leaves(values), olds, spec):
        v = v if mask is None else jnp.where(mask, v, o)
        out.append(v if r is None else x.at[_at(r, x.ndim)].set(v))
    return jax.tree.unflatten(treedef, out)


def apply_rows(params: Any, updates: Any, spec: RowSpec | None, mask: jax.Array | None = None) -> Any:
    """``optax.apply_updates`` for updates given on rows: dense leaves add, row leaves are
    written at their rows. With ``mask`` False, ``params`` come back bit for bit.

    The rows are written in place, on every step: a masked write, not a
    ``lax.cond``, because XLA copies a whole table that a ``cond`` branch
    writes in place.
    """
    if spec is None and mask is None:
        return optax.apply_updates(params, updates)
    leaves, treedef = jax.tree.flatten(params)
    spec = spec if spec is not None else [None] * len(leaves)
    rows = take_rows(params, spec)
    new = jax.tree.map(lambda x, u: (x + u).astype(x.dtype), rows, updates)
    return _put_rows(params, new, spec, rows, mask)


# ---- the transformation --------------------------------------------------------------------
def sparse_adam(
    learning_rate: float | Callable[[jax.Array], jax.Array],
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> SparseTransformation:
    """Adam that reads and writes only the rows a step touches (see the module docstring).

    Without ``rows`` it is ``optax.adam(learning_rate, b1, b2, eps)``, update for
    update (the moments bit for bit, the updates to rounding). With ``rows`` (one
    entry per params leaf, see :func:`row_spec`) the gradient of a row leaf is
    given for its rows only, and the returned update
    is for those rows (apply it with :func:`apply_rows`); ``mask=False`` (a
    traced bool) leaves the state as it was and returns zero updates. The update
    of a row is dense Adam's update
    on that step, its momentum tail over the following steps, less the part
    of the previous tail past this step. With a schedule, the tail uses the
    current step's learning rate.

    Args:
        learning_rate: a float or an optax schedule ``count -> lr``.
        b1, b2, eps: as in ``optax.adam``.

    Returns:
        A :class:`SparseTransformation`; pass it to ``fit`` / ``svi`` as the optimizer.

    Examples:
        >>> import jax.numpy as jnp, jaxguides as jg
        >>> from jaxguides.optim.sparse import Rows
        >>> opt = jg.sparse_adam(0.1)
        >>> params = {"z": jnp.zeros(5)}
        >>> state = opt.init(params)
        >>> rows = [Rows(0, jnp.array([1, 3]))]
        >>> updates, state = opt.update({"z": jnp.ones(2)}, state, params, rows=rows)
        >>> updates["z"].shape  # for the two rows only: Adam's step and its momentum tail
        (2,)
        >>> new = jg.apply_rows(params, updates, rows)["z"]
        >>> bool((new[jnp.array([0, 2, 4])] == 0).all()) and bool((new[jnp.array([1, 3])] < 0).all())
        True
    """
    if not callable(learning_rate) and not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0 or a schedule, got {learning_rate!r}")
    for name, b in (("b1", b1), ("b2", b2)):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {b!r}")

    def init(params: Any) -> SparseAdamState:
        zeros = jax.tree.map(jnp.zeros_like, params)
        last = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.int32), params)
        return SparseAdamState(jnp.zeros((), jnp.int32), zeros, jax.tree.map(jnp.zeros_like, params), last)

    r = b1 / math.sqrt(b2)  # ratio of the momentum tail's geometric series
    log_b1, log_b2, log_r = (math.log(x) if x > 0 else -math.inf for x in (b1, b2, r))

    def power(log_base: float, n: jax.Array, dtype: Any) -> jax.Array:
        """``base ** n`` for integer ``n >= 1`` as one ``exp`` (XLA's ``pow`` costs six times more)."""
        return jnp.exp(n.astype(dtype) * log_base)

    def update(
        grads: Any,
        state: SparseAdamState,
        params: Any = None,
        *,
        rows: RowSpec | None = None,
        mask: jax.Array | None = None,
        **extra: Any,
    ) -> tuple[Any, SparseAdamState]:
        del params, extra
        count = optax.safe_int32_increment(state.count)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        spec = rows if rows is not None else [None] * len(jax.tree.leaves(grads))
        mu_rows, nu_rows, last_rows = (take_rows(t, spec) for t in (state.mu, state.nu, state.last))

        def direction(m: jax.Array, v: jax.Array) -> jax.Array:
            """Adam's ``m_hat / (sqrt(v_hat) + eps)`` at this step, with optax's own bias correction."""
            m_hat = optax.tree_utils.tree_bias_correction(m, b1, count)
            v_hat = optax.tree_utils.tree_bias_correction(v, b2, count)
            return m_hat / (jnp.sqrt(v_hat) + eps)

        def earlier_direction(m: jax.Array, v: jax.Array, last: jax.Array) -> jax.Array:
            """The direction the element's previous update (at step ``last``) took; 0 if none."""
            c1 = 1 - power(log_b1, last, m.dtype)
            c2 = 1 - power(log_b2, last, v.dtype)
            safe = last > 0
            d = (m / jnp.where(safe, c1, 1)) / (jnp.sqrt(v / jnp.where(safe, c2, 1)) + eps)
            return jnp.where(safe, d, 0)

        def one(g: jax.Array, m: jax.Array, v: jax.Array, last: jax.Array, row: Rows | None) -> tuple[jax.Array, ...]:
            gap = count - last  # 1 if the element was updated on the previous step
            d1 = jnp.where(gap == 1, b1, power(log_b1, gap, m.dtype)).astype(m.dtype)
            d2 = jnp.where(gap == 1, b2, power(log_b2, gap, v.dtype)).astype(v.dtype)
            m_new = (1 - b1) * g + d1 * m  # as optax.tree_utils.tree_update_moment
            v_new = (1 - b2) * (g**2) + d2 * v
            step = direction(m_new, v_new)
            u = -lr * step
            if row is not None:  # take back the earlier tail past this step; apply this step's tail
                back = earlier_direction(m, v, last) * (power(log_r, gap, m.dtype) / (1 - r))
                u = u + lr * back - lr * step * (r / (1 - r))
            return u.astype(g.dtype), m_new, v_new, jnp.full(jnp.shape(g), count, jnp.int32)

        leaves = zip(*(jax.tree.leaves(t) for t in (grads, mu_rows, nu_rows, last_rows)), spec)
        flat = [one(*x) for x in leaves]
        treedef = jax.tree.structure(grads)
        updates, mu, nu, last = (jax.tree.unflatten(treedef, [f[i] for f in flat]) for i in range(4))
        if mask is not None:  # a masked step: the state as it was, no update
            count = jnp.where(mask, count, state.count)
            updates = jax.tree.map(lambda u: jnp.where(mask, u, jnp.zeros_like(u)), updates)
        new = SparseAdamState(
            count,
            _put_rows(state.mu, mu, spec, mu_rows, mask),
            _put_rows(state.nu, nu, spec, nu_rows, mask),
            _put_rows(state.last, last, spec, last_rows, mask),
        )
        return updates, new

    return SparseTransformation(init, update)
