"""The model's own ``numpyro.param`` and ``numpyro.mutable`` sites.

A model may hold point-estimated params of its own (``numpyro.param("noise",
1.0, constraint=positive)``, the weights a ``numpyro.module`` /
``flax_module`` / ``eqx_module`` registers as ``"{name}$params"``) and
mutable state (``numpyro.mutable``: BatchNorm statistics of a
``flax_module(..., mutable=["batch_stats"])``). NumPyro's SVI trains the
params jointly with the guide's, in unconstrained space through
``biject_to(constraint)``, and carries the mutable state from step to step;
so do we:

* :func:`describe_params` reads both kinds of site from the one trace that
  ``guide.init`` makes: a static :class:`ParamSite` per param (its
  constraint's structure), the params' unconstrained values (any pytree:
  a network's weights are a dict of arrays) and the state's values;
* the guide's params pytree holds them (``model_params``, trained;
  ``model_state``, carried, never differentiated);
* :func:`model_substitutions` gives what every run of the model must see,
  the constrained params and a fresh copy of the state, so the ELBO, the
  deterministic sites and ``to_arviz`` all run the model on the fitted values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from jaxguides._errors import SiteError

__all__ = [
    "ModelParamValues",
    "ParamSite",
    "constrain_params",
    "describe_params",
    "model_substitutions",
    "unconstrain_params",
]


@dataclasses.dataclass(frozen=True)
class ParamSite:
    """A ``numpyro.param`` site of the model.

    Attributes:
        name: site name (``"{module}$params"`` for a ``numpyro.module``).
        support: static part of its constraint (a ``SupportSpec``); array
            leaves (an interval's bounds) are in ``params.support[name]``.
    """

    name: str
    support: Any  # SupportSpec (jaxguides.model.sites), kept as Any to avoid an import cycle

    def transform(self, support_data: tuple[jax.Array, ...] = ()) -> Any:
        """The bijection from unconstrained space onto the constraint."""
        return biject_to(self.support.build(support_data))


class ModelParamValues:
    """For guide params dataclasses (fields ``sites``, ``model_params``, ``support``):
    the model's ``numpyro.param`` values in their constraints."""

    sites: Any
    model_params: dict[str, Any]
    support: dict[str, tuple[jax.Array, ...]]

    @property
    def model_param_values(self) -> dict[str, Any]:
        """The model's ``numpyro.param`` values, in their constraints (as ``svi.get_params`` has them)."""
        return constrain_params(self.sites.params, self.model_params, self.support)

    def leaf_sites(self) -> list[str | None]:
        """For each leaf of these params (in ``jax.tree.leaves`` order), the latent
        site it holds values of (a ``loc`` / ``raw_scale`` entry, in a part of a
        guide list too), else ``None``: what a row-wise optimizer needs to know."""
        out: list[str | None] = []
        for path, _ in jax.tree_util.tree_flatten_with_path(self)[0]:
            site = None
            for field, key in zip(path, path[1:]):
                if getattr(field, "name", None) in _SITE_FIELDS and isinstance(key, jax.tree_util.DictKey):
                    site = key.key
            out.append(site)
        return out


_SITE_FIELDS = ("loc", "raw_scale")  # the guide params' fields keyed by latent site


def describe_params(
    trace: dict[str, dict[str, Any]], split_support: Any
) -> tuple[tuple[ParamSite, ...], dict[str, Any], dict[str, tuple[jax.Array, ...]], dict[str, Any]]:
    """``(param sites, unconstrained values, support data, mutable state)`` of a model trace.

    ``split_support`` is ``SupportSpec.split``. A value that is a pytree (a
    network's weights) is mapped leaf by leaf, as NumPyro maps a module's
    weights (constraint ``real``).

    Raises:
        SiteError: a param whose constraint has no bijection to real space, or a
            param or mutable site declared inside a ``scan`` body.
    """
    sites, values, support, state = [], {}, {}, {}
    for name, site in trace.items():
        if site["type"] in ("param", "mutable") and site.get("_control_flow_done"):
            kind = "numpyro.param" if site["type"] == "param" else "numpyro.mutable"
            raise SiteError(
                name,
                f"{kind} site '{name}' is declared inside a scan body: a scan does not pass "
                "substituted values into its steps, so it would stay at its init value. Declare it "
                "before the scan (a network: build the flax_module / eqx_module there) and close "
                "over it in the step.",
            )
        if site["type"] == "mutable":
            state[name] = site["value"]
            continue
        if site["type"] != "param":
            continue
        constraint = site["kwargs"].get("constraint", constraints.real)
        try:
            transform = biject_to(constraint)
        except NotImplementedError:
            raise SiteError(
                name,
                f"numpyro.param site '{name}' has constraint {constraint} with no bijection to real "
                "space, so it cannot be trained in unconstrained space. Use a constraint that has one "
                "(positive, interval, simplex, ...), or make it a latent sample site.",
            ) from None
        spec, data = split_support(constraint)
        sites.append(ParamSite(name, spec))
        values[name] = jax.tree.map(lambda x, inv=transform.inv: _strong(inv(x)), site["value"])
        support[name] = data
    return tuple(sites), values, support, jax.tree.map(_strong, state)


def _strong(x: Any) -> jax.Array:
    """``x`` without JAX's weak type (a Python float init value), as NumPyro's SVI converts it,
    so the trained value keeps one dtype from step to step."""
    return jax.lax.convert_element_type(x, jnp.result_type(x))


def constrain_params(
    sites: tuple[ParamSite, ...], unconstrained: dict[str, Any], support: dict[str, tuple[jax.Array, ...]]
) -> dict[str, Any]:
    """``{name: value in its constraint}`` from the unconstrained values."""
    out = {}
    for site in sites:
        transform = site.transform(jax.lax.stop_gradient(support[site.name]))
        out[site.name] = jax.tree.map(transform, unconstrained[site.name])
    return out


def unconstrain_params(
    sites: tuple[ParamSite, ...], values: dict[str, Any], support: dict[str, tuple[jax.Array, ...]]
) -> dict[str, Any]:
    """The inverse of :func:`constrain_params`."""
    return {s.name: jax.tree.map(s.transform(support[s.name]).inv, values[s.name]) for s in sites}


def model_substitutions(params: Any) -> dict[str, Any]:
    """What a run of the model substitutes for its param and mutable sites.

    The constrained params, and the mutable state copied container by
    container: a ``flax_module`` with state updates the state dict it is
    given in place, which must not be the one inside ``params``.
    """
    sites = params.sites
    values = constrain_params(sites.params, params.model_params, params.support)
    state = {name: jax.tree.map(lambda x: x, value) for name, value in params.model_state.items()}
    return {**values, **state}
