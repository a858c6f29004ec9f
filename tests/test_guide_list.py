"""AutoGuideList against NumPyro's own AutoGuideList on the same params; its
refusals; and the fit machinery (fit_many, checkpoints, model params) on it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.infer import Predictive, Trace_ELBO, autoguide

import jaxguides as jg

pytestmark = pytest.mark.allow_rank_promotion  # NumPyro's guides and Predictive broadcast implicitly

X = jax.random.normal(jax.random.PRNGKey(0), (60, 3))
Y = X @ jnp.array([1.0, -1.0, 0.5]) + 0.3 * jax.random.normal(jax.random.PRNGKey(1), (60,))


def model(x, y=None):
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    c = numpyro.sample("c", dist.Beta(2.0, 2.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ b + c, sigma), obs=y)


def pair(first, second, ours=True):
    """(jg, NumPyro) lists: ``first`` over sigma, ``second`` over the rest."""
    if ours:
        return jg.AutoGuideList(
            [first(handlers.block(model, expose=["sigma"])), second(handlers.block(model, hide=["sigma"]))]
        )
    guide = autoguide.AutoGuideList(model)
    guide.append(first(handlers.block(model, expose=["sigma"])))
    guide.append(second(handlers.block(model, hide=["sigma"])))
    return guide


KINDS = {
    "delta+normal": (jg.AutoDelta, jg.AutoNormal, autoguide.AutoDelta, autoguide.AutoNormal),
    "delta+delta": (jg.AutoDelta, jg.AutoDelta, autoguide.AutoDelta, autoguide.AutoDelta),
    "normal+normal": (jg.AutoNormal, jg.AutoNormal, autoguide.AutoNormal, autoguide.AutoNormal),
}


def setup(kind):
    a, b, na, nb = KINDS[kind]
    guide = pair(a, b)
    result = jg.fit(model, guide, optax.adam(0.05), jax.random.PRNGKey(2), 300, X, Y, progress_bar=False)
    ng = pair(na, nb, ours=False)
    with handlers.seed(rng_seed=0):
        ng(X, Y)
    return guide, result.params, ng, jg.to_numpyro_params(guide, result.params)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_median_quantiles_and_draws_match_numpyro(kind):
    guide, params, ng, np_params = setup(kind)
    # the names NumPyro's AutoGuideList holds after svi.init
    svi = numpyro.infer.SVI(model, ng, numpyro.optim.Adam(0.01), Trace_ELBO())
    assert set(np_params) == set(svi.get_params(svi.init(jax.random.PRNGKey(0), X, Y)))
    median, theirs = guide.median(params), ng.median(np_params)
    assert set(median) == set(theirs) == {"sigma", "b", "c"}
    for name in theirs:
        np.testing.assert_allclose(median[name], theirs[name], rtol=1e-5, err_msg=name)
    qs = [0.1, 0.5, 0.9]
    if kind == "normal+normal":  # NumPyro's AutoDelta has no quantiles
        ours_q, theirs_q = guide.quantiles(params, qs), ng.quantiles(np_params, qs)
        for name in theirs_q:
            np.testing.assert_allclose(ours_q[name], theirs_q[name], rtol=1e-5, atol=1e-6, err_msg=name)
    key = jax.random.PRNGKey(5)
    ours_d = Predictive(model, guide=guide, params=np_params, num_samples=6)(key, X)
    theirs_d = Predictive(model, guide=ng, params=np_params, num_samples=6)(key, X)
    np.testing.assert_allclose(ours_d["y"], theirs_d["y"], rtol=1e-5, atol=1e-5)


def test_delta_part_gives_its_point_at_every_quantile():
    guide, params, _, _ = setup("delta+normal")
    q = guide.quantiles(params, [0.1, 0.9])
    np.testing.assert_array_equal(q["sigma"], np.full(2, guide.median(params)["sigma"]))
    assert float(q["c"][0]) < float(q["c"][1])


def test_elbo_matches_numpyro():
    """Two AutoDelta parts draw nothing: the ELBO is NumPyro's exactly; with an
    AutoNormal part, in expectation."""
    guide, params, ng, np_params = setup("delta+delta")
    key = jax.random.PRNGKey(3)
    np.testing.assert_allclose(
        jg.elbo_loss(model, guide)(params, key, X, Y), Trace_ELBO().loss(key, np_params, model, ng, X, Y), rtol=1e-5
    )
    guide, params, ng, np_params = setup("delta+normal")
    ours = jg.elbo_loss(model, guide, num_particles=20_000)(params, key, X, Y)
    theirs = Trace_ELBO(num_particles=20_000).loss(key, np_params, model, ng, X, Y)
    np.testing.assert_allclose(ours, theirs, rtol=2e-3)


def test_log_prob_and_posterior():
    guide, params, ng, np_params = setup("normal+normal")
    values = guide.sample(params, jax.random.PRNGKey(1))
    post = guide.get_posterior(params)
    expected = sum(jnp.sum(post[k].log_prob(v)) for k, v in values.items())
    np.testing.assert_allclose(guide.log_prob(params, values), expected, rtol=1e-5)


def test_uncovered_twice_covered_and_blocked_alone_are_refused_naming_the_site():
    with pytest.raises(jg.SiteError, match="'sigma'.*covered by no part"):
        jg.AutoGuideList([jg.AutoNormal(handlers.block(model, hide=["sigma"]))]).init(jax.random.PRNGKey(0), X, Y)
    with pytest.raises(jg.SiteError, match="'sigma'.*more than one part"):
        jg.AutoGuideList([jg.AutoNormal(model), jg.AutoDelta(handlers.block(model, expose=["sigma"]))]).init(
            jax.random.PRNGKey(0), X, Y
        )
    alone = jg.AutoNormal(handlers.block(model, hide=["sigma"]))
    with pytest.raises(jg.SiteError, match="'sigma'.*handlers.block.*AutoGuideList"):
        jg.fit(model, alone, optax.adam(0.05), jax.random.PRNGKey(0), 10, X, Y, progress_bar=False)


def test_fit_many_checkpoint_and_model_params_on_a_list(tmp_path):
    def noisy(x, y):
        b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        c = numpyro.sample("c", dist.Normal(0.0, 1.0))
        noise = numpyro.param("noise", 1.0, constraint=constraints.positive)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(x @ b + c, noise), obs=y)

    guide = jg.AutoGuideList(
        [jg.AutoDelta(handlers.block(noisy, expose=["b"])), jg.AutoNormal(handlers.block(noisy, hide=["b"]))]
    )
    assert hash(guide) == hash(jg.AutoGuideList(list(guide.guides)))
    whole = jg.fit(noisy, guide, optax.adam(0.05), jax.random.PRNGKey(1), 200, X, Y, progress_bar=False)
    assert "noise" in jg.to_numpyro_params(guide, whole.params)
    assert float(whole.params.model_param_values["noise"]) < 0.6  # learned from 1.0 towards 0.3
    path = tmp_path / "list.ckpt"
    jg.fit(noisy, guide, optax.adam(0.05), jax.random.PRNGKey(1), 120, X, Y, progress_bar=False, checkpoint=path)
    resumed = jg.fit(
        noisy, guide, optax.adam(0.05), jax.random.PRNGKey(1), 200, X, Y, progress_bar=False, checkpoint=path
    )
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(whole.params)):
        np.testing.assert_array_equal(a, b)
    many = jg.fit_many(
        noisy, guide, optax.adam(0.05), jax.random.split(jax.random.PRNGKey(0), 2), 200, X, Y, progress_bar=False
    )
    assert many.params.model_params["noise"].shape == (2,)
    back = jg.from_numpyro_params(guide, jg.to_numpyro_params(guide, whole.params), jax.random.PRNGKey(0), X, Y)
    for a, b in zip(jax.tree.leaves(back.parts), jax.tree.leaves(whole.params.parts)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # constants (the parts' support data too) get no optimizer state
    mu = whole.state.opt_state[0].mu
    assert mu.support is None and all(p.support is None for p in mu.parts)


def test_per_site_init_scale():
    guide = jg.AutoNormal(model, init_scale={"sigma": 0.5, "c": 0.02})
    assert hash(guide) == hash(jg.AutoNormal(model, init_scale={"c": 0.02, "sigma": 0.5}))
    scale = guide.init(jax.random.PRNGKey(0), X, Y).scale
    np.testing.assert_allclose(scale["sigma"], 0.5, rtol=1e-6)
    np.testing.assert_allclose(scale["c"], 0.02, rtol=1e-5)
    np.testing.assert_allclose(scale["b"], np.full(3, 0.1), rtol=1e-6)  # the default for sites not named
    with pytest.raises(jg.SiteError, match="'nope'"):
        jg.AutoNormal(model, init_scale={"nope": 0.5}).init(jax.random.PRNGKey(0), X, Y)
    with pytest.raises(ValueError, match="finite float > 0"):
        jg.AutoNormal(model, init_scale={"c": 0.0})
