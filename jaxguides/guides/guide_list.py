"""AutoGuideList: guides over parts of one model, combined (NumPyro's ``AutoGuideList``).

Each part is a guide over the model blocked to some of its latent sites
(``handlers.block(model, expose=[...])`` or ``hide=[...]``); the list is a
frozen dataclass of them, pure and hashable like its parts. Its params hold
the parts' params (a tuple) and, once for the whole model, the model's own
``numpyro.param`` / ``numpyro.mutable`` sites, so the ELBO, ``fit``,
checkpoints and sharding treat it as any guide. ``init`` traces the whole
model once more and refuses a latent site that no part, or two parts, cover.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.typing import ArrayLike
from numpyro import handlers
from numpyro.infer.initialization import init_to_feasible

from jaxguides._errors import ParamsMismatchError, SiteError
from jaxguides.guides.base import Draw, GuideBase
from jaxguides.guides.delta import AutoDelta
from jaxguides.guides.normal import AutoNormal
from jaxguides.model.params import ModelParamValues
from jaxguides.model.sites import ModelSites, trace_model
from jaxguides.subsample.indices import Indices

__all__ = ["AutoGuideList", "AutoGuideListParams"]


@dataclasses.dataclass(frozen=True)
class AutoGuideListParams(ModelParamValues):
    """Params of :class:`AutoGuideList`: a pytree (the site description is static).

    Attributes:
        parts: each part's params, in the list's order (their ``model_params``
            and ``model_state`` empty: the model's own sites are held here, once).
        model_params: the model's ``numpyro.param`` sites, unconstrained (see
            ``AutoNormalParams``); :attr:`model_param_values` gives them constrained.
        support: array leaves of the model params' constraints; constant.
        model_state: the model's ``numpyro.mutable`` state; constant.
        sites: the whole model's sites.
    """

    parts: tuple[Any, ...]
    support: dict[str, tuple[jax.Array, ...]]
    sites: ModelSites
    model_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    model_state: dict[str, Any] = dataclasses.field(default_factory=dict)


jax.tree_util.register_dataclass(
    AutoGuideListParams, data_fields=["parts", "model_params", "support", "model_state"], meta_fields=["sites"]
)


def _without_model_sites(params: Any) -> Any:
    """A part's params without the model's own param / mutable sites (the list holds them once)."""
    sites = dataclasses.replace(params.sites, params=(), mutable=())
    support = {n: params.support[n] for n in sites.names}
    return dataclasses.replace(params, sites=sites, support=support, model_params={}, model_state={})


def _unblocked(model: Callable[..., Any]) -> Callable[..., Any]:
    while isinstance(model, handlers.block):
        model = model.fn
    return model


@dataclasses.dataclass(frozen=True)
class AutoGuideList(GuideBase):
    """Guides over parts of one model, combined (NumPyro's ``AutoGuideList``).

    Args:
        guides: ``AutoNormal`` / ``AutoDelta`` guides, each over the model
            blocked to its sites (``handlers.block(model, expose=[...])``).
        model: the whole model (default: the model the parts' blocks wrap).
        create_plates: as for the other guides; it fixes the rows of every part.

    Examples:
        >>> import jax, numpyro, numpyro.distributions as dist, jaxguides as jg
        >>> from numpyro import handlers
        >>> def model():
        ...     numpyro.sample("a", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("b", dist.LogNormal(0.0, 1.0))
        >>> guide = jg.AutoGuideList([jg.AutoDelta(handlers.block(model, expose=["a"])),
        ...                           jg.AutoNormal(handlers.block(model, hide=["a"]))])
        >>> sorted(guide.median(guide.init(jax.random.PRNGKey(0))))
        ['a', 'b']
    """

    guides: tuple[AutoNormal | AutoDelta, ...]
    model: Callable[..., Any] = dataclasses.field(default=None, kw_only=True)  # type: ignore[assignment]
    create_plates: Callable[..., Any] | None = dataclasses.field(default=None, kw_only=True)
    init_loc_fn: Callable[..., Any] = dataclasses.field(default=init_to_feasible, kw_only=True, repr=False)

    params_type = AutoGuideListParams

    def __post_init__(self) -> None:
        guides = tuple(self.guides)
        if not guides or not all(isinstance(g, (AutoNormal, AutoDelta)) for g in guides):
            raise TypeError(
                f"AutoGuideList takes a non-empty list of jg.AutoNormal / jg.AutoDelta guides, got {self.guides!r}"
            )
        object.__setattr__(self, "guides", guides)
        if self.model is None:
            models = {id(_unblocked(g.model)): _unblocked(g.model) for g in guides}
            if len(models) != 1:
                raise ValueError(
                    "the parts of an AutoGuideList are guides of different models; build each part "
                    "over handlers.block(model, ...) of one model, or pass model=the whole model."
                )
            object.__setattr__(self, "model", next(iter(models.values())))

    # ---- init and checks ------------------------------------------------------
    def init(self, rng_key: jax.Array, *args: Any, **kwargs: Any) -> AutoGuideListParams:
        """Each part's ``init``, and one trace of the whole model for its own sites.

        Raises:
            SiteError: a latent site that no part covers, or two parts do.
        """
        keys = jax.random.split(rng_key, len(self.guides) + 1)
        whole = trace_model(self.model, keys[0], args, kwargs, init_to_feasible)
        parts = tuple(g.init(k, *args, **kwargs) for g, k in zip(self.guides, keys[1:]))
        self._check_cover(whole.sites, parts)
        parts = tuple(_without_model_sites(p) for p in parts)
        own = {p.name: whole.support[p.name] for p in whole.sites.params}
        return AutoGuideListParams(
            parts=parts,
            support=own,
            sites=whole.sites,
            model_params=whole.model_params,
            model_state=whole.model_state,
        )

    def _check_cover(self, whole: ModelSites, parts: Sequence[Any]) -> None:
        owners: dict[str, list[int]] = {}
        for i, p in enumerate(parts):
            for name in p.sites.names:
                owners.setdefault(name, []).append(i)
        twice = {n: o for n, o in owners.items() if len(o) > 1}
        if twice:
            name = sorted(twice)[0]
            raise SiteError(
                name,
                f"latent site(s) {sorted(twice)} are covered by more than one part of the AutoGuideList "
                f"('{name}' by parts {twice[name]}); block each site out of all parts but one "
                "(handlers.block(model, hide=[...])).",
            )
        missing = [n for n in whole.names if n not in owners]
        if missing:
            raise SiteError(
                missing[0],
                f"latent site(s) {missing} of the model are covered by no part of the AutoGuideList "
                "(NumPyro would sample them from their prior, silently); expose them to a part, e.g. "
                f"jg.AutoNormal(handlers.block(model, expose={missing!r})).",
            )

    def check_init(self, rng_key: jax.Array, *args: Any, **kwargs: Any) -> None:
        """Each part's ``check_init`` (its ``init_to_value`` values against their supports)."""
        for guide in self.guides:
            guide.check_init(rng_key, *args, **kwargs)

    def check_params(self, params: Any) -> ModelSites:
        """Refuse params of another guide or model; return the whole model's sites."""
        if not isinstance(params, AutoGuideListParams) or len(params.parts) != len(self.guides):
            raise ParamsMismatchError(
                f"AutoGuideList of {len(self.guides)} parts got params of type {type(params).__name__}"
                + (f" with {len(params.parts)} parts" if isinstance(params, AutoGuideListParams) else "")
                + "; pass the params made by this guide's init."
            )
        for guide, part in zip(self.guides, params.parts):
            guide.check_params(part)
        return params.sites

    # ---- the guide's functions: the parts', merged --------------------------------
    def _merged(self, params: AutoGuideListParams, call: Callable[[Any, Any], dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for guide, part in zip(self.guides, params.parts):
            out.update(call(guide, part))
        return out

    def sample(
        self,
        params: AutoGuideListParams,
        rng_key: jax.Array,
        *args: Any,
        sample_shape: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> dict[str, jax.Array]:
        """Every part's draws (plus the model's deterministic sites, given args)."""
        sites = self.check_params(params)
        keys = iter(jax.random.split(rng_key, len(self.guides) + 1))
        det_key = next(keys)
        out = self._merged(params, lambda g, p: g.sample(p, next(keys), sample_shape=sample_shape))
        return self.with_deterministic(sites, out, det_key, args, kwargs, tuple(sample_shape), params=params)

    def median(self, params: AutoGuideListParams, *args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        """Every part's median (an ``AutoDelta`` part's point)."""
        sites = self.check_params(params)
        out = self._merged(params, lambda g, p: g.median(p))
        return self.with_deterministic(sites, out, jax.random.PRNGKey(0), args, kwargs, params=params)

    def quantiles(
        self, params: AutoGuideListParams, qs: Sequence[float] | ArrayLike, *args: Any, **kwargs: Any
    ) -> dict[str, jax.Array]:
        """``{site: Array[len(qs), *shape]}``; an ``AutoDelta`` part gives its point at every quantile."""
        sites = self.check_params(params)
        n = int(jnp.size(jnp.asarray(qs)))

        def part(guide: Any, p: Any) -> dict[str, Any]:
            if isinstance(guide, AutoNormal):
                return guide.quantiles(p, qs)
            return {k: jnp.broadcast_to(v, (n,) + v.shape) for k, v in guide.median(p).items()}

        merged = self._merged(params, part)
        return self.with_deterministic(sites, merged, jax.random.PRNGKey(0), args, kwargs, (n,), params=params)

    def log_prob(
        self, params: AutoGuideListParams, values: dict[str, ArrayLike], *args: Any, **kwargs: Any
    ) -> jax.Array:
        """The sum of the parts' log densities (a scalar)."""
        self.check_params(params)
        total = jnp.zeros(())
        for guide, part in zip(self.guides, params.parts):
            total = total + guide.log_prob(
                part, {n: values[n] for n in part.sites.names if n in values}, *args, **kwargs
            )
        return total

    def get_posterior(self, params: AutoGuideListParams) -> dict[str, dist.Distribution]:
        """Every part's posterior; an ``AutoDelta`` part's is a ``Delta`` at its point."""
        self.check_params(params)

        def part(guide: Any, p: Any) -> dict[str, Any]:
            if isinstance(guide, AutoNormal):
                return guide.get_posterior(p)
            return {s.name: dist.Delta(guide._point(s, p), event_dim=s.event_dim) for s in p.sites.latents}

        return self._merged(params, part)

    def draw(
        self,
        params: AutoGuideListParams,
        rng_key: jax.Array,
        indices: Indices | None = None,
        stick_the_landing: bool = False,
    ) -> dict[str, Draw]:
        """Every part's draw for the current subsample (for the ELBO)."""
        self.check_params(params)
        keys = iter(jax.random.split(rng_key, len(self.guides)))
        return self._merged(params, lambda g, p: g.draw(p, next(keys), indices, stick_the_landing))

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        """Run as a NumPyro guide: every part in turn (as NumPyro's ``AutoGuideList``)."""
        out: dict[str, jax.Array] = {}
        for guide in self.guides:
            out.update(guide(*args, **kwargs))
        return out
