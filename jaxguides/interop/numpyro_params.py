"""NumPyro's param names, at the edge only.

``to_numpyro_params`` gives exactly what ``svi.get_params`` holds for a
NumPyro ``AutoNormal`` / ``AutoDelta`` with prefix ``"auto"``: constrained
values, ``{site}_auto_loc`` (and ``{site}_auto_scale`` for AutoNormal).

Each params type registers its own mapping, one implementation per type of
each of :func:`numpyro_values` and :func:`fields_from_numpyro`
(``functools.singledispatch``), so a new guide registers itself rather than
editing a type switch; the model's own ``numpyro.param`` sites are handled
here, once, for all of them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxguides._errors import SiteError
from jaxguides.guides.delta import AutoDelta, AutoDeltaParams
from jaxguides.guides.guide_list import AutoGuideList, AutoGuideListParams
from jaxguides.guides.normal import _SCALE, AutoNormal, AutoNormalParams
from jaxguides.model.params import unconstrain_params
from jaxguides.model.sites import ModelSites

__all__ = ["fields_from_numpyro", "from_numpyro_params", "numpyro_values", "to_numpyro_params"]

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
    return {**numpyro_values(params, guide, sites), **params.model_param_values}


def from_numpyro_params(
    guide: Guide, numpyro_params: dict[str, ArrayLike], rng_key: jax.Array, *args: Any, **kwargs: Any
) -> Params:
    """Our params from a NumPyro ``AutoNormal`` / ``AutoDelta``'s ``svi.get_params``.

    The model is traced once with ``rng_key, *args, **kwargs`` (as ``guide.init``)
    for its site description; values come from ``numpyro_params``.
    """
    params = guide.init(rng_key, *args, **kwargs)
    return _filled(guide, params, numpyro_params)


@functools.singledispatch
def numpyro_values(params: Any, guide: Any, sites: ModelSites) -> dict[str, jax.Array]:
    """The guide's own params (not the model's param sites) under NumPyro's names:
    ``{name: constrained value}``; one implementation per params type."""
    _unregistered(params)


@functools.singledispatch
def fields_from_numpyro(params: Any, guide: Any, numpyro_params: dict[str, ArrayLike]) -> dict[str, Any]:
    """The fields of ``params`` (of ``guide.init``) that hold the guide's own values,
    from ``numpyro_params`` (``{field: value}``, for ``dataclasses.replace``);
    one implementation per params type."""
    _unregistered(params)


def _unregistered(params: Any) -> NoReturn:
    raise TypeError(
        f"params of type {type(params).__qualname__} have no NumPyro names: only AutoNormal, AutoDelta and "
        "AutoGuideList params map to NumPyro names; a new guide's params register theirs with "
        "numpyro_values.register and fields_from_numpyro.register (jaxguides/interop/numpyro_params.py)."
    )


@numpyro_values.register
def _normal_values(params: AutoNormalParams, guide: AutoNormal, sites: ModelSites) -> dict[str, jax.Array]:
    out = {}
    for site in sites.latents:
        out[f"{site.name}_{PREFIX}_loc"] = params.loc[site.name]
        out[f"{site.name}_{PREFIX}_scale"] = _SCALE(params.raw_scale[site.name])
    return out


@numpyro_values.register
def _delta_values(params: AutoDeltaParams, guide: AutoDelta, sites: ModelSites) -> dict[str, jax.Array]:
    return {
        f"{site.name}_{PREFIX}_loc": site.transform(params.support[site.name])(params.loc[site.name])
        for site in sites.latents
    }


@numpyro_values.register
def _list_values(params: AutoGuideListParams, guide: AutoGuideList, sites: ModelSites) -> dict[str, jax.Array]:
    out = {}  # NumPyro's AutoGuideList: its parts' params, merged
    for part, part_params in zip(guide.guides, params.parts):
        out.update(to_numpyro_params(part, part_params))
    return out


def _filled(guide: Guide, params: Params, numpyro_params: dict[str, ArrayLike]) -> Params:
    """``params`` (of ``guide.init``) with their values from ``numpyro_params``."""
    model_params = unconstrain_params(params.sites.params, _model_param_values(numpyro_params, params), params.support)
    fields = fields_from_numpyro(params, guide, numpyro_params)
    return dataclasses.replace(params, **fields, model_params=model_params)


@fields_from_numpyro.register
def _normal_fields(params: AutoNormalParams, guide: AutoNormal, numpyro_params: dict[str, ArrayLike]) -> dict[str, Any]:
    locs, scales = {}, {}
    for site in params.sites.latents:
        locs[site.name] = _take(numpyro_params, site.name, "loc", site.unconstrained_shape)
        scales[site.name] = _SCALE.inv(_take(numpyro_params, site.name, "scale", site.unconstrained_shape))
    return {"loc": locs, "raw_scale": scales}


@fields_from_numpyro.register
def _delta_fields(params: AutoDeltaParams, guide: AutoDelta, numpyro_params: dict[str, ArrayLike]) -> dict[str, Any]:
    locs = {}
    for site in params.sites.latents:
        point = _take(numpyro_params, site.name, "loc", site.shape)
        locs[site.name] = site.transform(params.support[site.name]).inv(point)
    return {"loc": locs}


@fields_from_numpyro.register
def _list_fields(
    params: AutoGuideListParams, guide: AutoGuideList, numpyro_params: dict[str, ArrayLike]
) -> dict[str, Any]:
    return {"parts": tuple(_filled(g, p, numpyro_params) for g, p in zip(guide.guides, params.parts))}


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
