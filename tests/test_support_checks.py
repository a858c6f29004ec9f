"""The ELBO leaves out NumPyro's real-support checks (and only those).

With validation on, a real-support ``log_prob`` is ``where(isfinite(x), lp, -inf)``:
a pass over every value and a select in the backward pass of each step, which
changes nothing the non-finite guard does not already see. Constrained supports
keep their check: there an out-of-support value can have a finite, wrong density.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.distributions.transforms import ExpTransform

import jaxguides as jg
from jaxguides.loop.dce import _dce_jaxpr
from jaxguides.model.support_checks import without_real_support_check


@pytest.fixture(autouse=True)
def _validation_on():
    with numpyro.validation_enabled(True):
        yield


def test_a_real_support_check_is_left_out_and_the_density_kept():
    d = dist.Normal(jnp.zeros(3), 2.0).to_event(1)
    unchecked = without_real_support_check(d)
    x = jnp.array([0.3, -1.0, 2.5])
    assert unchecked.log_prob(x) == d.log_prob(x)
    assert d.log_prob(jnp.array([jnp.nan, 0.0, 0.0])) == -jnp.inf  # the original keeps its check
    assert jnp.isnan(unchecked.log_prob(jnp.array([jnp.nan, 0.0, 0.0])))  # still non-finite
    assert unchecked.log_prob(jnp.array([jnp.inf, 0.0, 0.0])) == -jnp.inf


@pytest.mark.parametrize(
    "d",
    [dist.HalfNormal(1.0), dist.Exponential(1.0), dist.Gamma(2.0, 1.0)],
    ids=["half_normal", "exponential", "gamma"],
)
def test_a_constrained_support_keeps_its_check(d):
    assert without_real_support_check(d) is d
    assert without_real_support_check(d).log_prob(-1.0) == -jnp.inf


def test_a_transformed_distribution_keeps_its_own_check_and_drops_its_bases():
    d = dist.TransformedDistribution(dist.Normal(0.0, 1.0), ExpTransform())
    unchecked = without_real_support_check(d)
    assert unchecked is not d and unchecked._validate_args and not unchecked.base_dist._validate_args
    assert d.base_dist._validate_args  # the original is not changed
    assert unchecked.log_prob(-1.0) == -jnp.inf
    assert unchecked.log_prob(2.0) == d.log_prob(2.0)


def test_improper_uniform_keeps_its_check():
    """Its density ignores the value: the check is the only thing that sees a NaN."""
    d = dist.ImproperUniform(dist.constraints.real, (), ())
    assert without_real_support_check(d) is d
    assert d.log_prob(jnp.nan) == -jnp.inf


def real_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    with numpyro.plate("units", y.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, 1.0))
        numpyro.sample("y", dist.Normal(theta, 2.0), obs=y)


def positive_model(y):
    s = numpyro.sample("s", dist.LogNormal(0.0, 1.0))
    numpyro.sample("y", dist.Exponential(s), obs=y)


def _num_eqns(model, guide, *args):
    params = guide.init(jax.random.PRNGKey(0), *args)
    loss = jg.elbo_loss(model, guide)
    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(params, jax.random.PRNGKey(1), *args).jaxpr
    kept, _ = _dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars), instantiate=True)  # parameter checks are dead code
    return len(kept.eqns)


@pytest.mark.skipif(_dce_jaxpr is None, reason="this JAX has no dce_jaxpr where jaxguides.loop.dce looks")
@pytest.mark.parametrize("guide_cls", [jg.AutoNormal, jg.AutoDelta])
def test_the_loss_of_a_real_model_is_the_unvalidated_program(guide_cls):
    """Validation on gives exactly the program of validation off: no check is left in it."""
    y = jnp.linspace(-1.0, 2.0, 5)
    checked = _num_eqns(real_model, guide_cls(real_model), y)
    with numpyro.validation_enabled(False):
        unchecked = _num_eqns(real_model, guide_cls(real_model), y)
    assert checked == unchecked


@pytest.mark.skipif(_dce_jaxpr is None, reason="this JAX has no dce_jaxpr where jaxguides.loop.dce looks")
def test_the_loss_keeps_a_constrained_sites_check():
    y = jnp.array([0.5, 1.5])
    checked = _num_eqns(positive_model, jg.AutoNormal(positive_model), y)
    with numpyro.validation_enabled(False):
        unchecked = _num_eqns(positive_model, jg.AutoNormal(positive_model), y)
    assert checked > unchecked


def test_the_loss_equals_numpyros_validated_one():
    y = jnp.linspace(-1.0, 2.0, 5)
    guide = jg.AutoNormal(real_model)
    params = guide.init(jax.random.PRNGKey(0), y)
    key = jax.random.PRNGKey(3)
    ours = jg.elbo_loss(real_model, guide)(params, key, y)
    with numpyro.validation_enabled(False):
        reference = jg.elbo_loss(real_model, guide)(params, key, y)
    np.testing.assert_allclose(ours, reference, rtol=1e-6)


def test_out_of_support_data_still_stops_the_fit():
    """A NaN observation (real support) is refused before compiling, naming the site;
    a negative one (positive support) makes the first step's loss non-finite."""
    guide = jg.AutoNormal(real_model)
    with pytest.raises(ValueError, match="observed site 'y'"):
        jg.fit(
            real_model, guide, optax.adam(0.01), jax.random.PRNGKey(0), 5, jnp.array([0.0, jnp.nan]), progress_bar=False
        )
    guide = jg.AutoNormal(positive_model)
    with pytest.raises(jg.NonFiniteLossError):
        jg.fit(
            positive_model,
            guide,
            optax.adam(0.01),
            jax.random.PRNGKey(0),
            5,
            jnp.array([1.0, -1.0]),
            progress_bar=False,
        )
