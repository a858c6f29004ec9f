"""NumPyro's param names, at the edge only.

``to_numpyro_params`` gives exactly what ``svi.get_params`` holds for a
NumPyro ``AutoNormal`` / ``AutoDelta`` with prefix ``"auto"``: constrained
values, ``{site}_auto_loc`` (and ``{site}_auto_scale`` for AutoNormal).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxguides._errors import SiteError
from jaxguides.guides.delta import AutoDelta, AutoDeltaParams
from jaxguides.guides.guide_list import AutoGuideList, AutoGuideListParams
from jaxguides.guides.normal import _SCALE, AutoNormal, AutoNormalParams
from jaxguides.model.params import unconstrain_params

__all__ = ["from_numpyro_params", "to_numpyro_params"]

Guide = AutoNormal | AutoDelta | AutoGuideList
Params = AutoNormalParams | AutoDeltaParams | AutoGuideListParams
PREFIX = "auto"


def to_numpyro_params(guide: Guide, params: Params) -> dict[str, jax.Array]:
    """NumPyro's ``svi.get_params`` dict for the same guide: the guide's params
    under NumPyro's names, and the model's own ``numpyro.param`` sites under
    their site names, constrained.

    Examples:
        >>> import jax, numpyro, numpyro.distributions as dist, jaxguides as jg
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0))
        >>> guide = jg.AutoNormal(model)
        >>> sorted(jg.to_numpyro_params(guide, guide.init(jax.random.PRNGKey(0))))
        ['x_auto_loc', 'x_auto_scale']
    """
    sites = guide.check_params(params)
    if isinstance(params, AutoGuideListParams):  # NumPyro's AutoGuideList: its parts' params, merged
        out = {}
        for part, part_params in zip(guide.guides, params.parts):  # type: ignore[union-attr]
            out.update(to_numpyro_params(part, part_params))
        return {**out, **params.model_param_values}
    out = {}
    for site in sites.latents:
        if isinstance(params, AutoNormalParams):
            out[f"{site.name}_{PREFIX}_loc"] = params.loc[site.name]
            out[f"{site.name}_{PREFIX}_scale"] = _SCALE(params.raw_scale[site.name])
        else:
            out[f"{site.name}_{PREFIX}_loc"] = site.transform(params.support[site.name])(params.loc[site.name])
    return {**out, **params.model_param_values}


def from_numpyro_params(
    guide: Guide, numpyro_params: dict[str, ArrayLike], rng_key: jax.Array, *args: Any, **kwargs: Any
) -> Params:
    """Our params from a NumPyro ``AutoNormal`` / ``AutoDelta``'s ``svi.get_params``.

    The model is traced once with ``rng_key, *args, **kwargs`` (as ``guide.init``)
    for its site description; values come from ``numpyro_params``.
    """
    params = guide.init(rng_key, *args, **kwargs)
    return _filled(guide, params, numpyro_params)


def _filled(guide: Guide, params: Params, numpyro_params: dict[str, ArrayLike]) -> Params:
    """``params`` (of ``guide.init``) with their values from ``numpyro_params``."""
    model_params = unconstrain_params(params.sites.params, _model_param_values(numpyro_params, params), params.support)
    if isinstance(params, AutoGuideListParams):
        parts = tuple(_filled(g, p, numpyro_params) for g, p in zip(guide.guides, params.parts))  # type: ignore[union-attr]
        return dataclasses.replace(params, parts=parts, model_params=model_params)
    locs, scales = {}, {}
    for site in params.sites.latents:
        if isinstance(params, AutoNormalParams):
            locs[site.name] = _take(numpyro_params, site.name, "loc", site.unconstrained_shape)
            scales[site.name] = _SCALE.inv(_take(numpyro_params, site.name, "scale", site.unconstrained_shape))
        else:
            point = _take(numpyro_params, site.name, "loc", site.shape)
            locs[site.name] = site.transform(params.support[site.name]).inv(point)
    if isinstance(params, AutoNormalParams):
        return dataclasses.replace(params, loc=locs, raw_scale=scales, model_params=model_params)
    return dataclasses.replace(params, loc=locs, model_params=model_params)


def _model_param_values(numpyro_params: dict[str, ArrayLike], params: Params) -> dict[str, Any]:
    """The model's ``numpyro.param`` values in ``numpyro_params``, checked against ``params``'."""
    out = {}
    for site in params.sites.params:
        if site.name not in numpyro_params:
            raise SiteError(
                site.name,
                f"NumPyro params have no {site.name!r} for the model's numpyro.param site '{site.name}'; "
                "pass the whole svi.get_params(state) dict.",
            )
        value, like = numpyro_params[site.name], params.model_params[site.name]
        if jax.tree.structure(value) != jax.tree.structure(like) or any(  # type: ignore[operator]
            jnp.shape(a) != jnp.shape(b) for a, b in zip(jax.tree.leaves(value), jax.tree.leaves(like))
        ):
            raise SiteError(
                site.name,
                f"NumPyro param {site.name!r} has structure {jax.tree.map(jnp.shape, value)}, but the model "
                f"gives {jax.tree.map(jnp.shape, like)}; were they made for this model?",
            )
        out[site.name] = jax.tree.map(jnp.asarray, value)
    return out


def _take(numpyro_params: dict[str, ArrayLike], site: str, kind: str, shape: tuple[int, ...]) -> jax.Array:
    key = f"{site}_{PREFIX}_{kind}"
    if key not in numpyro_params:
        raise SiteError(
            site, f"NumPyro params have no {key!r} for latent site '{site}'; were they made for this model?"
        )
    value = jnp.asarray(numpyro_params[key])
    if tuple(value.shape) != shape:
        raise SiteError(site, f"NumPyro param {key!r} has shape {tuple(value.shape)}, but site '{site}' needs {shape}")
    return value
