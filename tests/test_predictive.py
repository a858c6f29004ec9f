"""Posterior predictive draws from our params through ``numpyro.infer.Predictive``:
with NumPyro's own guide on ``jg.to_numpyro_params``, and with ``guide.sample``
as ``posterior_samples``; both must give the same predictive distribution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import Predictive
from numpyro.infer import autoguide as numpyro_autoguide

import jaxguides as jg

N = 50
NUM_SAMPLES = 4000
X = jnp.linspace(-2.0, 2.0, N)
Y = 1.0 + 2.0 * X + 0.5 * jax.random.normal(jax.random.PRNGKey(0), (N,))


def regression(x, y=None):
    a = numpyro.sample("a", dist.Normal(0.0, 5.0))
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.deterministic("mean", a + b * x)
        numpyro.sample("y", dist.Normal(a + b * x, sigma), obs=y)


def numpyro_guide(guide_type):
    """A NumPyro autoguide that knows the model's latent sites.

    A NumPyro guide learns its sites on its first call: make that call with
    the data, else ``Predictive(..., y=None)`` would take ``y`` for a latent.
    """
    guide = guide_type(regression)
    numpyro.handlers.seed(guide, rng_seed=0)(X, Y)
    return guide


@pytest.fixture(scope="module")
def fitted():
    guide = jg.AutoNormal(regression)
    result = jg.fit(regression, guide, optax.adam(0.05), jax.random.PRNGKey(1), 1500, X, Y, progress_bar=False)
    return guide, result.params


def test_through_numpyro_guide(fitted):
    guide, params = fitted
    predictive = Predictive(
        regression,
        guide=numpyro_guide(numpyro_autoguide.AutoNormal),
        params=jg.to_numpyro_params(guide, params),
        num_samples=NUM_SAMPLES,
        return_sites=["a", "b", "mean", "y"],  # by default the guide's own sites are left out
    )
    draws = predictive(jax.random.PRNGKey(2), X)  # y=None: the observed site is drawn
    assert draws["y"].shape == (NUM_SAMPLES, N)
    assert draws["mean"].shape == (NUM_SAMPLES, N)
    # NumPyro's guide, driven by our params, draws from our Normal(loc, scale)
    for site in ("a", "b"):
        loc, scale = float(params.loc[site]), float(params.scale[site])
        assert float(jnp.mean(draws[site])) == pytest.approx(loc, abs=5 * scale / np.sqrt(NUM_SAMPLES))
        assert float(jnp.std(draws[site])) == pytest.approx(scale, rel=0.05)


def test_through_posterior_samples(fitted):
    guide, params = fitted
    samples = guide.sample(params, jax.random.PRNGKey(3), sample_shape=(NUM_SAMPLES,))
    draws = Predictive(regression, posterior_samples=samples)(jax.random.PRNGKey(4), X)
    assert draws["y"].shape == (NUM_SAMPLES, N)
    # y | a, b, sigma ~ Normal(a + b x, sigma) for each posterior draw
    resid = (draws["y"] - draws["mean"]) / samples["sigma"][:, None]
    assert float(jnp.std(resid)) == pytest.approx(1.0, rel=0.03)
    expected = samples["a"][:, None] + samples["b"][:, None] * X[None, :]
    np.testing.assert_allclose(draws["mean"], expected, rtol=1e-5, atol=1e-5)


def test_both_routes_agree(fitted):
    guide, params = fitted
    numpyro_params = jg.to_numpyro_params(guide, params)
    predictive = Predictive(
        regression, guide=numpyro_guide(numpyro_autoguide.AutoNormal), params=numpyro_params, num_samples=NUM_SAMPLES
    )
    via_guide = predictive(jax.random.PRNGKey(5), X)["y"]
    samples = guide.sample(params, jax.random.PRNGKey(6), sample_shape=(NUM_SAMPLES,))
    via_samples = Predictive(regression, posterior_samples=samples)(jax.random.PRNGKey(7), X)["y"]
    sd = jnp.std(via_samples, axis=0)
    diff = jnp.abs(jnp.mean(via_guide, 0) - jnp.mean(via_samples, 0))
    np.testing.assert_array_less(diff, 5 * sd * np.sqrt(2 / NUM_SAMPLES))
    np.testing.assert_allclose(jnp.std(via_guide, 0), sd, rtol=0.08)
    # and the data lie inside the predictive spread
    lo, hi = jnp.quantile(via_samples, jnp.array([0.005, 0.995]), axis=0)
    assert float(jnp.mean((Y >= lo) & (Y <= hi))) > 0.9


def test_autodelta_through_numpyro_guide():
    guide = jg.AutoDelta(regression)
    result = jg.fit(regression, guide, optax.adam(0.05), jax.random.PRNGKey(1), 1000, X, Y, progress_bar=False)
    predictive = Predictive(
        regression,
        guide=numpyro_guide(numpyro_autoguide.AutoDelta),
        params=jg.to_numpyro_params(guide, result.params),
        num_samples=100,
        return_sites=["a", "mean", "y"],
    )
    draws = predictive(jax.random.PRNGKey(2), X)
    point = guide.median(result.params)
    np.testing.assert_allclose(draws["a"], jnp.broadcast_to(point["a"], (100,)), rtol=1e-6)
    assert float(jnp.std(draws["y"] - draws["mean"])) == pytest.approx(float(point["sigma"]), rel=0.1)
