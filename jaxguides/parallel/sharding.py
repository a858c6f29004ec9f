"""Data-parallel layout of a fit: what is split along a mesh axis, what is replicated.

One job: turn ``(mesh, shard_plates)`` into ``NamedSharding``\\ s, for

* the guide's params -- a latent site inside a sharded plate is split along
  that plate's axis (``site.plate_axis(frame)``) over the plate's mesh axis;
  every other site (global latents) and the support data are replicated;
* the optimizer state -- every subtree that mirrors the params (same tree
  structure and shapes, as optax's ``mu`` / ``nu`` do) gets the params'
  shardings, every other leaf (step counts, epoch cursors) is replicated;
* the model's array arguments -- an array whose **leading axis** has the full
  size of a sharded plate is split along that axis; everything else is
  replicated. An argument that is already a ``jax.Array`` laid out on the same
  mesh keeps its layout (that, or ``shard_args(..., specs=...)``, is how to
  split another axis).

Nothing else is hand-written: the computation is ordinary ``jax.jit`` code
and XLA's SPMD partitioner inserts the collectives (the gradient of a
replicated param is all-reduced because the param is replicated and the data
it meets is split). ``fit`` pins the state to this layout with
``with_sharding_constraint`` at the start and end of every compiled chunk
(and in the scan carry), so a chunk's output shardings are its input
shardings and the chunk compiles once. Random draws of split params are the
same as on one device because ``jax_threefry_partitionable`` (on by default)
makes random bits independent of the layout; so a sharded fit equals the
one-device fit up to the order of float sums (``tests/helpers/sharded_cases.py``
asserts ``rtol=1e-5, atol=1e-6`` on 8 simulated devices). Chaotic fits (e.g. the MAP of a
hierarchical funnel) amplify any change of summation order, as they would a
change of BLAS.

A subsampled plate that is split ``n`` ways is drawn in ``n`` blocks
(``elbo_loss(..., subsample_blocks=...)``, set by ``fit``): device ``b``
draws ``subsample_size / n`` of its own rows ``[b N/n, (b+1) N/n)``; each row
is still drawn with probability ``subsample_size / N``, so the
``N / subsample_size`` scaling keeps the ELBO unbiased. ``fit`` (and ``svi``
given ``loss=elbo_loss(..., subsample_blocks=...)``) takes those rows from one
epoch permutation per block (``jaxguides/subsample/epoch.py``), O(subsample_size) per
step; the loss called on its own draws them afresh.

Across processes (``jax.distributed.initialize``) every process holds the
full host data and calls ``fit`` alike with a mesh over ``jax.devices()``;
:func:`place` builds each global array with ``jax.make_array_from_callback``
from the process's own copy, so each device receives only its rows.
:func:`gather` brings a global array whole to every process; checkpoints are
gathered so and written by process 0 alone (one file of host arrays), and
on resume every process loads that file and re-shards it.

The low-level step runs sharded the same way::

    algo = jg.svi(model, guide, optax.adam(1e-2))
    state = jg.shard_state(algo.init(key, x, y), mesh, {"data": "batch"})
    (x, y), _ = jg.shard_args((x, y), mesh, {"data": "batch"}, state)
    shardings = jg.state_shardings(state, mesh, {"data": "batch"})
    step = jax.jit(algo.step, out_shardings=(shardings, NamedSharding(mesh, P())))
    state, loss = step(state, x, y)

(When the local latents do not fit on one device, build the state already
split: ``jax.jit(algo.init, out_shardings=jg.state_shardings(
jax.eval_shape(algo.init, key, x, y), mesh, plates))``.) On simulated CPU
devices (``--xla_force_host_platform_device_count``) keep one step in flight
(``jax.block_until_ready``) in a hand-written loop: many queued programs with
collectives can starve the host's thread pool and deadlock; ``fit`` runs one
chunk at a time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxguides.model.sites import LatentSite, ModelSites
from jaxguides.optim.trained import trained_part

__all__ = [
    "PlateLayout",
    "gather",
    "place",
    "shard_args",
    "shard_state",
    "state_shardings",
]

AxisName = Any  # a mesh axis name, or a tuple of them


@dataclasses.dataclass(frozen=True)
class PlateLayout:
    """A mesh and the plates split over its axes; static and hashable (a jit key).

    Attributes:
        mesh: the ``jax.sharding.Mesh``.
        plates: ``((plate name, mesh axis or tuple of axes), ...)``.
    """

    mesh: Mesh
    plates: tuple[tuple[str, AxisName], ...]

    @classmethod
    def build(cls, mesh: Mesh, shard_plates: Mapping[str, AxisName] | None) -> PlateLayout:
        """Check ``shard_plates`` against ``mesh`` (the model is checked by :meth:`check`)."""
        if not isinstance(mesh, Mesh):
            raise TypeError(
                f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}; shard_plates needs one, "
                'e.g. mesh=jax.sharding.Mesh(jax.devices(), ("batch",)).'
            )
        plates = dict(shard_plates or {})
        for plate, axis in plates.items():
            for name in axis if isinstance(axis, tuple) else (axis,):
                if name not in mesh.axis_names:
                    raise ValueError(
                        f"shard_plates maps plate {plate!r} to mesh axis {name!r}, but the mesh has "
                        f"axes {tuple(mesh.axis_names)}; name one of them."
                    )
        return cls(mesh, tuple(sorted(plates.items())))

    # ---- sizes and checks ----------------------------------------------------------
    def num_blocks(self, plate: str) -> int:
        """Devices along the mesh axis of ``plate`` (1 if the plate is not split)."""
        axis = dict(self.plates).get(plate)
        if axis is None:
            return 1
        return math.prod(self.mesh.shape[a] for a in (axis if isinstance(axis, tuple) else (axis,)))

    def blocks(self) -> dict[str, int]:
        """``{plate: devices along its mesh axis}`` for every split plate: the blocks a
        subsampled plate is drawn in (device ``b`` draws its share from its own rows)."""
        return {plate: self.num_blocks(plate) for plate, _ in self.plates}

    def check(self, sites: ModelSites) -> None:
        """Every split plate exists and divides evenly over its devices."""
        frames = {p.name: p for p in sites.plates}
        for plate, axis in self.plates:
            if plate not in frames:
                raise ValueError(
                    f"shard_plates names plate {plate!r}, but the model {sites.model} has plates "
                    f"{sorted(frames)}; name one of those."
                )
            frame, n = frames[plate], self.num_blocks(plate)
            if frame.size % n:
                raise ValueError(
                    f"plate {plate!r} has size {frame.size}, which does not divide evenly over the "
                    f"{n} devices of mesh axis {axis!r}; pad the data to a multiple of {n} (and mask "
                    "the padding), or use a mesh axis whose size divides it."
                )
            if frame.subsampled and frame.subsample_size % n:
                raise ValueError(
                    f"plate {plate!r} draws subsample_size={frame.subsample_size} rows per step, which "
                    f"does not divide evenly over the {n} devices of mesh axis {axis!r} (each device "
                    f"draws its share from its own rows); use a subsample_size that is a multiple of {n}."
                )
        for site in sites.latents:
            self._site_axes(site)

    # ---- params and optimizer state --------------------------------------------------
    def _site_axes(self, site: LatentSite) -> list[AxisName]:
        split = dict(self.plates)
        entries: list[AxisName] = [None] * len(site.unconstrained_shape)
        for frame in site.plates:
            if frame.name not in split or frame.dim is None:
                continue
            pos = len(entries) + site.plate_axis(frame)
            if not 0 <= pos < len(entries) or site.unconstrained_shape[pos] != frame.size:
                continue  # the site does not extend along this plate: nothing to split
            if split[frame.name] in entries:
                raise ValueError(
                    f"latent site {site.name!r} sits in two plates split over the same mesh axis "
                    f"{split[frame.name]!r}; map them to different mesh axes in shard_plates."
                )
            entries[pos] = split[frame.name]
        return entries

    def sharding(self, *entries: AxisName) -> NamedSharding:
        """``NamedSharding(mesh, PartitionSpec(*entries))`` with trailing ``None``\\ s dropped."""
        entries_list = list(entries)
        while entries_list and entries_list[-1] is None:
            entries_list.pop()
        return NamedSharding(self.mesh, PartitionSpec(*entries_list))

    @property
    def replicated(self) -> NamedSharding:
        return self.sharding()

    def params_shardings(self, params: Any) -> Any:
        """A pytree like ``params`` of ``NamedSharding``: split sites per plate, the rest replicated."""
        by_site = {s.name: self.sharding(*self._site_axes(s)) for s in params.sites.latents}
        per_site = [f.name for f in dataclasses.fields(params) if f.name in ("loc", "raw_scale")]
        out: dict[str, Any] = {name: {k: by_site[k] for k in getattr(params, name)} for name in per_site}
        if getattr(params, "parts", None) is not None:  # an AutoGuideList's: each part as its own params
            out["parts"] = tuple(self.params_shardings(p) for p in params.parts)
        replicated = [f.name for f in dataclasses.fields(params) if f.name not in (*per_site, *out, "sites")]
        out.update({name: jax.tree.map(lambda _: self.replicated, getattr(params, name)) for name in replicated})
        return dataclasses.replace(params, **out)

    def state_shardings(self, tree: Any) -> Any:
        """Shardings for any pytree holding the params (an ``SVIState``, an optimizer state).

        Subtrees that mirror the params (same structure and leaf shapes) get the
        params' shardings; every other leaf is replicated.
        """
        params = find_params(tree)
        if params is None:
            raise TypeError(
                "found no guide params (AutoNormalParams / AutoDeltaParams) in this pytree; pass an "
                "SVIState, the params themselves, or a tree that holds them."
            )
        # the params themselves, and their trained part, which optimizer states mirror
        views = [params, trained_part(params)[0]]
        known = [
            (jax.tree.structure(v), [np.shape(x) for x in jax.tree.leaves(v)], self.params_shardings(v)) for v in views
        ]

        def mirrored(x: Any) -> Any:
            if x is None:
                return None
            for treedef, shapes, shardings in known:
                if jax.tree.structure(x) == treedef and [np.shape(y) for y in jax.tree.leaves(x)] == shapes:  # type: ignore[operator]
                    return shardings
            return None

        def mirrors(x: Any) -> bool:
            return mirrored(x) is not None

        return jax.tree.map(lambda x: mirrored(x) or self.replicated, tree, is_leaf=mirrors)

    def constrain(self, tree: Any) -> Any:
        """Inside ``jit``: pin ``tree`` (a state) to its layout, so a chunk's output
        state has exactly the shardings its input state had."""
        return jax.lax.with_sharding_constraint(tree, self.state_shardings(tree))

    def constrain_replicated(self, tree: Any) -> Any:
        """Inside ``jit``: replicate ``tree`` (losses, flags) so every process can read it."""
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, self.replicated), tree)

    # ---- model arguments ---------------------------------------------------------------
    def arg_sharding(self, x: Any, sites: ModelSites, where: str) -> NamedSharding:
        """The leading-axis rule for one array argument (see the module docstring)."""
        if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding) and x.sharding.mesh == self.mesh:
            return x.sharding  # placed by the caller: keep it
        if np.ndim(x) == 0:
            return self.replicated
        sizes = {p.name: p.size for p in sites.plates}
        hits = [(plate, axis) for plate, axis in self.plates if sizes.get(plate) == np.shape(x)[0]]
        if len(hits) > 1:
            raise ValueError(
                f"argument {where} has leading axis {np.shape(x)[0]}, the size of several split plates "
                f"{[p for p, _ in hits]}; place it yourself, e.g. shard_args(..., specs={{...: "
                "PartitionSpec(axis)}}) or jax.device_put(x, NamedSharding(mesh, spec))."
            )
        return self.sharding(hits[0][1]) if hits else self.replicated


def find_params(tree: Any) -> Any:
    """The first guide params (a pytree with static ``sites``) inside ``tree``, else ``None``."""

    def is_params(x: Any) -> bool:
        return isinstance(getattr(x, "sites", None), ModelSites) and dataclasses.is_dataclass(x)

    found = [x for x in jax.tree.leaves(tree, is_leaf=is_params) if is_params(x)]
    return found[0] if found else None


def _sites_of(obj: Any) -> ModelSites:
    if isinstance(obj, ModelSites):
        return obj
    params = find_params(obj)
    if params is None:
        raise TypeError(f"expected ModelSites, guide params or an SVIState, got {type(obj).__name__}")
    return params.sites


# ---- placing and gathering global arrays ------------------------------------------------
def place(x: Any, sharding: NamedSharding) -> jax.Array:
    """``x`` as a global ``jax.Array`` laid out by ``sharding``.

    On one process this is ``jax.device_put``. Across processes each one
    passes its full copy of ``x`` (numpy or a process-local array) and
    ``jax.make_array_from_callback`` hands each local device its block.
    """
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if sharding.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)
    if _is_key(x):  # typed PRNG keys: place the raw key data
        return jax.random.wrap_key_data(place(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    host = np.asarray(x)
    host = host.astype(jax.dtypes.canonicalize_dtype(host.dtype), copy=False)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def gather(tree: Any) -> Any:
    """``tree`` with every array that spans other processes brought whole to this one.

    A collective across processes: all of them must call it together. Arrays
    this process holds whole already are returned as they are.
    """

    def get(x: Any) -> Any:
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return x
        if _is_key(x):
            return jax.random.wrap_key_data(get(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(get, tree)


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


# ---- public helpers for the low-level loop -------------------------------------------------
def state_shardings(tree: Any, mesh: Mesh, shard_plates: Mapping[str, AxisName]) -> Any:
    """``NamedSharding``\\ s for an ``SVIState`` (or params, or an optimizer state holding them).

    Args:
        tree: an ``SVIState``, guide params, or any pytree holding params; it
            may be abstract (``jax.eval_shape(algo.init, ...)``).
        mesh: the device mesh.
        shard_plates: ``{plate name: mesh axis}``.

    Returns:
        A pytree like ``tree`` of ``NamedSharding``: latent sites inside a split
        plate are split along that plate's axis, their optimizer-state mirrors
        alike; all else replicated. Use it as ``out_shardings`` of a jitted step
        so the layout stays the same from step to step.

    Examples:
        >>> import jax, numpy as np, numpyro, numpyro.distributions as dist, jaxguides as jg
        >>> def model(y):
        ...     with numpyro.plate("data", y.shape[0]):
        ...         z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        ...         numpyro.sample("y", dist.Normal(z, 1.0), obs=y)
        >>> params = jg.AutoNormal(model).init(jax.random.PRNGKey(0), np.zeros(4))
        >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("batch",))
        >>> jg.state_shardings(params, mesh, {"data": "batch"}).loc["z"].spec
        P('batch',)
    """
    layout = PlateLayout.build(mesh, shard_plates)
    params = find_params(tree)
    if params is not None:
        layout.check(params.sites)
    return layout.state_shardings(tree)


def shard_state(state: Any, mesh: Mesh, shard_plates: Mapping[str, AxisName]) -> Any:
    """``state`` placed on ``mesh`` with :func:`state_shardings` (works across processes:
    each passes its full copy, e.g. the result of ``algo.init`` or of a loaded checkpoint)."""
    shardings = state_shardings(state, mesh, shard_plates)
    return jax.tree.map(place, state, shardings)


def shard_args(
    args: tuple[Any, ...],
    mesh: Mesh,
    shard_plates: Mapping[str, AxisName],
    sites: Any,
    *,
    kwargs: Mapping[str, Any] | None = None,
    specs: Mapping[int | str, PartitionSpec | None] | None = None,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The model's array arguments placed on ``mesh`` (non-array leaves pass through).

    Rule: an array whose leading axis has the full size of a plate in
    ``shard_plates`` is split along that axis over the plate's mesh axis;
    other arrays are replicated; a ``jax.Array`` already laid out on ``mesh``
    is kept as it is. ``specs`` overrides the rule per argument: keys are
    positions in ``args`` or names in ``kwargs``, values a ``PartitionSpec``
    for every array of that argument (``None``: replicate).

    Args:
        args: the model's positional arguments (full data, on every process).
        mesh, shard_plates: as for ``fit``.
        sites: ``ModelSites``, guide params or an ``SVIState`` (for the plate sizes).
        kwargs: the model's keyword arguments.
        specs: per-argument overrides of the rule.

    Returns:
        ``(args, kwargs)`` with global ``jax.Array``\\ s in place of arrays.

    Examples:
        >>> import jax, numpy as np, numpyro, numpyro.distributions as dist, jaxguides as jg
        >>> def model(y):
        ...     with numpyro.plate("data", y.shape[0]):
        ...         numpyro.sample("y", dist.Normal(numpyro.sample("mu", dist.Normal(0.0, 1.0)), 1.0), obs=y)
        >>> params = jg.AutoNormal(model).init(jax.random.PRNGKey(0), np.zeros(4))
        >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("batch",))
        >>> (y,), _ = jg.shard_args((np.zeros(4),), mesh, {"data": "batch"}, params)
        >>> y.sharding.spec
        P('batch',)
    """
    layout = PlateLayout.build(mesh, shard_plates)
    model_sites = _sites_of(sites)
    layout.check(model_sites)
    specs = dict(specs or {})
    tree = (tuple(args), dict(kwargs or {}))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    out = []
    for path, x in leaves:
        if not isinstance(x, (jax.Array, np.ndarray, np.generic)):
            out.append(x)
            continue
        key = path[1].idx if path[0].idx == 0 else path[1].key  # position in args / name in kwargs
        where = f"{'args[%d]' % key if path[0].idx == 0 else repr(key)}{jax.tree_util.keystr(path[2:])}"
        if key in specs:
            spec = specs[key]
            sharding = NamedSharding(mesh, spec if spec is not None else PartitionSpec())
        else:
            sharding = layout.arg_sharding(x, model_sites, where)
        out.append(place(x, sharding))
    new_args, new_kwargs = jax.tree_util.tree_unflatten(treedef, out)
    return new_args, new_kwargs
