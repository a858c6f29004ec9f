"""AutoDelta: a point-mass (MAP) guide.

Each latent site is a point inside its support, optimised in unconstrained
space through ``biject_to(support)`` -- the numerics of NumPyro's
``numpyro.infer.autoguide.AutoDelta`` (whose ``{site}_auto_loc`` is the
constrained point), as pure functions of ``params``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.typing import ArrayLike
from numpyro.infer.initialization import init_to_median

from jaxguides.guides.base import Draw, GuideBase
from jaxguides.model.params import ModelParamValues
from jaxguides.model.sites import LatentSite, ModelSites, trace_model
from jaxguides.subsample.indices import Indices, gather_rows, plate_scale

__all__ = ["AutoDelta", "AutoDeltaParams"]


@dataclasses.dataclass(frozen=True)
class AutoDeltaParams(ModelParamValues):
    """Params of :class:`AutoDelta`: a pytree (the site description is static).

    Attributes:
        loc: ``{site: Array[site.unconstrained_shape]}``: the point in
            unconstrained space; ``guide.median(params)`` maps it into the support.
        model_params: ``{param site: value}``, the model's own ``numpyro.param``
            sites, unconstrained, trained with the guide (see ``AutoNormalParams``).
        support: ``{site: tuple of arrays}``, array-valued parameters of the
            support of each latent and model param site; constant, never trained.
        model_state: ``{mutable site: value}``, the model's ``numpyro.mutable`` state.
        sites: static description of the model's sites (lives in the treedef).
    """

    loc: dict[str, jax.Array]
    support: dict[str, tuple[jax.Array, ...]]
    sites: ModelSites
    model_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    model_state: dict[str, Any] = dataclasses.field(default_factory=dict)


jax.tree_util.register_dataclass(
    AutoDeltaParams, data_fields=["loc", "model_params", "support", "model_state"], meta_fields=["sites"]
)


@dataclasses.dataclass(frozen=True)
class AutoDelta(GuideBase):
    """Point-mass guide for MAP estimation (Pyro's / NumPyro's AutoDelta).

    Args:
        model: a NumPyro model.
        init_loc_fn: any NumPyro init strategy (default ``init_to_median``).
        create_plates: optional ``f(*args, **kwargs) -> plate | [plates]``
            fixing the subsample indices of those plates.

    Examples:
        >>> import jax, numpyro, numpyro.distributions as dist, jaxguides as jg
        >>> def model():
        ...     numpyro.sample("x", dist.Gamma(2.0, 1.0))
        >>> guide = jg.AutoDelta(model)
        >>> params = guide.init(jax.random.PRNGKey(0))
        >>> bool(guide.median(params)["x"] > 0)
        True
    """

    model: Callable[..., Any]
    init_loc_fn: Callable[..., Any] = dataclasses.field(default=init_to_median, kw_only=True)
    create_plates: Callable[..., Any] | None = dataclasses.field(default=None, kw_only=True)

    params_type = AutoDeltaParams

    def init(self, rng_key: jax.Array, *args: Any, **kwargs: Any) -> AutoDeltaParams:
        """Trace the model once; the point starts at ``init_loc_fn``'s value."""
        traced = trace_model(self.model, rng_key, args, kwargs, self.init_loc_fn)
        return AutoDeltaParams(
            loc=traced.locs,
            support=traced.support,
            sites=traced.sites,
            model_params=traced.model_params,
            model_state=traced.model_state,
        )

    def _point(self, site: LatentSite, params: AutoDeltaParams, indices: Indices | None = None) -> jax.Array:
        transform = site.transform(jax.lax.stop_gradient(params.support[site.name]))
        return transform(gather_rows(site, params.loc[site.name], indices))

    def median(self, params: AutoDeltaParams, *args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        """``{site: point}`` in constrained space (plus deterministic sites given args)."""
        sites = self.check_params(params)
        out = {s.name: self._point(s, params) for s in sites.latents}
        return self.with_deterministic(sites, out, jax.random.PRNGKey(0), args, kwargs, params=params)

    def sample(
        self,
        params: AutoDeltaParams,
        rng_key: jax.Array,
        *args: Any,
        sample_shape: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> dict[str, jax.Array]:
        """The point broadcast to ``sample_shape`` (plus deterministic sites given args)."""
        sites = self.check_params(params)
        sample_shape = tuple(sample_shape)
        out = {
            s.name: jnp.broadcast_to(v, sample_shape + v.shape) for s in sites.latents for v in [self._point(s, params)]
        }
        return self.with_deterministic(sites, out, rng_key, args, kwargs, sample_shape, params=params)

    def log_prob(self, params: AutoDeltaParams, values: dict[str, ArrayLike], *args: Any, **kwargs: Any) -> jax.Array:
        """0 when ``values`` is the point, ``-inf`` elsewhere (a scalar)."""
        sites = self.check_params(params)
        arrays = {k: jnp.asarray(v) for k, v in values.items()}
        indices = self.value_indices(sites, arrays, args, kwargs)
        total = jnp.zeros(())
        for site in sites.latents:
            value = arrays[site.name]
            sub = indices if tuple(value.shape) != site.shape else None
            lp = dist.Delta(self._point(site, params, sub), event_dim=site.event_dim).log_prob(value)
            total = total + plate_scale(site, sub) * jnp.sum(lp)
        return total

    def draw(
        self,
        params: AutoDeltaParams,
        rng_key: jax.Array,
        indices: Indices | None = None,
        stick_the_landing: bool = False,
    ) -> dict[str, Draw]:
        """The point for the current subsample; its log density is 0."""
        del rng_key, stick_the_landing  # a point mass has neither noise nor score
        sites = self.check_params(params)
        out = {}
        for site in sites.latents:
            value = self._point(site, params, indices)
            out[site.name] = Draw(value, jnp.zeros((), value.dtype), dist.Delta(value, event_dim=site.event_dim))
        return out
