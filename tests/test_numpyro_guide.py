"""Our guides called as NumPyro guides: ``Predictive(model, guide=guide, params=...)``
and NumPyro's own ``SVI`` take them, and they draw what NumPyro's guides draw."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro import handlers
from numpyro.infer import SVI, Predictive, Trace_ELBO, autoguide

import jaxguides as jg
from helpers.models import cases

GUIDES = {"AutoNormal": (jg.AutoNormal, autoguide.AutoNormal), "AutoDelta": (jg.AutoDelta, autoguide.AutoDelta)}


def _perturbed(guide, case):
    params = jg.to_numpyro_params(guide, guide.init(jax.random.PRNGKey(0), *case.args))
    return {k: v * 1.05 + 0.02 if k.endswith("_loc") else v * 1.3 for k, v in params.items()}


def _numpyro_guide(cls, case):
    ng = cls(case.model, create_plates=case.create_plates)
    with handlers.seed(rng_seed=0), jax.numpy_rank_promotion("allow"):
        ng(*case.args)
    return ng


@pytest.mark.parametrize("kind", sorted(GUIDES))
@pytest.mark.parametrize(
    "case",
    cases(
        [
            "real",
            "positive",
            "interval",
            "simplex",
            "corr_cholesky",
            "lower_cholesky",
            "nested_plates",
            "subsampled_nested",
        ]
    ),
)
@pytest.mark.allow_rank_promotion  # NumPyro's guides and Predictive broadcast implicitly
def test_guide_draws_what_numpyro_guide_draws(kind, case):
    ours_cls, theirs_cls = GUIDES[kind]
    guide = ours_cls(case.model, create_plates=case.create_plates)
    params = _perturbed(guide, case)
    ng = _numpyro_guide(theirs_cls, case)
    names = list(guide.init(jax.random.PRNGKey(0), *case.args).sites.names)
    key = jax.random.PRNGKey(4)
    ours = Predictive(case.model, guide=guide, params=params, num_samples=7, return_sites=names)(key, *case.args)
    theirs = Predictive(case.model, guide=ng, params=params, num_samples=7, return_sites=names)(key, *case.args)
    assert set(ours) == set(theirs) == set(names)
    for name in names:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6, err_msg=name)


def regression(x, y=None):
    a = numpyro.sample("a", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.deterministic("mean", a * x)
        numpyro.sample("y", dist.Normal(a * x, sigma), obs=y)


X = jnp.linspace(-2.0, 2.0, 30)
Y = 2.0 * X + 0.3 * jax.random.normal(jax.random.PRNGKey(0), (30,))


@pytest.mark.parametrize("kind", sorted(GUIDES))
@pytest.mark.allow_rank_promotion  # init_to_median draws the (then latent) y: NumPyro's sample broadcasts
def test_predictive_without_the_data_predicts_it(kind):
    """Called without ``y`` the observed site is latent in the model's trace; the
    params say it is not the guide's, so Predictive draws it from the model."""
    ours_cls, theirs_cls = GUIDES[kind]
    guide = ours_cls(regression)
    result = jg.fit(regression, guide, optax.adam(0.05), jax.random.PRNGKey(1), 500, X, Y, progress_bar=False)
    params = jg.to_numpyro_params(guide, result.params)
    ng = theirs_cls(regression)
    handlers.seed(ng, rng_seed=0)(X, Y)
    key = jax.random.PRNGKey(2)
    ours = Predictive(regression, guide=guide, params=params, num_samples=50)(key, X)
    theirs = Predictive(regression, guide=ng, params=params, num_samples=50)(key, X)
    assert set(ours) == set(theirs) == {"y", "mean"}
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("kind", sorted(GUIDES))
def test_numpyro_svi_takes_our_guide(kind):
    """NumPyro's SVI with our guide: the same params, loss and steps as with its own."""
    ours_cls, theirs_cls = GUIDES[kind]
    runs = []
    for guide in (
        ours_cls(regression, init_loc_fn=jg.init_to_feasible),
        theirs_cls(regression, init_loc_fn=jg.init_to_feasible),
    ):
        svi = SVI(regression, guide, numpyro.optim.Adam(0.05), Trace_ELBO())
        state = svi.init(jax.random.PRNGKey(0), X, Y)
        state, losses = jax.lax.scan(lambda s, _, svi=svi: svi.update(s, X, Y), state, length=100)
        runs.append((svi.get_params(state), losses))
    (ours, our_losses), (theirs, their_losses) = runs
    assert set(ours) == set(theirs)
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(our_losses, their_losses, rtol=1e-4)


def test_calling_the_guide_holds_no_state():
    guide = jg.AutoNormal(regression)
    before = (hash(guide), dict(vars(guide)))
    handlers.seed(guide, rng_seed=0)(X, Y)
    assert (hash(guide), dict(vars(guide))) == before
    assert guide == jg.AutoNormal(regression)
