"""AutoNormal: a mean-field Normal guide in unconstrained space.

Each latent site ``z`` gets ``u ~ Normal(loc, softplus(raw_scale))`` with the
site's unconstrained event dims reinterpreted as one event, and
``z = biject_to(support)(u)`` -- the numerics of NumPyro's
``numpyro.infer.autoguide.AutoNormal``, as pure functions of ``params``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.typing import ArrayLike
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.infer.initialization import init_to_feasible

from jaxguides._errors import SiteError
from jaxguides.guides.base import Draw, GuideBase
from jaxguides.model.params import ModelParamValues
from jaxguides.model.sites import LatentSite, ModelSites, is_identity, trace_model
from jaxguides.model.support_checks import without_real_support_check
from jaxguides.subsample.indices import Indices, gather_rows, plate_scale

__all__ = ["AutoNormal", "AutoNormalParams"]

_SCALE = biject_to(constraints.softplus_positive)


@dataclasses.dataclass(frozen=True)
class AutoNormalParams(ModelParamValues):
    """Params of :class:`AutoNormal`: a pytree (the site description is static).

    Attributes:
        loc: ``{site: Array[site.unconstrained_shape]}``, unconstrained, full plate size.
        raw_scale: ``{site: Array[site.unconstrained_shape]}``; the guide's scale
            is ``softplus(raw_scale)`` (see :attr:`scale`).
        model_params: ``{param site: value}``, the model's own ``numpyro.param``
            sites (a network's weights: a pytree) in unconstrained space, trained
            with the guide; :attr:`model_param_values` gives them constrained.
        support: ``{site: tuple of arrays}``, array-valued parameters of the
            support of each latent and model param site (e.g. an interval's
            bounds); constant, never trained.
        model_state: ``{mutable site: value}``, the model's ``numpyro.mutable``
            state, carried from step to step; constant to the optimizer.
        sites: static description of the model's sites (lives in the treedef).
    """

    loc: dict[str, jax.Array]
    raw_scale: dict[str, jax.Array]
    support: dict[str, tuple[jax.Array, ...]]
    sites: ModelSites
    model_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    model_state: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def scale(self) -> dict[str, jax.Array]:
        """The guide's scale per site, ``softplus(raw_scale)``."""
        return {k: _SCALE(v) for k, v in self.raw_scale.items()}


jax.tree_util.register_dataclass(
    AutoNormalParams,
    data_fields=["loc", "raw_scale", "model_params", "support", "model_state"],
    meta_fields=["sites"],
)


def _check_init_scale(init_scale: Any) -> float | tuple[tuple[str, float], ...]:
    """A float, or a per-site ``{site: float}`` as a sorted tuple of items (hashable)."""
    if isinstance(init_scale, Mapping):
        if not all(isinstance(k, str) for k in init_scale):
            raise ValueError(f"init_scale as a dict maps site names to floats, got keys {list(init_scale)!r}")
        return tuple(sorted((k, _check_init_scale(v)) for k, v in init_scale.items()))  # type: ignore[misc]
    if isinstance(init_scale, tuple) and all(isinstance(x, tuple) and len(x) == 2 for x in init_scale):
        return tuple(sorted((str(k), _check_init_scale(v)) for k, v in init_scale))  # type: ignore[misc]
    # numbers.Real: also NumPy scalars (np.float32(0.1)); not bools, though they are ints
    ok = isinstance(init_scale, numbers.Real) and not isinstance(init_scale, bool)
    if not ok or not math.isfinite(init_scale) or init_scale <= 0:
        raise ValueError(
            f"init_scale must be a finite float > 0 (or a dict of them by site name), got {init_scale!r}; "
            "the default is 0.1."
        )
    return float(init_scale)


def _site_scales(init_scale: float | tuple[tuple[str, float], ...], names: Sequence[str]) -> dict[str, float]:
    """Each site's init scale: a float for all, or per site (sites not named: 0.1)."""
    if isinstance(init_scale, float):
        return dict.fromkeys(names, init_scale)
    given = dict(init_scale)
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise SiteError(
            unknown[0],
            f"init_scale names site(s) {unknown} that the model has no latent site of; its latent sites "
            f"are {list(names)}.",
        )
    return {n: given.get(n, 0.1) for n in names}


@dataclasses.dataclass(frozen=True)
class AutoNormal(GuideBase):
    """Mean-field Normal guide in unconstrained space (Pyro's / NumPyro's AutoNormal).

    Args:
        model: a NumPyro model.
        init_loc_fn: any NumPyro init strategy for the locs (default
            ``init_to_feasible``).
        init_scale: initial scale of every site in unconstrained space (a
            dict ``{site: scale}`` sets it per site, 0.1 for sites not named); a
            finite float > 0.
        create_plates: optional ``f(*args, **kwargs) -> plate | [plates]``
            fixing the subsample indices of those plates.

    Examples:
        >>> import jax, numpyro, numpyro.distributions as dist, jaxguides as jg
        >>> def model():
        ...     numpyro.sample("x", dist.LogNormal(0.0, 1.0))
        >>> guide = jg.AutoNormal(model)
        >>> params = guide.init(jax.random.PRNGKey(0))
        >>> guide.sample(params, jax.random.PRNGKey(1), sample_shape=(5,))["x"].shape
        (5,)
    """

    model: Callable[..., Any]
    init_loc_fn: Callable[..., Any] = dataclasses.field(default=init_to_feasible, kw_only=True)
    init_scale: float | tuple[tuple[str, float], ...] = dataclasses.field(default=0.1, kw_only=True)
    create_plates: Callable[..., Any] | None = dataclasses.field(default=None, kw_only=True)

    params_type = AutoNormalParams

    def __post_init__(self) -> None:
        object.__setattr__(self, "init_scale", _check_init_scale(self.init_scale))

    # ---- construction ---------------------------------------------------------
    def init(self, rng_key: jax.Array, *args: Any, **kwargs: Any) -> AutoNormalParams:
        """Trace the model once and build the initial params.

        Returns:
            ``AutoNormalParams`` with ``loc`` from ``init_loc_fn`` (mapped to
            unconstrained space) and ``softplus(raw_scale) == init_scale``.
        """
        traced = trace_model(self.model, rng_key, args, kwargs, self.init_loc_fn)
        scales = _site_scales(self.init_scale, list(traced.locs))
        raw = {
            n: jnp.full(jnp.shape(v), _SCALE.inv(jnp.asarray(scales[n], jnp.result_type(v))))
            for n, v in traced.locs.items()
        }
        return AutoNormalParams(
            loc=traced.locs,
            raw_scale=raw,
            support=traced.support,
            sites=traced.sites,
            model_params=traced.model_params,
            model_state=traced.model_state,
        )

    # ---- the guide's distributions --------------------------------------------
    def _site_dist(
        self, site: LatentSite, params: AutoNormalParams, indices: Indices | None = None, stop_gradient: bool = False
    ) -> dist.Distribution:
        loc = gather_rows(site, params.loc[site.name], indices)
        scale = _SCALE(gather_rows(site, params.raw_scale[site.name], indices))
        if stop_gradient:
            loc, scale = jax.lax.stop_gradient(loc), jax.lax.stop_gradient(scale)
        base = dist.Normal(loc, scale).to_event(site.unconstrained_event_dim)
        transform = site.transform(jax.lax.stop_gradient(params.support[site.name]))
        return base if is_identity(transform) else dist.TransformedDistribution(base, transform)

    def get_posterior(self, params: AutoNormalParams) -> dict[str, dist.Distribution]:
        """``{site: numpyro Distribution}`` in constrained space, at full plate size."""
        sites = self.check_params(params)
        return {s.name: self._site_dist(s, params) for s in sites.latents}

    # ---- public guide functions ----------------------------------------------
    def sample(
        self,
        params: AutoNormalParams,
        rng_key: jax.Array,
        *args: Any,
        sample_shape: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> dict[str, jax.Array]:
        """Draw constrained values of every latent site (and deterministic sites).

        Returns:
            ``{site: Array[*sample_shape, *site.shape]}``; deterministic sites are
            included when the model can be called with ``*args, **kwargs``.
        """
        sites = self.check_params(params)
        sample_shape = tuple(sample_shape)
        det_key, eps_key = jax.random.split(rng_key)
        shapes = [sample_shape + params.loc[s.name].shape for s in sites.latents]
        out = {}
        for site, eps in zip(
            sites.latents, _standard_normals(eps_key, shapes, [params.loc[s.name].dtype for s in sites.latents])
        ):
            loc, scale = params.loc[site.name], _SCALE(params.raw_scale[site.name])
            u = jnp.broadcast_to(loc, eps.shape) + jnp.broadcast_to(scale, eps.shape) * eps  # no rank promotion
            out[site.name] = site.transform(params.support[site.name])(u)
        return self.with_deterministic(sites, out, det_key, args, kwargs, sample_shape, params=params)

    def log_prob(self, params: AutoNormalParams, values: dict[str, ArrayLike], *args: Any, **kwargs: Any) -> jax.Array:
        """Guide log density of constrained ``values`` (Jacobian included), a scalar.

        Values at subsample size (with ``create_plates`` fixing the rows) are
        scored on those rows and scaled by ``size / subsample_size``, as NumPyro
        scores its guide inside a subsampled plate.
        """
        sites = self.check_params(params)
        arrays = {k: jnp.asarray(v) for k, v in values.items()}
        indices = self.value_indices(sites, arrays, args, kwargs)
        total = jnp.zeros(())
        for site in sites.latents:
            value = arrays[site.name]
            sub = indices if tuple(value.shape) != site.shape else None
            lp = jnp.sum(self._site_dist(site, params, sub).log_prob(value))
            total = total + plate_scale(site, sub) * lp
        return total

    def median(self, params: AutoNormalParams, *args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        """``{site: biject_to(support)(loc)}`` (plus deterministic sites given args)."""
        sites = self.check_params(params)
        out = {s.name: s.transform(params.support[s.name])(params.loc[s.name]) for s in sites.latents}
        return self.with_deterministic(sites, out, jax.random.PRNGKey(0), args, kwargs, params=params)

    def quantiles(
        self, params: AutoNormalParams, qs: Sequence[float] | ArrayLike, *args: Any, **kwargs: Any
    ) -> dict[str, jax.Array]:
        """Per-coordinate quantiles in unconstrained space, mapped to constrained space.

        Returns:
            ``{site: Array[len(qs), *site.shape]}``, as NumPyro's ``quantiles``
            (deterministic sites, computed from those values, when the model
            can be called with ``*args, **kwargs``).
        """
        sites = self.check_params(params)
        qs = jnp.asarray(qs)
        out = {}
        for s in sites.latents:
            loc, scale = params.loc[s.name], _SCALE(params.raw_scale[s.name])
            shape = (qs.size,) + loc.shape
            q = jnp.broadcast_to(qs.reshape((-1,) + (1,) * loc.ndim).astype(loc.dtype), shape)
            u = dist.Normal(jnp.broadcast_to(loc, shape), jnp.broadcast_to(scale, shape)).icdf(q)  # no rank promotion
            out[s.name] = s.transform(params.support[s.name])(u)
        return self.with_deterministic(sites, out, jax.random.PRNGKey(0), args, kwargs, (qs.size,), params=params)

    # ---- for the ELBO ------------------------------------------------------------
    def draw(
        self,
        params: AutoNormalParams,
        rng_key: jax.Array,
        indices: Indices | None = None,
        stick_the_landing: bool = False,
    ) -> dict[str, Draw]:
        """One reparameterised draw for the current subsample, with log densities.

        With ``stick_the_landing`` the log density is evaluated with
        stopped-gradient params (the path-derivative estimator).
        """
        sites = self.check_params(params)
        # a real-support check only turns a non-finite draw's NaN density into -inf: the guard sees both
        qs = [without_real_support_check(self._site_dist(site, params, indices)) for site in sites.latents]
        normals = [_base_normal(q) for q in qs]
        out = {}
        for site, q, normal, eps in zip(
            sites.latents,
            qs,
            normals,
            _standard_normals(rng_key, [n.batch_shape for n in normals], [jnp.result_type(n.loc) for n in normals]),
        ):
            score = (
                without_real_support_check(self._site_dist(site, params, indices, stop_gradient=True))
                if stick_the_landing
                else q
            )
            x = normal.loc + eps * normal.scale  # Normal.rsample's own formula, with this site's share of the draw
            if isinstance(q, dist.TransformedDistribution):
                value, intermediates = _push_forward(q, x)
                lp = score.log_prob(value, intermediates)
            else:
                value = x
                lp = score.log_prob(value)
            out[site.name] = Draw(value, plate_scale(site, indices) * lp, q)
        return out


def _standard_normals(rng_key: jax.Array, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[Any]) -> list[jax.Array]:
    """Standard normal arrays of ``shapes`` and ``dtypes`` from one draw of
    their total size: one random-number call per step, not one (and a key
    split) per site, which is what a small model's step and compilation pay for."""
    if not shapes:
        return []
    sizes = [math.prod(shape) for shape in shapes]
    flat = jax.random.normal(rng_key, (sum(sizes),), jnp.result_type(*dtypes))
    starts = itertools.accumulate(sizes[:-1], initial=0)
    return [
        flat[start : start + size].reshape(shape).astype(dtype)
        for start, size, shape, dtype in zip(starts, sizes, shapes, dtypes)
    ]


def _base_normal(q: dist.Distribution) -> dist.Normal:
    """The ``Normal`` under a site's guide distribution (``_site_dist``'s structure)."""
    base = q.base_dist if isinstance(q, dist.TransformedDistribution) else q
    while isinstance(base, dist.Independent):
        base = base.base_dist
    assert isinstance(base, dist.Normal), type(base)
    return base


def _push_forward(q: dist.TransformedDistribution, x: jax.Array) -> tuple[jax.Array, list[Any]]:
    """``q``'s sample at base point ``x`` with the intermediates its ``log_prob``
    reuses: NumPyro's own ``sample_with_intermediates``, run on a point mass at ``x``."""
    point = dist.Delta(x, event_dim=len(q.base_dist.event_shape))
    return dist.TransformedDistribution(point, q.transforms).sample_with_intermediates(None)
