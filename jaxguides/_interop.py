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

from jaxguides._delta import AutoDelta, AutoDeltaParams
from jaxguides._errors import SiteError
from jaxguides._normal import _SCALE, AutoNormal, AutoNormalParams

__all__ = ["from_numpyro_params", "to_numpyro_params"]

Guide = AutoNormal | AutoDelta
Params = AutoNormalParams | AutoDeltaParams
PREFIX = "auto"


def to_numpyro_params(guide: Guide, params: Params) -> dict[str, jax.Array]:
    """NumPyro's ``svi.get_params`` dict for the same guide.

    Examples:
        >>> import jax, numpyro, numpyro.distributions as dist, jaxguides as jg
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0))
        >>> guide = jg.AutoNormal(model)
        >>> sorted(jg.to_numpyro_params(guide, guide.init(jax.random.PRNGKey(0))))
        ['x_auto_loc', 'x_auto_scale']
    """
    sites = guide.check_params(params)
    out = {}
    for site in sites.latents:
        if isinstance(params, AutoNormalParams):
            out[f"{site.name}_{PREFIX}_loc"] = params.loc[site.name]
            out[f"{site.name}_{PREFIX}_scale"] = _SCALE(params.raw_scale[site.name])
        else:
            out[f"{site.name}_{PREFIX}_loc"] = site.transform(params.support[site.name])(params.loc[site.name])
    return out


def from_numpyro_params(
    guide: Guide, numpyro_params: dict[str, ArrayLike], rng_key: jax.Array, *args: Any, **kwargs: Any
) -> Params:
    """Our params from a NumPyro ``AutoNormal`` / ``AutoDelta``'s ``svi.get_params``.

    The model is traced once with ``rng_key, *args, **kwargs`` (as ``guide.init``)
    for its site description; values come from ``numpyro_params``.
    """
    params = guide.init(rng_key, *args, **kwargs)
    locs, scales = {}, {}
    for site in params.sites.latents:
        if isinstance(params, AutoNormalParams):
            locs[site.name] = _take(numpyro_params, site.name, "loc", site.unconstrained_shape)
            scales[site.name] = _SCALE.inv(_take(numpyro_params, site.name, "scale", site.unconstrained_shape))
        else:
            point = _take(numpyro_params, site.name, "loc", site.shape)
            locs[site.name] = site.transform(params.support[site.name]).inv(point)
    if isinstance(params, AutoNormalParams):
        return dataclasses.replace(params, loc=locs, raw_scale=scales)
    return dataclasses.replace(params, loc=locs)


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
