"""Latent sites inside ``numpyro.contrib.control_flow.scan``, against NumPyro's own guides.

A scanned site's params have the stacked shape ``(T, ...)`` (what NumPyro's
``AutoNormal`` / ``AutoDelta`` hold), and on the same, perturbed params our
median, quantiles, guide log density, ELBO and fit agree with NumPyro's.
Models: a local-level random walk with a global scale, a scanned body with a
plate and a latent inside it, and a positive (LogNormal) scanned latent.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro import handlers
from numpyro.contrib.control_flow import scan
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.infer import SVI, Predictive, Trace_ELBO, autoguide
from numpyro.infer.util import log_density

import jaxguides as jg

T, N = 8, 3
QS = jnp.array([0.1, 0.5, 0.8])
GUIDES = {"AutoNormal": (jg.AutoNormal, autoguide.AutoNormal), "AutoDelta": (jg.AutoDelta, autoguide.AutoDelta)}


# ---- models ---------------------------------------------------------------------------------
def local_level(y):
    """z_t ~ Normal(z_{t-1}, sigma), y_t ~ Normal(z_t, 1); a deterministic site in the body."""
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(z_prev, sigma))
        numpyro.deterministic("step", z - z_prev)
        numpyro.sample("y", dist.Normal(z, 1.0), obs=y_t)
        return z, None

    scan(step, 0.0, y)


def panel(y):
    """A shared level z_t and, per series n (a plate inside the body), b_tn ~ Normal(z_t + mu_n, 0.5).

    ``mu`` sits in the same plate outside the scan: NumPyro's guides look up a
    plate's full size in the outer trace, which a plate inside a scan body never
    reaches (NumPyro raises ``KeyError`` without it).
    """
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("series", y.shape[1]):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(z_prev, sigma))
        with numpyro.plate("series", y_t.shape[0]):
            b = numpyro.sample("b", dist.Normal(z + mu, 0.5))
            numpyro.sample("y", dist.Normal(b, 0.5), obs=y_t)
        return z, None

    scan(step, 0.0, y)


def volatility(y):
    """A positive scanned latent: s_t ~ LogNormal(0.5 log s_{t-1}, 0.4), y_t ~ Normal(0, s_t)."""

    def step(s_prev, y_t):
        s = numpyro.sample("s", dist.LogNormal(0.5 * jnp.log(s_prev), 0.4))
        numpyro.sample("y", dist.Normal(0.0, s), obs=y_t)
        return s, None

    scan(step, 1.0, y)


_Y = jnp.cumsum(jax.random.normal(jax.random.PRNGKey(42), (T,)))
MODELS = {
    "local_level": (local_level, (_Y,), {"sigma": (), "z": (T,)}),
    "panel": (panel, (_Y[:, None] + jnp.arange(N)[None, :] - 1.0,), {"sigma": (), "mu": (N,), "z": (T,), "b": (T, N)}),
    "volatility": (volatility, (_Y - _Y.mean(),), {"s": (T,)}),
}


# NumPyro's init_to_median draws inside the body are not rank-promotion clean for the plate there
@pytest.fixture(params=[pytest.param(n, marks=[pytest.mark.allow_rank_promotion] * (n == "panel")) for n in MODELS])
def case(request):
    return MODELS[request.param]


@pytest.fixture(params=list(GUIDES))
def kind(request):
    return request.param


# ---- helpers ------------------------------------------------------------------------------
def numpyro_side():
    """NumPyro's guides broadcast across ranks (see test_numpyro_equivalence.py)."""
    return jax.numpy_rank_promotion("allow")


def perturb(params, key):
    """Move params off their init: loc by N(0, 0.3), scale uniform in [0.05, 0.5]."""
    loc, raw = {}, {}
    for i, (name, v) in enumerate(sorted(params.loc.items())):
        k1, k2 = jax.random.split(jax.random.fold_in(key, i))
        loc[name] = v + 0.3 * jax.random.normal(k1, v.shape, v.dtype)
        raw[name] = biject_to(constraints.softplus_positive).inv(jax.random.uniform(k2, v.shape, v.dtype, 0.05, 0.5))
    if isinstance(params, jg.AutoNormalParams):
        return dataclasses.replace(params, loc=loc, raw_scale=raw)
    return dataclasses.replace(params, loc=loc)


def setup(model, args, kind, **options):
    """(our guide, our perturbed params, NumPyro's guide, our params exported to it).

    AutoNormal starts from our default, ``init_to_feasible``, on both sides (NumPyro's
    default draws), so that init params compare too.
    """
    if kind == "AutoNormal":
        options.setdefault("init_loc_fn", jg.init_to_feasible)
    guide = GUIDES[kind][0](model, **options)
    params = perturb(guide.init(jax.random.PRNGKey(0), *args), jax.random.PRNGKey(1))
    return guide, params, numpyro_guide(model, kind, **options), jg.to_numpyro_params(guide, params)


@functools.cache
def numpyro_guide(model, kind, **options):
    """NumPyro's guide, set up (its slowest part, seconds) once per model: params are passed in."""
    ng = GUIDES[kind][1](model, **options)
    with handlers.seed(rng_seed=0), numpyro_side():
        ng(*MODELS[model.__name__][1])  # NumPyro sets its guide up on the first call
    return ng


def assert_close(ours, theirs, names, rtol=1e-5, atol=1e-5):
    for name in names:
        a, b = np.asarray(ours[name]), np.asarray(theirs[name])
        assert a.shape == b.shape, (name, a.shape, b.shape)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)


# ---- params, median, quantiles, log density --------------------------------------------------
def test_params_median_and_quantiles_match_numpyro(case, kind):
    model, args, shapes = case
    guide, params, ng, np_params = setup(model, args, kind)
    assert {s.name: s.shape for s in params.sites.latents} == shapes
    for v in jax.tree.leaves(params):
        assert not isinstance(v, jax.core.Tracer)  # no value of a scan step leaked out of init
    with handlers.seed(rng_seed=0), numpyro_side():
        init = {n: s["value"] for n, s in handlers.trace(ng).get_trace(*args).items() if s["type"] == "param"}
    ours_init = jg.to_numpyro_params(guide, guide.init(jax.random.PRNGKey(0), *args))
    assert {k: v.shape for k, v in ours_init.items()} == {k: jnp.shape(v) for k, v in init.items()}
    if kind == "AutoNormal":  # init_to_feasible: 0 in unconstrained space, as NumPyro, without a draw
        assert_close(ours_init, init, list(init))
    back = jg.from_numpyro_params(guide, np_params, jax.random.PRNGKey(2), *args)
    assert_close(jg.to_numpyro_params(guide, back), np_params, list(np_params))
    names = params.sites.names
    if kind == "AutoNormal":  # NumPyro's AutoNormal adds the deterministic sites (of the body, stacked)
        names += params.sites.deterministic
    with numpyro_side():
        assert_close(guide.median(params, *args), ng.median(np_params), names)
        if kind == "AutoNormal":
            assert_close(guide.quantiles(params, QS, *args), ng.quantiles(np_params, QS), names)


def test_guide_log_prob_and_posterior_match_numpyro(case):
    model, args, _ = case
    guide, params, ng, np_params = setup(model, args, "AutoNormal")
    draw = guide.sample(params, jax.random.PRNGKey(3), *args)
    values = {n: draw[n] for n in params.sites.names}
    with handlers.seed(rng_seed=3), numpyro_side():
        theirs, _ = log_density(ng, args, {}, {**np_params, **values})
    np.testing.assert_allclose(guide.log_prob(params, values), theirs, rtol=1e-5, atol=1e-4)
    posterior = guide.get_posterior(params)
    by_site = sum(jnp.sum(posterior[n].log_prob(v)) for n, v in values.items())
    np.testing.assert_allclose(by_site, theirs, rtol=1e-5, atol=1e-4)


def test_numpyro_predictive_runs_our_guide():
    model, args, _ = MODELS["local_level"]
    guide = jg.AutoNormal(model)
    params = guide.init(jax.random.PRNGKey(0), *args)
    predictive = Predictive(model, guide=guide, params=jg.to_numpyro_params(guide, params), num_samples=4)
    out = predictive(jax.random.PRNGKey(1), *args)
    assert out["y"].shape == (4, T) and out["step"].shape == (4, T)


# ---- ELBO -----------------------------------------------------------------------------------
def test_delta_loss_is_numpyros_model_log_density(case):
    # AutoDelta's ELBO has no noise: it is -log p(y, z) at the point, through the scan
    model, args, _ = case
    guide, params, ng, np_params = setup(model, args, "AutoDelta")
    key = jax.random.PRNGKey(5)
    ours = jg.elbo_loss(model, guide)(params, key, *args)
    with numpyro_side():
        joint, _ = log_density(model, args, {}, guide.median(params, *args))
        theirs = Trace_ELBO().loss(key, np_params, model, ng, *args)
    np.testing.assert_allclose(ours, -joint, rtol=1e-5)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


@pytest.mark.parametrize("name", ["local_level", "volatility"])  # panel's terms: the exact tests above
def test_normal_loss_matches_numpyro_in_expectation(name):
    model, args, _ = MODELS[name]
    guide, params, ng, np_params = setup(model, args, "AutoNormal")
    keys = jax.random.split(jax.random.PRNGKey(7), 1000)
    loss = jg.elbo_loss(model, guide)
    ours = np.asarray(jax.jit(jax.vmap(lambda k: loss(params, k, *args)))(keys), np.float64)
    with numpyro_side():
        theirs = np.asarray(
            jax.jit(jax.vmap(lambda k: Trace_ELBO().loss(k, np_params, model, ng, *args)))(keys[::-1]), np.float64
        )
    se = np.sqrt(ours.var() / ours.size + theirs.var() / theirs.size)
    assert abs(ours.mean() - theirs.mean()) < 4 * se, (ours.mean(), theirs.mean(), se)
    assert 0.85 < ours.std() / theirs.std() < 1.15


def test_loss_and_median_refuse_another_scan_length(case):
    model, args, _ = case
    guide = jg.AutoNormal(model)
    params = guide.init(jax.random.PRNGKey(0), *args)
    name = next(s.name for s in params.sites.latents if s.shape[:1] == (T,))
    # shorter: NumPyro's own RuntimeError in the body; longer: NumPyro pads the series with prior draws
    for y in (args[0][:-2], jnp.concatenate([args[0], args[0]])):
        with pytest.raises(jg.SiteError, match=f"'{name}' has shape"):
            jg.elbo_loss(model, guide)(params, jax.random.PRNGKey(0), y)
    if params.sites.deterministic:  # median runs the model only for deterministic sites
        with pytest.raises(jg.SiteError, match=f"'{name}' has shape"):
            guide.median(params, args[0][:-2])


# ---- fit --------------------------------------------------------------------------------------
def numpyro_fit(model, args, ng, num_steps, lr, seed, num_particles=1):
    with numpyro_side():
        svi = SVI(model, ng, optax.adam(lr), Trace_ELBO(num_particles))
        result = svi.run(jax.random.PRNGKey(seed), num_steps, *args, progress_bar=False)
        return ng.median(result.params)


def test_delta_fit_follows_numpyros_fit():
    # a point mass from the same (deterministic) init follows the same path, step by step (the
    # models with a global scale have no MAP: sigma -> 0, where the paths are chaotic)
    model, args, _ = MODELS["volatility"]
    guide = jg.AutoDelta(model, init_loc_fn=jg.init_to_feasible)
    result = jg.fit(model, guide, optax.adam(2e-2), jax.random.PRNGKey(0), 300, *args, progress_bar=False)
    theirs = numpyro_fit(model, args, autoguide.AutoDelta(model, init_loc_fn=jg.init_to_feasible), 300, 2e-2, 1)
    assert_close(guide.median(result.params), theirs, guide.median(result.params), rtol=2e-3, atol=2e-3)


def test_normal_fit_lands_near_numpyros_fit():
    model, args, _ = MODELS["local_level"]
    guide = jg.AutoNormal(model)
    loss = jg.elbo_loss(model, guide, num_particles=8)
    result = jg.fit(model, guide, optax.adam(2e-2), jax.random.PRNGKey(0), 1000, *args, loss=loss, progress_bar=False)
    assert np.all(np.isfinite(result.losses))
    ours = guide.median(result.params, *args)
    ng = numpyro_guide(model, "AutoNormal", init_loc_fn=jg.init_to_feasible)
    theirs = numpyro_fit(model, args, ng, 1000, 2e-2, 1, num_particles=8)
    # either fit's SVI noise is ~0.05 in z_t here (posterior sd ~0.35, z_t spans ~0.5)
    np.testing.assert_allclose(ours["z"], theirs["z"], atol=0.15)
    np.testing.assert_allclose(ours["sigma"], theirs["sigma"], rtol=0.2)


# ---- a plate only inside the scan body (NumPyro's guides fail there) ------------------------
def plate_only_in_body(y):
    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(z_prev, 1.0))
        with numpyro.plate("series", y_t.shape[0]):
            b = numpyro.sample("b", dist.Normal(z, 0.5))
            numpyro.sample("y", dist.Normal(b, 0.5), obs=y_t)
        return z, None

    scan(step, 0.0, y)


def test_plate_only_inside_the_body():
    y = MODELS["panel"][1][0]
    guide = jg.AutoDelta(plate_only_in_body)
    params = perturb(guide.init(jax.random.PRNGKey(0), y), jax.random.PRNGKey(1))
    assert params.loc["b"].shape == (T, N)
    assert [(f.name, f.size, f.dim) for f in params.sites["b"].plates] == [("series", N, -1)]
    median = guide.median(params)
    joint, _ = log_density(plate_only_in_body, (y,), {}, median)
    np.testing.assert_allclose(jg.elbo_loss(plate_only_in_body, guide)(params, jax.random.PRNGKey(2), y), -joint, 1e-5)
    with pytest.raises(jg.SiteError, match="'b' has shape"):
        jg.elbo_loss(plate_only_in_body, guide)(params, jax.random.PRNGKey(2), y[:, :2])


# ---- a numpyro.param with a scan; what is refused ----------------------------------------
def param_before_scan(y):
    """The observation noise is a model param, declared before the scan and closed over."""
    noise = numpyro.param("noise", 0.7, constraint=constraints.positive)

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(z_prev, 1.0))
        numpyro.sample("y", dist.Normal(z, noise), obs=y_t)
        return z, None

    scan(step, 0.0, y)


def param_in_body(y):
    """The same param declared in the step: scan stacks it and never substitutes it."""

    def step(z_prev, y_t):
        noise = numpyro.param("noise", 0.7, constraint=constraints.positive)
        z = numpyro.sample("z", dist.Normal(z_prev, 1.0))
        numpyro.sample("y", dist.Normal(z, noise), obs=y_t)
        return z, None

    scan(step, 0.0, y)


def test_param_closed_over_by_the_body_is_numpyros():
    y = MODELS["local_level"][1][0]
    guide = jg.AutoDelta(param_before_scan, init_loc_fn=jg.init_to_feasible)
    params = perturb(guide.init(jax.random.PRNGKey(0), y), jax.random.PRNGKey(1))
    params = dataclasses.replace(params, model_params={"noise": jnp.log(jnp.asarray(1.3))})
    np_params = jg.to_numpyro_params(guide, params)
    np.testing.assert_allclose(np_params["noise"], 1.3, rtol=1e-6)
    ng = autoguide.AutoDelta(param_before_scan, init_loc_fn=jg.init_to_feasible)
    key = jax.random.PRNGKey(3)
    with numpyro_side():
        theirs = Trace_ELBO().loss(key, np_params, param_before_scan, ng, y)
    np.testing.assert_allclose(jg.elbo_loss(param_before_scan, guide)(params, key, y), theirs, rtol=1e-5)
    # the param is trained as NumPyro's SVI trains it
    result = jg.fit(param_before_scan, guide, optax.adam(2e-2), key, 200, y, progress_bar=False)
    with numpyro_side():
        svi = SVI(param_before_scan, ng, optax.adam(2e-2), Trace_ELBO())
        np_result = svi.run(jax.random.PRNGKey(1), 200, y, progress_bar=False)
    assert abs(float(result.params.model_param_values["noise"]) - 0.7) > 0.05
    np.testing.assert_allclose(result.params.model_param_values["noise"], np_result.params["noise"], rtol=2e-3)


@pytest.mark.parametrize("guide_cls", [jg.AutoNormal, jg.AutoDelta])
def test_param_in_the_body_is_refused(guide_cls):
    # it would stay at its init value for the whole fit (NumPyro's SVI fails on it)
    y = MODELS["local_level"][1][0]
    with pytest.raises(jg.SiteError, match="'noise' is declared inside a scan body") as err:
        guide_cls(param_in_body).init(jax.random.PRNGKey(0), y)
    assert err.value.site == "noise"


def nested(y):
    def outer(c, y_t):
        def inner(c2, _):
            return numpyro.sample("z", dist.Normal(c2, 1.0)), None

        c3, _ = scan(inner, c, None, length=3)
        numpyro.sample("y", dist.Normal(c3, 1.0), obs=y_t)
        return c3, None

    scan(outer, 0.0, y)


def subsampled_in_body(y):
    def step(c, y_t):
        with numpyro.plate("rows", 10, subsample_size=2):
            z = numpyro.sample("z", dist.Normal(c, 1.0))
        numpyro.sample("y", dist.Normal(z.sum(), 1.0), obs=y_t)
        return c, None

    scan(step, 0.0, y)


@pytest.mark.parametrize("guide_cls", [jg.AutoNormal, jg.AutoDelta])
@pytest.mark.parametrize(
    "model, match",
    [(nested, "'z' is in a scan inside another scan"), (subsampled_in_body, "'z' of a scan body is scaled")],
)
def test_unsupported_scans_are_refused_at_init(guide_cls, model, match):
    # a nested scan's params would be stacked on one axis only; a subsampled plate in a body
    # draws new rows each step: both were silently wrong or failed inside the fit
    y = MODELS["local_level"][1][0]
    with pytest.raises(jg.SiteError, match=match) as err:
        guide_cls(model).init(jax.random.PRNGKey(0), y)
    assert err.value.site == "z"
    with pytest.raises(jg.SiteError, match=match):
        jg.fit(model, guide_cls(model), optax.adam(0.01), jax.random.PRNGKey(0), 10, y, progress_bar=False)
