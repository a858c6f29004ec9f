"""Our guides called as NumPyro guides: ``guide(*args, **kwargs)``.

Inside NumPyro's handlers (``Predictive``, NumPyro's own ``SVI``), a call
declares the ``numpyro.param`` sites NumPyro's ``AutoNormal`` / ``AutoDelta``
declare, under the same names (``{site}_auto_loc``, ``{site}_auto_scale``),
inside the same plates, and samples every latent site from the same
distribution, in the model's order: with params substituted (say
``Predictive(model, guide=guide, params=jg.to_numpyro_params(guide,
params))``) and the same key, it draws what NumPyro's guide draws.

The guide holds no state: each call traces the model once (hidden from the
caller's handlers by ``handlers.block``, with a fixed key, so it takes no
random numbers of the caller's) for the site description and the init
values that ``numpyro.param`` returns when nothing is substituted.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.primitives import Messenger

from jaxguides.model.sites import is_identity

__all__ = ["call_as_numpyro_guide"]

_STRUCTURE_KEY = 0  # the key of the structural trace: fixed, so a call takes none of the caller's


def call_as_numpyro_guide(guide: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, jax.Array]:
    """Run ``guide`` as a NumPyro guide; returns ``{latent site: value}``."""
    from jaxguides.interop.numpyro_params import to_numpyro_params  # the interop edge, which imports the guides

    with handlers.block():
        params = guide.init(jax.random.PRNGKey(_STRUCTURE_KEY), *args, **kwargs)
    sites = params.sites
    init = to_numpyro_params(guide, params)
    plates = {}
    if guide.create_plates is not None:  # the user's plates, as NumPyro's guides take them
        made = guide.create_plates(*args, **kwargs)
        plates = {p.name: p for p in ([made] if isinstance(made, numpyro.plate) else made)}
    frames = {f.name: f for s in sites.latents for f in s.plates if f.dim is not None}
    for name in sorted(frames):  # the order NumPyro creates them in (their subsample draws)
        if name not in plates:
            f = frames[name]
            plates[name] = numpyro.plate(name, f.size, dim=f.dim, subsample_size=f.subsample_size)
    normal = hasattr(params, "raw_scale")
    declared: dict[str, tuple[Any, ...]] = {}
    probe = _InitProbe(init)
    with probe:  # the params first: which of them the caller substituted
        for site in sites.latents:
            with _entered(plates, site):
                loc_name = f"{site.name}_auto_loc"
                if normal:
                    event_dim = site.unconstrained_event_dim
                    loc = numpyro.param(loc_name, init[loc_name], event_dim=event_dim)
                    scale_name = f"{site.name}_auto_scale"
                    scale = numpyro.param(
                        scale_name, init[scale_name], constraint=constraints.softplus_positive, event_dim=event_dim
                    )
                    declared[site.name] = (loc, scale)
                else:
                    support = site.support.build(params.support[site.name])
                    loc = numpyro.param(loc_name, init[loc_name], constraint=support, event_dim=site.event_dim)
                    declared[site.name] = (loc,)
    from_init = {s.name for s in sites.latents if f"{s.name}_auto_loc" in probe.from_init}
    # Params substituted for some sites only (Predictive(model, guide, params=...) called
    # without the data, which makes an observed site latent here): the others are not the
    # fitted guide's sites, and are left to the model, as NumPyro's guide (set up with the
    # data) leaves them.
    skip = from_init if len(from_init) < len(sites.latents) else set()
    out = {}
    for site in sites.latents:
        if site.name in skip:
            continue
        transform = site.transform(params.support[site.name])
        with _entered(plates, site):
            if normal:
                loc, scale = declared[site.name]
                fn = dist.Normal(loc, scale).to_event(site.unconstrained_event_dim)
                if not is_identity(transform):
                    fn = dist.TransformedDistribution(fn, transform)
            else:
                fn = dist.Delta(declared[site.name][0]).to_event(site.event_dim)
            out[site.name] = numpyro.sample(site.name, fn)
    return out


def _entered(plates: dict[str, Any], site: Any) -> contextlib.ExitStack:
    """The plates of ``site``, entered (outermost first)."""
    stack = contextlib.ExitStack()
    for frame in site.plates:
        if frame.dim is not None:
            stack.enter_context(plates[frame.name])
    return stack


class _InitProbe(Messenger):
    """Records which of the params in ``init`` got their init value (nothing substituted
    them). Entered before the plates, so it sees each value before a subsampled plate
    slices it: the init value is then the very object given."""

    def __init__(self, init: dict[str, Any]):
        super().__init__()
        self.init = init
        self.from_init: set[str] = set()

    def postprocess_message(self, msg: dict[str, Any]) -> None:
        name = msg.get("name")
        if msg["type"] == "param" and name in self.init and msg["value"] is self.init[name]:
            self.from_init.add(name)
