"""The negative ELBO as a pure, jittable function of params.

``elbo_loss(model, guide)`` has the semantics of NumPyro's ``Trace_ELBO``: the
guide draws every latent site (for the current subsample), the model is run
once with those values substituted (through ``numpyro.infer.util.
compute_log_probs``, so plate scaling, masks and factors are NumPyro's own),
and the guide's log density is scaled by ``size / subsample_size`` inside
subsampled plates, exactly as the model's is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.distributions.kl import kl_divergence
from numpyro.infer.util import compute_log_probs
from numpyro.primitives import Messenger

from jaxguides._errors import SiteError
from jaxguides.elbo.total import total
from jaxguides.guides.base import Draw, Guide
from jaxguides.model.params import model_substitutions
from jaxguides.model.sites import ModelSites, check_continuous, check_scan_body
from jaxguides.model.support_checks import skip_real_support_checks
from jaxguides.subsample.indices import Indices, draw_indices, plate_scale

__all__ = ["ELBOLoss", "elbo_loss"]


class _ModelGuard(Messenger):
    """Refuse, while tracing, a model whose latent sites do not match params."""

    def __init__(self, fn: Any, sites: ModelSites, shapes: dict[str, tuple[int, ...]], blocked: bool = False):
        super().__init__(fn)
        self.sites = sites
        self.shapes = shapes
        self.blocked = blocked  # the guide's model is the model under handlers.block
        self._own: dict[str, Any] = {}  # a plate's rows before the ELBO's are substituted

    def process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "plate":
            self._check_plate(msg)
            return
        if msg["type"] == "control_flow":  # a scan's steps: checked before params are substituted into them
            check_scan_body(msg, self._check_step)
            return
        if msg["type"] in ("param", "mutable"):
            self._check_param(msg)
            return
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        name = msg["name"]
        if name not in self.shapes:
            check_continuous(name, msg["fn"])
            if self.blocked:
                raise SiteError(
                    name,
                    f"the model has a latent site '{name}' that this guide does not cover: its model is "
                    f"the model under handlers.block, which hides '{name}' (the guide covers "
                    f"{list(self.sites.names)}). Cover the hidden sites with other guides: "
                    "jg.AutoGuideList([this guide, jg.AutoNormal(handlers.block(model, expose=[...]))]).",
                )
            raise SiteError(
                name,
                f"the model has a latent site '{name}' that these params do not have "
                f"(params are for {self.sites.model} with sites {list(self.sites.names)}); "
                "the model changed or the params are of another model: call guide.init again.",
            )
        self._check_shape(name, tuple(msg["fn"].shape()))  # a scanned site's: stacked, (T, ...)

    def _check_step(self, name: str, fn: Any, stacked_shape: tuple[int, ...]) -> None:
        """A latent site of one scan step, by the shape its steps stack to (another ``T`` fails here)."""
        if name in self.shapes:  # a site the params lack is refused once the scan has run
            self._check_shape(name, stacked_shape)

    def _check_shape(self, name: str, got: tuple[int, ...]) -> None:
        want = self.shapes[name]
        if got != want:
            raise SiteError(
                name,
                f"latent site '{name}' has shape {got} for these args, but the params "
                f"from guide.init give it shape {want}. A latent's shape may change only "
                "through subsampling: if the data size changed, call guide.init with the "
                "new data, or put the data in a subsampled plate.",
            )

    def _check_param(self, msg: dict[str, Any]) -> None:
        """A param or mutable site the params do not hold would run on its init value."""
        known = {p.name for p in self.sites.params} if msg["type"] == "param" else set(self.sites.mutable)
        if msg["name"] not in known:
            kind = "numpyro.param" if msg["type"] == "param" else "numpyro.mutable"
            raise SiteError(
                msg["name"],
                f"the model has a {kind} site '{msg['name']}' that these params do not have "
                f"(params are for {self.sites.model}, whose {kind} sites are {sorted(known)}); "
                "the model changed or the params are of another model: call guide.init again.",
            )

    def _check_plate(self, msg: dict[str, Any]) -> None:
        """Note the rows a plate of the params had before the ELBO's rows are
        substituted (``None``, or the rows an inner handler gave it, or all of
        them when it asks for all): :meth:`postprocess_message` needs them."""
        if any(p.name == msg["name"] for p in self.sites.plates):
            self._own[msg["name"]] = msg["value"]

    def postprocess_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "plate" and msg["name"] in self._own:
            self._plate_rows(msg, self._own.pop(msg["name"]))

    def _plate_rows(self, msg: dict[str, Any], own: Any) -> None:
        """Keep the ELBO's rows of a plate where they are the rows the model asks for.

        The guide and the model share a plate's rows only where the guide has
        latent sites in it: there the rows the guide used must be the ones the
        model asks for (same size; as many rows as its subsample_size, or any
        when it names none and ``create_plates`` chose them), else the call is
        refused (the params are of the init size). A plate of observed sites
        only takes the ELBO's rows while it asks for what ``guide.init`` saw;
        otherwise (the full data, another subsample size or size, rows the
        model fixes itself) it keeps its own, as NumPyro's guides leave such a
        plate to the model (numpyro#1739).
        """
        frame = next(p for p in self.sites.plates if p.name == msg["name"])
        size, asked = msg["args"]
        fixed_by_model = own is not None and asked is not None and asked != size
        rows = msg["value"]
        n = rows.shape[0]
        # all rows are usable too: a full-data evaluation (scaled by size / size = 1 on both sides)
        usable = size == frame.size and (n in (asked, size) if asked is not None else n == size or not frame.subsampled)
        local = [s.name for s in self.sites.latents if any(f.name == frame.name for f in s.plates)]
        # (a plate with latents that was not subsampled at init is checked through their shapes, site by site)
        if local and frame.subsampled and not usable:
            got = f"plate '{frame.name}' has size {size} (subsample {size if asked is None else asked}) for these args"
            raise SiteError(
                local[0],
                f"{got}, but size {frame.size} at guide.init; its latent sites {local} have params of the "
                "init size. Call guide.init with the new data."
                if size != frame.size
                else f"{got}, but the guide gives its latent sites {local} {n} rows (size {frame.size}, subsample "
                f"{frame.subsample_size} at guide.init). Keep the plate's subsample_size (or call guide.init "
                "with the new one), or pass create_plates returning this plate with the rows to use "
                f"(numpyro.plate('{frame.name}', {size}) for all of them).",
            )
        if local or (usable and not fixed_by_model):
            return
        msg["value"] = own if own is not None else msg["fn"](*msg["args"], **msg["kwargs"])


def _subsample_shape(site: Any, indices: Indices) -> tuple[int, ...]:
    shape = list(site.shape)
    for frame in site.plates:
        if frame.name in indices:
            shape[site.plate_axis(frame, unconstrained=False)] = indices[frame.name].shape[0]
    return tuple(shape)


def _same_scale(model_scale: Any, guide_scale: float) -> bool:
    """Whether the model weighs a latent site as the guide does (its plates' scale only).

    ``scale * KL`` replaces ``scale * log p - guide_scale * log q`` only then; a
    user's ``handlers.scale`` on a latent site scales ``log p`` alone, so such a
    site keeps the sampled term (an array scale cannot be compared statically).
    """
    if model_scale is None:
        return guide_scale == 1.0
    if isinstance(model_scale, (int, float)):
        return math.isclose(model_scale, guide_scale, rel_tol=1e-6)
    return False


def _analytic_kl(q: Any, p: Any) -> jax.Array | None:
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None


@dataclasses.dataclass(frozen=True)
class ELBOLoss:
    """``loss(params, rng_key, *args, **kwargs) -> scalar`` negative ELBO.

    A frozen (hashable) dataclass, so it can be a static argument of ``jax.jit``.
    Build it with :func:`elbo_loss`.
    """

    model: Any
    guide: Guide
    num_particles: int = 1
    mean_field: bool = False
    stick_the_landing: bool = False
    vectorize_particles: bool = True
    subsample_blocks: tuple[tuple[str, int], ...] = ()

    def __call__(self, params: Any, rng_key: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        return self.evaluate(params, rng_key, args, kwargs)

    def stratified(self, blocks: dict[str, int]) -> ELBOLoss:
        """This loss drawing each plate of ``blocks`` in (a multiple of) that many blocks:
        what a fit sharded over ``blocks[plate]`` devices draws (``parallel/sharding.py``)."""
        own = dict(self.subsample_blocks)
        for plate, n in blocks.items():
            if own.get(plate, 1) % n:
                own[plate] = n
        return dataclasses.replace(self, subsample_blocks=tuple(sorted(own.items())))

    def evaluate(
        self,
        params: Any,
        rng_key: jax.Array,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        indices: Indices | None = None,
        guide_indices: Indices | None = None,
    ) -> jax.Array:
        """Negative ELBO; ``indices`` fixes the subsample rows of all particles.

        ``guide_indices`` (default ``indices``) are the rows the guide gathers
        from its params: a row-sparse step hands over params already gathered
        to the batch (``subsample_size`` rows), with ``guide_indices`` =
        ``arange(subsample_size)``, while the model still sees ``indices``.
        """
        return self.evaluate_with_state(params, rng_key, args, kwargs, indices, guide_indices)[0]

    def evaluate_with_state(
        self,
        params: Any,
        rng_key: jax.Array,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        indices: Indices | None = None,
        guide_indices: Indices | None = None,
    ) -> tuple[jax.Array, dict[str, Any]]:
        """``(negative ELBO, the model's numpyro.mutable state after this run)``.

        The state is ``{}`` for a model without mutable sites. With several
        particles it is the first particle's (NumPyro's SVI keeps none then).
        """
        kwargs = kwargs or {}
        sites = self.guide.check_params(params)

        def particle(key: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
            return self._particle_elbo(params, sites, key, args, kwargs, indices, guide_indices)

        if self.num_particles == 1:  # the key itself, as NumPyro's Trace_ELBO (one threefry call less)
            elbo, state = particle(rng_key)
            return -elbo, state
        keys = jax.random.split(rng_key, self.num_particles)
        if self.vectorize_particles:
            elbos, states = jax.vmap(particle)(keys)
        else:
            elbos, states = jax.lax.map(particle, keys)
        return -jnp.mean(elbos), jax.tree.map(lambda x: x[0], states)

    def _particle_elbo(
        self,
        params: Any,
        sites: ModelSites,
        key: jax.Array,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        indices: Indices | None,
        guide_indices: Indices | None = None,
    ) -> tuple[jax.Array, dict[str, Any]]:
        k_plates, k_guide, k_model = jax.random.split(key, 3)
        if indices is None:
            blocks = dict(self.subsample_blocks)
            indices = draw_indices(sites.plates, k_plates, self.guide.create_plates, args, kwargs, blocks)
        rows = indices if guide_indices is None else guide_indices
        draws: dict[str, Draw] = self.guide.draw(params, k_guide, rows, self.stick_the_landing)
        shapes = {s.name: _subsample_shape(s, indices) for s in sites.latents}
        # the model's real-support checks are left out: the non-finite guard sees what they would
        blocked = isinstance(self.guide.model, handlers.block) and self.guide.model is not self.model
        model = skip_real_support_checks(_ModelGuard(handlers.seed(self.model, k_model), sites, shapes, blocked))
        values = {n: d.value for n, d in draws.items()}
        data = {**values, **indices, **model_substitutions(params)}
        log_probs, trace = compute_log_probs(model, args, kwargs, data, sum_log_prob=False)
        # every term elementwise, summed by `total`: one reduction per shape (a plate's sites share one)
        terms = []
        for name, log_prob in log_probs.items():
            if name not in draws:  # observed sites and factors
                terms.append(log_prob)
                continue
            same_weight = _same_scale(trace[name]["scale"], plate_scale(sites[name], indices))
            kl = _analytic_kl(draws[name].dist, trace[name]["fn"]) if self.mean_field and same_weight else None
            if kl is None:
                terms += [log_prob, -draws[name].log_prob]
            else:
                scale = trace[name]["scale"]
                terms.append(-kl if scale is None else -scale * kl)
        return total(terms), {name: trace[name]["value"] for name in sites.mutable}


def elbo_loss(
    model: Any,
    guide: Guide,
    *,
    num_particles: int = 1,
    mean_field: bool = False,
    stick_the_landing: bool = False,
    vectorize_particles: bool = True,
    subsample_blocks: dict[str, int] | None = None,
) -> ELBOLoss:
    """The negative ELBO of ``guide`` for ``model``, a pure jittable loss.

    Args:
        model: the NumPyro model.
        guide: an :class:`AutoNormal`, :class:`AutoDelta` or :class:`AutoGuideList` of that
            model (any :class:`~jaxguides.guides.base.Guide`).
        num_particles: Monte Carlo draws averaged per evaluation.
        mean_field: use NumPyro's registered analytic KL(q || p) for a site
            where there is one (e.g. a real site with a Normal prior), and the
            sampled ``log p(z) - log q(z)`` (bijection's Jacobian included)
            elsewhere. Same expectation, lower variance.
        stick_the_landing: path-derivative gradient estimator: the guide's
            log density is evaluated with stopped-gradient params, so its score
            term (zero in expectation) drops out of the gradient. Same loss
            value, lower gradient variance near the optimum.
        vectorize_particles: ``vmap`` particles (fast); ``False`` maps them
            one after another with ``lax.map`` (memory of one particle).
        subsample_blocks: ``{plate: k}`` stratifies a subsampled plate's draw
            into ``k`` equal blocks of rows, each giving ``subsample_size/k``
            rows (still unbiased). ``fit(..., mesh=...)`` sets it to the device
            count of a sharded plate, so each device draws from its own rows;
            pass the same here to get that fit's draws on one device.

    Returns:
        An :class:`ELBOLoss`: ``loss(params, rng_key, *args, **kwargs) -> Array[]``.

    Examples:
        >>> import jax, numpyro, numpyro.distributions as dist, jaxguides as jg
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> guide = jg.AutoNormal(model)
        >>> params = guide.init(jax.random.PRNGKey(0), 0.5)
        >>> loss = jg.elbo_loss(model, guide, num_particles=4)
        >>> jax.jit(loss)(params, jax.random.PRNGKey(1), 0.5).shape
        ()
    """
    if not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive int, got {num_particles!r}")
    blocks = tuple(sorted((subsample_blocks or {}).items()))
    if not all(isinstance(k, int) and k >= 1 for _, k in blocks):
        raise ValueError(f"subsample_blocks must map plate names to positive ints, got {subsample_blocks!r}")
    return ELBOLoss(
        model, guide, num_particles, mean_field, stick_the_landing, vectorize_particles, subsample_blocks=blocks
    )
