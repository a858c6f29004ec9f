"""Bad input gets a clear error of the right type, naming the site and the fix,
raised while tracing (in Python), before any compiled work starts."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import jaxguides as jg

GUIDES = [jg.AutoNormal, jg.AutoDelta]
KEY = jax.random.PRNGKey(0)


def with_discrete():
    numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("coin", dist.Bernoulli(0.3))


def with_sphere():
    numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("direction", dist.ProjectedNormal(jnp.array([1.0, 0.0, 0.0])))


def regression(x):
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(x.shape[1]), 1.0).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ beta, 1.0), obs=jnp.zeros(x.shape[0]))


def positive_model():
    numpyro.sample("sigma", dist.Gamma(2.0, 1.0))
    numpyro.sample("v", dist.Normal(jnp.zeros(3), 1.0).to_event(1))


def other_model():
    numpyro.sample("sigma", dist.Gamma(2.0, 1.0))


def raising(x):
    numpyro.sample("first", dist.Normal(0.0, 1.0))
    bad = x @ jnp.ones(5)  # shapes do not match: the model's own bug
    numpyro.sample("second", dist.Normal(bad, 1.0))


def observed_only(y):
    numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)
    numpyro.factor("f", -1.0)


def raises_in_python_at_trace_time(fn, *args):
    """Run ``fn`` under ``jax.jit``: a trace-time error surfaces as the Python error itself."""
    return jax.jit(fn)(*args)


# ---- latent sites a guide cannot handle ---------------------------------------------------
@pytest.mark.parametrize("guide_cls", GUIDES)
def test_discrete_latent_site(guide_cls):
    with pytest.raises(jg.SiteError, match="'coin'") as info:
        guide_cls(with_discrete).init(KEY)
    assert info.value.site == "coin"
    assert "discrete" in str(info.value) and "obs=" in str(info.value)
    # inside jit: the same Python error, raised while tracing
    with pytest.raises(jg.SiteError, match="'coin'"):
        raises_in_python_at_trace_time(guide_cls(with_discrete).init, KEY)


@pytest.mark.parametrize("guide_cls", GUIDES)
def test_support_without_bijection(guide_cls):
    with pytest.raises(jg.SiteError, match="'direction'") as info:
        guide_cls(with_sphere).init(KEY)
    assert info.value.site == "direction"
    assert "sphere" in str(info.value) and "ProjectedNormalReparam" in str(info.value)
    assert isinstance(info.value, ValueError)  # catchable as the builtin


# ---- init_scale -----------------------------------------------------------------------------
@pytest.mark.parametrize("init_scale", [0.0, -0.1, math.nan, math.inf, -math.inf, "0.1", True, np.True_, None, [0.1]])
def test_bad_init_scale_fails_at_construction(init_scale):
    with pytest.raises(ValueError, match="init_scale") as info:
        jg.AutoNormal(positive_model, init_scale=init_scale)
    assert "> 0" in str(info.value)


# ---- params that do not belong to the guide ----------------------------------------------------
def test_params_of_another_model():
    params = jg.AutoNormal(other_model).init(KEY)
    guide = jg.AutoNormal(positive_model)
    for call in [
        lambda: guide.median(params),
        lambda: guide.sample(params, KEY),
        lambda: guide.log_prob(params, {"sigma": 1.0}),
        lambda: guide.quantiles(params, [0.5]),
        lambda: guide.get_posterior(params),
        lambda: jg.to_numpyro_params(guide, params),
        lambda: jg.elbo_loss(positive_model, guide)(params, KEY),
    ]:
        with pytest.raises(jg.ParamsMismatchError, match="other_model") as info:
            call()
        assert "positive_model" in str(info.value) and "guide.init" in str(info.value)
    with pytest.raises(jg.ParamsMismatchError):
        raises_in_python_at_trace_time(guide.median, params)


@pytest.mark.allow_rank_promotion  # init_to_median: NumPyro's Normal.sample((15,)) on a vector site
def test_autonormal_params_given_to_autodelta_and_back():
    normal_params = jg.AutoNormal(positive_model).init(KEY)
    delta_params = jg.AutoDelta(positive_model).init(KEY)
    with pytest.raises(jg.ParamsMismatchError, match="AutoNormalParams") as info:
        jg.AutoDelta(positive_model).median(normal_params)
    assert "AutoDeltaParams" in str(info.value)
    with pytest.raises(jg.ParamsMismatchError, match="AutoDeltaParams"):
        jg.AutoNormal(positive_model).sample(delta_params, KEY)
    with pytest.raises(jg.ParamsMismatchError):
        jg.elbo_loss(positive_model, jg.AutoNormal(positive_model))(delta_params, KEY)
    with pytest.raises(jg.ParamsMismatchError, match="dict"):  # not params at all
        jg.AutoNormal(positive_model).log_prob({"sigma": 1.0}, {"sigma": 1.0})


# ---- a global site whose shape changed since init ------------------------------------------------------
@pytest.mark.parametrize("guide_cls", GUIDES)
@pytest.mark.allow_rank_promotion  # init_to_median: NumPyro's Normal.sample((15,)) on a vector site
def test_global_site_shape_changed_since_init(guide_cls):
    guide = guide_cls(regression)
    params = guide.init(KEY, jnp.ones((5, 3)))
    loss = jg.elbo_loss(regression, guide)
    assert jnp.isfinite(loss(params, KEY, jnp.ones((7, 3))))  # more rows: fine, beta keeps its shape
    with pytest.raises(jg.SiteError, match="'beta'") as info:
        loss(params, KEY, jnp.ones((5, 4)))
    assert info.value.site == "beta"
    assert "(4,)" in str(info.value) and "(3,)" in str(info.value) and "guide.init" in str(info.value)
    with pytest.raises(jg.SiteError, match="'beta'"):
        jax.jit(loss)(params, KEY, jnp.ones((5, 4)))


def regression_with_prediction(x):
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(x.shape[1]), 1.0).to_event(1))
    numpyro.deterministic("pred", x @ beta)


@pytest.mark.parametrize("guide_cls", GUIDES)
@pytest.mark.allow_rank_promotion  # init_to_median: NumPyro's Normal.sample((15,)) on a vector site
def test_guide_functions_with_args_of_another_shape(guide_cls):
    # guide functions run the model (for deterministic sites) with the args they get
    guide = guide_cls(regression_with_prediction)
    params = guide.init(KEY, jnp.ones((5, 3)))
    assert guide.sample(params, KEY, jnp.ones((7, 3)))["pred"].shape == (7,)
    jitted = jax.jit(lambda x: guide.sample(params, KEY, x, sample_shape=(2,)))
    for call in [lambda x: guide.sample(params, KEY, x), lambda x: guide.median(params, x), jitted]:
        with pytest.raises(jg.SiteError, match="'beta'") as info:
            call(jnp.ones((5, 4)))
        assert "(4,)" in str(info.value) and "(3,)" in str(info.value) and "guide.init" in str(info.value)


# ---- values of the wrong shape or outside the support ---------------------------------------------------------
@pytest.mark.parametrize("guide_cls", GUIDES)
def test_init_to_value_outside_the_support(guide_cls):
    strategy = jg.init_to_value(values={"sigma": -1.0})
    with pytest.raises(jg.SiteError, match="'sigma'") as info:
        guide_cls(positive_model, init_loc_fn=strategy).init(KEY)
    assert "support" in str(info.value)


@pytest.mark.parametrize("guide_cls", GUIDES)
def test_init_to_value_of_the_wrong_shape(guide_cls):
    strategy = jg.init_to_value(values={"v": jnp.zeros(4)})
    with pytest.raises(jg.SiteError, match="'v'") as info:
        guide_cls(positive_model, init_loc_fn=strategy).init(KEY)
    assert "(4,)" in str(info.value) and "(3,)" in str(info.value)
    with pytest.raises(jg.SiteError, match="'v'"):
        raises_in_python_at_trace_time(guide_cls(positive_model, init_loc_fn=strategy).init, KEY)


@pytest.mark.parametrize("guide_cls", GUIDES)
@pytest.mark.allow_rank_promotion  # init_to_median: NumPyro's Normal.sample((15,)) on a vector site
def test_log_prob_values_missing_or_of_the_wrong_shape(guide_cls):
    guide = guide_cls(positive_model)
    params = guide.init(KEY)
    with pytest.raises(jg.SiteError, match="'v'"):
        guide.log_prob(params, {"sigma": 1.0})
    with pytest.raises(jg.SiteError, match="'v'") as info:
        guide.log_prob(params, {"sigma": 1.0, "v": jnp.zeros(2)})
    assert "(3,)" in str(info.value)


# ---- models that cannot be traced -------------------------------------------------------------------
@pytest.mark.parametrize("guide_cls", GUIDES)
def test_model_that_raises_while_traced(guide_cls):
    with pytest.raises(jg.ModelTraceError, match="'first'") as info:
        guide_cls(raising).init(KEY, jnp.ones(3))
    assert info.value.site == "first"
    assert isinstance(info.value.__cause__, (TypeError, ValueError))  # the model's own error, chained
    with pytest.raises(jg.ModelTraceError, match="'first'"):
        raises_in_python_at_trace_time(lambda k: guide_cls(raising).init(k, jnp.ones(3)), KEY)


def test_model_called_with_the_wrong_arguments():
    with pytest.raises(TypeError, match="raising"):
        jg.AutoNormal(raising).init(KEY)


@pytest.mark.parametrize("guide_cls", GUIDES)
def test_model_without_latent_sites(guide_cls):
    with pytest.raises(ValueError, match="no latent") as info:
        guide_cls(observed_only).init(KEY, 1.0)
    assert "observed_only" in str(info.value)


def test_model_errors_through_fit():
    def raises_after_b(y):
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        numpyro.sample("b", dist.Normal(a, 1.0))
        raise KeyError("boom")

    def raises_first(y):
        raise ZeroDivisionError("early")

    def no_latents(y):
        numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    for guide_cls in (jg.AutoNormal, jg.AutoDelta):
        with pytest.raises(jg.ModelTraceError, match="'b'") as info:
            jg.fit(raises_after_b, guide_cls(raises_after_b), optax.adam(0.1), KEY, 5, jnp.ones(3), progress_bar=False)
        assert info.value.site == "b" and isinstance(info.value.__cause__, KeyError)
        assert "boom" in str(info.value)
        with pytest.raises(jg.ModelTraceError, match="before its first site") as info:
            jg.fit(raises_first, guide_cls(raises_first), optax.adam(0.1), KEY, 5, jnp.ones(3), progress_bar=False)
        assert info.value.site is None and isinstance(info.value.__cause__, ZeroDivisionError)
        with pytest.raises(ValueError, match="no latent"):
            jg.fit(no_latents, guide_cls(no_latents), optax.adam(0.1), KEY, 5, jnp.ones(3), progress_bar=False)
