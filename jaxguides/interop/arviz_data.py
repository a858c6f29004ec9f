"""ArviZ interop: guide draws as an ArviZ ``InferenceData`` with the model's dims named.

``to_arviz`` draws from a fitted guide (latent and deterministic sites), and
optionally draws the observed sites afresh through NumPyro's ``Predictive``,
and hands ArviZ arrays of shape ``(chain=1, draw, *site_shape)`` whose axes
are named after the model's plates, so ``az.summary``, ``az.plot_forest``,
``az.plot_posterior`` and ``az.plot_ppc`` work on the result directly.

ArviZ is optional (``pip install 'jaxguides[arviz]'``). This targets ArviZ
0.x (``InferenceData``), the line that installs on Python 3.10 and 3.11
(ArviZ 1.x needs Python >= 3.12); under ArviZ 1.x the same groups come back
as an ``xarray.DataTree``, the container ArviZ 1.x reads.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer import Predictive
from numpyro.primitives import Messenger

from jaxguides.guides.base import _can_call
from jaxguides.model.params import model_substitutions
from jaxguides.model.sites import ModelSites

__all__ = ["to_arviz"]


def to_arviz(
    guide: Any,
    params: Any,
    rng_key: jax.Array,
    *args: Any,
    num_samples: int = 1000,
    posterior_predictive: bool = False,
    coords: Mapping[str, Sequence[Any]] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    **kwargs: Any,
) -> Any:
    """Guide draws (and posterior predictive draws) as an ArviZ object.

    The posterior group holds ``num_samples`` draws of every latent site and,
    when the model can be called with ``*args, **kwargs``, of every
    ``numpyro.deterministic`` site. Axes inside a ``numpyro.plate`` are named
    after the plate (at full plate size, also for subsampled plates); other
    axes are ``{site}_dim_{i}``. Draws are independent, so there is one chain
    and r-hat is not meaningful (use ``az.summary(..., kind="stats")``).

    Args:
        guide: a fitted ``AutoNormal`` or ``AutoDelta``.
        params: its params (e.g. ``jg.fit(...).params``).
        rng_key: PRNG key for the draws.
        *args, **kwargs: the model's arguments, as given to ``fit`` (observed
            data included); needed for deterministic sites, ``observed_data``
            and ``posterior_predictive``.
        num_samples: draws per site.
        posterior_predictive: also draw every observed site from the model
            given each posterior draw (``numpyro.infer.Predictive``), into the
            ``posterior_predictive`` group, and record the data in
            ``observed_data``.
        coords: labels of dims, e.g. ``{"school": ["A", ..., "H"]}``; dims not
            named here are labelled ``0..n-1``.
        dims: ``{site: [dim names]}`` overriding the inferred names.

    Returns:
        ``arviz.InferenceData`` (ArviZ 0.x) or ``xarray.DataTree`` (ArviZ 1.x)
        with groups ``posterior`` and, with ``posterior_predictive=True``,
        ``posterior_predictive`` and ``observed_data``. Each variable has dims
        ``("chain", "draw", *site_dims)`` and shape ``(1, num_samples, *site_shape)``.

    Raises:
        ImportError: ArviZ is not installed.
        TypeError: ``posterior_predictive=True`` but the model cannot be called
            with these arguments.

    Examples:
        >>> import jax, numpyro, numpyro.distributions as dist, jaxguides as jg
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with numpyro.plate("data", 3):
        ...         numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = jax.numpy.ones(3)
        >>> guide = jg.AutoNormal(model)
        >>> params = guide.init(jax.random.PRNGKey(0), y)
        >>> idata = jg.to_arviz(guide, params, jax.random.PRNGKey(1), y, num_samples=10,
        ...                     posterior_predictive=True)
        >>> idata.posterior_predictive["y"].dims
        ('chain', 'draw', 'data')
    """
    az = _import_arviz()
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    sites = guide.check_params(params)
    post_key, pred_key = jax.random.split(rng_key)
    draws = guide.sample(params, post_key, *args, sample_shape=(1, int(num_samples)), **kwargs)
    groups: dict[str, dict[str, np.ndarray]] = {"posterior": {k: np.asarray(v) for k, v in draws.items()}}

    callable_ = _can_call(guide.model, args, kwargs)
    if posterior_predictive and not callable_:
        raise TypeError(
            "posterior_predictive=True runs the model, but it cannot be called with these "
            "arguments: pass the model's arguments after rng_key, as given to jg.fit."
        )
    fixed = model_substitutions(params)  # the model's own numpyro.param / mutable sites, as fitted
    trace = _trace(guide.model, sites, {**guide.median(params), **fixed}, args, kwargs) if callable_ else {}
    if posterior_predictive and sites.observed:
        latents = {s.name: draws[s.name][0] for s in sites.latents}
        predicted = _predict(guide.model, sites, latents, fixed, pred_key, int(num_samples), args, kwargs)
        groups["posterior_predictive"] = {k: np.asarray(v)[None] for k, v in predicted.items()}
        observed = {n: np.asarray(trace[n]["value"]) for n in sites.observed if trace[n].get("is_observed")}
        if observed:  # none when the data was left out of the arguments (y=None)
            groups["observed_data"] = observed

    site_dims = _site_dims(sites, trace, groups)
    site_dims.update({k: list(v) for k, v in (dims or {}).items()})
    return _build(az, groups, site_dims, dict(coords or {}))


# ---- running the model at full plate size ------------------------------------------
def _full_plates(sites: ModelSites, batch: int | None = None) -> dict[str, jax.Array]:
    """Every row of each subsampled plate (optionally with a leading batch axis)."""
    out = {}
    for p in sites.subsampled_plates:
        rows = jnp.arange(p.size)
        out[p.name] = rows if batch is None else jnp.broadcast_to(rows, (batch, p.size))
    return out


def _trace(
    model: Callable[..., Any],
    sites: ModelSites,
    point: dict[str, jax.Array],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    """One trace of the model at ``point``, every plate at full size."""
    point = {n: point[n] for n in (*sites.names, *(p.name for p in sites.params), *sites.mutable)}
    seeded = handlers.seed(handlers.substitute(model, data={**point, **_full_plates(sites)}), jax.random.PRNGKey(0))
    with warnings.catch_warnings():  # full-size plates warn that they are not subsampled
        warnings.filterwarnings("ignore", message="subsample_size does not match")
        return dict(handlers.trace(seeded).get_trace(*args, **kwargs))


class _Unobserve(Messenger):
    """Turn the named observed sites into sampled ones (so ``Predictive`` draws them
    even though the observed data is among the model's arguments)."""

    def __init__(self, fn: Callable[..., Any], names: Sequence[str]):
        super().__init__(fn)
        self.names = frozenset(names)

    def process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "sample" and msg["name"] in self.names and msg["is_observed"]:
            msg["value"] = None
            msg["is_observed"] = False


def _predict(
    model: Callable[..., Any],
    sites: ModelSites,
    latents: dict[str, jax.Array],
    fixed: dict[str, Any],
    rng_key: jax.Array,
    num_samples: int,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> dict[str, jax.Array]:
    """Draws of the observed sites given each latent draw and the model's ``fixed``
    param and mutable values, ``{site: [num_samples, ...]}``."""
    samples = {**latents, **_full_plates(sites, num_samples)}
    model = handlers.substitute(_Unobserve(model, sites.observed), data=fixed)
    predictive = Predictive(model, posterior_samples=samples, return_sites=list(sites.observed))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="subsample_size does not match")
        return predictive(rng_key, *args, **kwargs)


# ---- dims ----------------------------------------------------------------------------
def _site_dims(
    sites: ModelSites, trace: dict[str, Any], groups: dict[str, dict[str, np.ndarray]]
) -> dict[str, list[str]]:
    """Dim names per variable: the plate's name on a plate's axis, else ``{site}_dim_{i}``.

    Latent sites use the plates traced by ``guide.init``; observed and
    deterministic sites use the plates of one model trace (a deterministic
    site's axes are taken as batch axes, as ``az.from_numpyro`` does).
    """
    sizes = {p.name: p.size for p in sites.plates}
    frames: dict[str, tuple[list[tuple[str, int]], int]] = {}
    for name, site in trace.items():
        if site["type"] in ("sample", "deterministic"):
            stack = [(f.name, f.dim) for f in site.get("cond_indep_stack", ()) if f.dim is not None]
            event_dim = site["fn"].event_dim if site["type"] == "sample" else 0
            frames[name] = (stack, event_dim)
    for site in sites.latents:
        frames[site.name] = ([(p.name, p.dim) for p in site.plates if p.dim is not None], site.event_dim)

    out: dict[str, list[str]] = {}
    for group, values in groups.items():
        for name, value in values.items():
            shape = value.shape if group == "observed_data" else value.shape[2:]  # past (chain, draw)
            stack, event_dim = frames.get(name, ([], 0))
            names = [f"{name}_dim_{i}" for i in range(len(shape))]
            for plate, dim in stack:
                axis = len(shape) + dim - event_dim
                if 0 <= axis < len(shape) and shape[axis] == sizes.get(plate, -1):
                    names[axis] = plate
            out[name] = names
    return out


# ---- the ArviZ object ----------------------------------------------------------------
def _import_arviz() -> Any:
    try:
        import arviz as az
    except ImportError as err:
        raise ImportError("jg.to_arviz needs ArviZ: pip install 'jaxguides[arviz]' (or pip install arviz)") from err
    return az


def _build(
    az: Any, groups: dict[str, dict[str, np.ndarray]], dims: dict[str, list[str]], coords: dict[str, Sequence[Any]]
) -> Any:
    import xarray as xr

    datasets = {}
    for group, values in groups.items():
        sample_dims = [] if group == "observed_data" else ["chain", "draw"]
        data_vars = {k: (sample_dims + dims[k], v) for k, v in values.items()}
        ds = xr.Dataset(data_vars)
        labels: dict[Hashable, Any] = {d: np.arange(n) for d, n in ds.sizes.items()}
        labels.update({d: list(c) for d, c in coords.items() if d in ds.sizes})
        attrs = {"inference_library": "jaxguides", "created_by": "jaxguides.to_arviz"}
        datasets[group] = ds.assign_coords(labels).assign_attrs(attrs)
    if int(str(az.__version__).split(".")[0]) >= 1:
        return xr.DataTree.from_dict(datasets)
    return az.InferenceData(**datasets)
