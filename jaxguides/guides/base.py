"""What AutoNormal and AutoDelta share: params checks, subsample-aware value
handling, and running the model for ``numpyro.deterministic`` sites.

A guide is a frozen dataclass over static config (model, init strategy,
``create_plates``): hashable, so it can be a static argument of ``jax.jit``,
and holding no state. Everything else is in ``params``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import Distribution
from numpyro.primitives import Messenger

from jaxguides._errors import ParamsMismatchError, SiteError
from jaxguides.guides.numpyro_guide import call_as_numpyro_guide
from jaxguides.model.identity import config_difference, model_config, model_name
from jaxguides.model.params import model_substitutions
from jaxguides.model.sites import LatentSite, ModelSites, call_signature, check_init_values, check_scan_body
from jaxguides.subsample.indices import Indices, user_plate_indices

__all__ = ["Draw", "Guide", "GuideBase"]


class Draw(NamedTuple):
    """One site of one guide draw, as the ELBO needs it.

    Attributes:
        value: constrained value for the current subsample.
        log_prob: guide log density of ``value``, per element of the site's
            batch shape (unsummed, so the ELBO sums it with the model's terms of
            the same shape), scaled by ``size / subsample_size`` of the site's
            subsampled plates.
        dist: the guide's distribution of the site (constrained space, over the
            current subsample), for analytic KL terms.
    """

    value: jax.Array
    log_prob: jax.Array
    dist: Distribution


class Guide(Protocol):
    """What the ELBO, the SVI step and the loop ask of a guide (``AutoNormal``,
    ``AutoDelta``, ``AutoGuideList`` and any guide of the same shape).

    A guide is an immutable value; its methods are pure functions of ``params``.
    """

    model: Callable[..., Any]
    create_plates: Callable[..., Any] | None

    def init(self, rng_key: jax.Array, *args: Any, **kwargs: Any) -> Any:
        """The params pytree: traces the model once."""
        ...

    def check_params(self, params: Any) -> ModelSites:
        """The params' static site description, or an error if they are of another guide or model."""
        ...

    def draw(
        self, params: Any, rng_key: jax.Array, indices: Indices | None = None, stick_the_landing: bool = False
    ) -> dict[str, Draw]:
        """One draw of every latent site for the rows ``indices``, with its log density."""
        ...


class GuideBase:
    """Methods common to the automatic guides.

    Subclasses are frozen dataclasses with fields ``model``, ``init_loc_fn``
    and ``create_plates`` (static config only) and name their params type.
    """

    model: Callable[..., Any]
    init_loc_fn: Callable[..., Any]
    create_plates: Callable[..., Any] | None
    params_type: ClassVar[type]

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        """Run as a NumPyro guide (see ``jaxguides/guides/numpyro_guide.py``): declares NumPyro's
        ``numpyro.param`` sites and samples every latent site; holds no state.

        Examples:
            >>> import jax, numpyro, numpyro.distributions as dist, jaxguides as jg
            >>> from numpyro.infer import Predictive
            >>> def model():
            ...     numpyro.sample("x", dist.LogNormal(0.0, 1.0))
            >>> guide = jg.AutoNormal(model)
            >>> params = jg.to_numpyro_params(guide, guide.init(jax.random.PRNGKey(0)))
            >>> Predictive(model, guide=guide, params=params, num_samples=3)(jax.random.PRNGKey(1))["x"].shape
            (3,)
        """
        return call_as_numpyro_guide(self, args, kwargs)

    # ---- params checks -------------------------------------------------------
    def check_params(self, params: Any) -> ModelSites:
        """Refuse params of another guide type or another model; return their sites.

        Compares static data only (the params' treedef with the guide's model),
        so it runs as jit traces and costs nothing in compiled code.
        """
        if not isinstance(params, self.params_type):
            raise ParamsMismatchError(
                f"{type(self).__name__} got params of type {type(params).__name__}; "
                f"pass the {self.params_type.__name__} made by {type(self).__name__}.init "
                "(or jg.from_numpyro_params for NumPyro params)."
            )
        name = model_name(self.model)
        sites: ModelSites = getattr(params, "sites")  # noqa: B009 (the type is only known as params_type)
        if sites.model != name:
            raise ParamsMismatchError(
                f"these params were made for model {sites.model!r}, but this guide "
                f"is for {name!r}; call guide.init(rng_key, *args) for this model."
            )
        config = model_config(self.model)
        if sites.config != config:
            raise ParamsMismatchError(
                f"these params were made for another model named {name!r} ("
                f"{config_difference(sites.config, config)}): two closures of one factory, or two "
                "functools.partial of one function, are different models to a guide. Call "
                "guide.init(rng_key, *args) for this guide's model; a value that only shapes the "
                "data (say a data size) can be a model argument instead, which params do not pin."
            )
        return sites

    # ---- init -----------------------------------------------------------------
    def check_init(self, rng_key: jax.Array, *args: Any, **kwargs: Any) -> None:
        """Check ``init_to_value`` values against the supports these concrete args give.

        ``init`` checks them itself, except under ``jax.jit`` for a support whose
        bounds are model args (traced there). Called first, outside jit, this
        raises the ``SiteError`` before anything is compiled. It runs the model
        once, and only when ``init_loc_fn`` is ``init_to_value``.

        Raises:
            SiteError: an init value outside its site's support, naming the site.
        """
        check_init_values(self.model, rng_key, args, kwargs, self.init_loc_fn)

    # ---- values -------------------------------------------------------------
    def value_indices(
        self, sites: ModelSites, values: dict[str, jax.Array], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Indices:
        """Indices for ``values`` given at subsample size (``{}`` if all are full size).

        The subsample size of a plate is that of its ``create_plates`` rows when
        there are some (a last, smaller minibatch), else the one at ``init``.
        """
        need: set[str] = set()
        chosen: Indices | None = None
        for site in sites.latents:
            if site.name not in values:
                raise SiteError(
                    site.name, f"no value given for latent site '{site.name}'; pass a value for every latent site"
                )
            shape = tuple(jnp.shape(values[site.name]))
            if shape == site.shape:
                continue
            if chosen is None:
                chosen = user_plate_indices(self.create_plates, jax.random.PRNGKey(0), args, kwargs)
            sub = _subsample_shape(site, chosen)
            if shape != sub or sub == site.shape:
                raise SiteError(
                    site.name,
                    f"value of site '{site.name}' has shape {shape}; expected the full-size "
                    f"shape {site.shape}" + (f" or the subsample shape {sub}" if sub != site.shape else ""),
                )
            need.update(f.name for f in site.plates if f.subsampled)
        if not need:
            return {}
        indices = chosen or {}
        missing = need - set(indices)
        if missing:
            raise ValueError(
                f"values are given at subsample size for plate(s) {sorted(missing)}, but the "
                "guide cannot know which rows they are: pass full-size values, or build "
                "the guide with create_plates returning those plates."
            )
        return indices

    # ---- deterministic sites --------------------------------------------------
    def with_deterministic(
        self,
        sites: ModelSites,
        latents: dict[str, jax.Array],
        rng_key: jax.Array,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        batch_shape: tuple[int, ...] = (),
        params: Any = None,
    ) -> dict[str, jax.Array]:
        """``latents`` plus the model's deterministic sites computed from them
        (and from the model's own param and mutable sites in ``params``).

        The model is run with ``args`` (at full plate size) if it has
        deterministic sites. They are the model's own function of its args, so
        they need them: called without args, a model that needs some gives its
        latents alone, with a warning naming the sites left out (NumPyro's
        guides reuse the args of their first call instead, which are then
        hidden state). Args the model cannot be called with are refused.

        Raises:
            TypeError: the model cannot be called with ``args`` and ``kwargs``.
        """
        if not sites.deterministic:
            return latents
        if not args and not kwargs and not _can_call(self.model, args, kwargs):
            return _without_deterministic(self.model, sites, latents, "it needs arguments")
        _check_call(self.model, args, kwargs)
        full = {p.name: jnp.arange(p.size) for p in sites.subsampled_plates}
        fixed = model_substitutions(params) if params is not None else {}  # fitted, not init, model params
        model = _ShapeGuard(self.model, sites)

        def run(z: dict[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
            seeded = handlers.seed(handlers.substitute(model, data={**z, **full, **fixed}), key)
            with warnings.catch_warnings():  # full-size plates warn that they are not subsampled
                warnings.filterwarnings("ignore", message="subsample_size does not match")
                tr = handlers.trace(seeded).get_trace(*args, **kwargs)
            return {n: tr[n]["value"] for n in sites.deterministic}

        n = int(np.prod(batch_shape)) if batch_shape else 0
        try:
            if not batch_shape:
                det = run(latents, rng_key)
            else:
                flat = {k: v.reshape((n,) + v.shape[len(batch_shape) :]) for k, v in latents.items()}
                det = jax.vmap(run)(flat, jax.random.split(rng_key, n))
                det = {k: v.reshape(batch_shape + v.shape[1:]) for k, v in det.items()}
        except TypeError as err:  # a wrapper's (*args, **kwargs) hid that the model needs arguments
            if args or kwargs:
                raise
            return _without_deterministic(self.model, sites, latents, f"called without them it raised {err!r}")
        return {**latents, **det}


class _ShapeGuard(Messenger):
    """Refuse, while tracing, a latent site whose full-size shape for these args
    is not the one the params were made for (say before the model fails on it)."""

    def __init__(self, fn: Callable[..., Any], sites: ModelSites):
        super().__init__(fn)
        self.shapes = {s.name: s.shape for s in sites.latents}

    def process_message(self, msg: dict[str, Any]) -> None:
        check_scan_body(msg, self._check)  # a scan's steps, before the latents are substituted into them
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        self._check(msg["name"], msg["fn"], tuple(msg["fn"].shape()))  # a scanned site's: stacked, (T, ...)

    def _check(self, name: str, fn: Any, got: tuple[int, ...]) -> None:
        if name not in self.shapes:
            return
        want = self.shapes[name]
        if got != want:
            raise SiteError(
                name,
                f"latent site '{name}' has shape {got} for these args, but the params from "
                f"guide.init give it shape {want}; call guide.init with args of the new shape.",
            )


def _subsample_shape(site: LatentSite, chosen: Indices) -> tuple[int, ...]:
    """The site's shape for ``create_plates``' rows ``chosen``, or init's subsample size."""
    shape = list(site.shape)
    for frame in site.plates:
        if frame.subsampled:
            rows = chosen[frame.name].shape[0] if frame.name in chosen else frame.subsample_size
            shape[site.plate_axis(frame, unconstrained=False)] = rows
    return tuple(shape)


def _can_call(model: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether the call binds to the model's signature (``True`` when it is unknown)."""
    sig = call_signature(model)
    try:
        if sig is not None:
            sig.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def _check_call(model: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    sig = call_signature(model)
    try:
        if sig is not None:
            sig.bind(*args, **kwargs)
    except TypeError as err:
        raise TypeError(
            f"the model {model_name(model)}{sig} cannot be called with these args ({err}), so its "
            "deterministic sites cannot be computed: pass the model's args as given to guide.init."
        ) from None


def _without_deterministic(
    model: Callable[..., Any], sites: ModelSites, latents: dict[str, jax.Array], why: str
) -> dict[str, jax.Array]:
    warnings.warn(
        f"the deterministic sites {list(sites.deterministic)} of {model_name(model)} are left out: they "
        f"are computed by running the model with the args of this call, and {why}. Pass the model's "
        "args, e.g. guide.median(params, *args, **kwargs) or guide.sample(params, key, *args).",
        stacklevel=4,  # the caller of median / quantiles / sample
    )
    return latents
