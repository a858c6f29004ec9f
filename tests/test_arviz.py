"""jg.to_arviz: groups, variable names, dims named after plates, and summary
statistics that match the guide's own moments."""

from __future__ import annotations

import dataclasses
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
import xarray as xr

import jaxguides as jg

with warnings.catch_warnings():  # ArviZ 0.23 announces its 1.0 refactor on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

J = 8
Y = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
SCHOOLS = list("ABCDEFGH")
NUM_SAMPLES = 4000


def eight_schools(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", J):
        theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_tilde)
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


@pytest.fixture(scope="module")
def fitted():
    guide = jg.AutoNormal(eight_schools)
    result = jg.fit(eight_schools, guide, optax.adam(0.02), jax.random.PRNGKey(0), 1000, SIGMA, y=Y, progress_bar=False)
    return guide, result.params


@pytest.fixture(scope="module")
def idata(fitted):
    guide, params = fitted
    return jg.to_arviz(
        guide,
        params,
        jax.random.PRNGKey(1),
        SIGMA,
        y=Y,
        num_samples=NUM_SAMPLES,
        posterior_predictive=True,
        coords={"school": SCHOOLS},
    )


def test_groups_and_variables(idata):
    assert isinstance(idata, az.InferenceData)
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "observed_data"}
    assert set(idata.posterior.data_vars) == {"mu", "tau", "theta_tilde", "theta"}
    assert set(idata.posterior_predictive.data_vars) == {"obs"}
    assert set(idata.observed_data.data_vars) == {"obs"}
    np.testing.assert_array_equal(idata.observed_data["obs"].values, np.asarray(Y))


def test_dims_are_plate_names(idata):
    post = idata.posterior
    assert post["mu"].dims == ("chain", "draw")
    assert post["mu"].shape == (1, NUM_SAMPLES)
    assert post["theta_tilde"].dims == ("chain", "draw", "school")
    assert post["theta"].dims == ("chain", "draw", "school")  # a deterministic site in the plate
    assert idata.posterior_predictive["obs"].dims == ("chain", "draw", "school")
    assert idata.observed_data["obs"].dims == ("school",)
    assert list(post["school"].values) == SCHOOLS


def test_summary_matches_guide_moments(fitted, idata):
    guide, params = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = az.summary(idata, var_names=["mu", "theta_tilde", "tau"], kind="stats", round_to="none")
    loc, scale = params.loc, params.scale
    # real sites: Normal(loc, scale); the standard error of a mean of N draws is sd / sqrt(N)
    se = float(scale["mu"]) / np.sqrt(NUM_SAMPLES)
    assert summary.loc["mu", "mean"] == pytest.approx(float(loc["mu"]), abs=5 * se)
    assert summary.loc["mu", "sd"] == pytest.approx(float(scale["mu"]), rel=0.05)
    for j, school in enumerate(SCHOOLS):
        row = summary.loc[f"theta_tilde[{school}]"]
        s = float(scale["theta_tilde"][j])
        assert row["mean"] == pytest.approx(float(loc["theta_tilde"][j]), abs=5 * s / np.sqrt(NUM_SAMPLES))
        assert row["sd"] == pytest.approx(s, rel=0.05)
    # positive site: LogNormal(loc, scale) in constrained space
    m, s = float(loc["tau"]), float(scale["tau"])
    mean, sd = np.exp(m + s**2 / 2), np.exp(m + s**2 / 2) * np.sqrt(np.expm1(s**2))
    assert summary.loc["tau", "mean"] == pytest.approx(mean, abs=5 * sd / np.sqrt(NUM_SAMPLES))
    assert summary.loc["tau", "sd"] == pytest.approx(sd, rel=0.1)
    # and the guide's own median / quantiles
    assert float(idata.posterior["tau"].median()) == pytest.approx(float(guide.median(params)["tau"]), rel=0.05)


def test_deterministic_site_is_computed_from_each_draw(idata):
    post = idata.posterior
    np.testing.assert_allclose(post["theta"], post["mu"] + post["tau"] * post["theta_tilde"], rtol=1e-5, atol=1e-5)


def test_posterior_predictive_spread(idata):
    # obs | theta ~ Normal(theta, sigma): the predictive variance is var(theta) + sigma^2
    pred = idata.posterior_predictive["obs"].values.reshape(NUM_SAMPLES, J)
    theta = idata.posterior["theta"].values.reshape(NUM_SAMPLES, J)
    expected = np.sqrt(theta.var(0) + np.asarray(SIGMA) ** 2)
    np.testing.assert_allclose(pred.std(0), expected, rtol=0.1)


def test_forest_plot_runs(idata):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    axes = az.plot_forest(idata, var_names=["theta"], combined=True)
    assert len(axes) == 1
    matplotlib.pyplot.close("all")


def test_without_posterior_predictive_and_without_args(fitted):
    guide, params = fitted
    idata = jg.to_arviz(guide, params, jax.random.PRNGKey(2), SIGMA, y=Y, num_samples=10)
    assert set(idata.groups()) == {"posterior"}
    # without the model's args there are no deterministic sites, and no predictive
    idata = jg.to_arviz(guide, params, jax.random.PRNGKey(2), num_samples=10)
    assert set(idata.posterior.data_vars) == {"mu", "tau", "theta_tilde"}
    with pytest.raises(TypeError, match="cannot be called"):
        jg.to_arviz(guide, params, jax.random.PRNGKey(2), num_samples=10, posterior_predictive=True)
    with pytest.raises(ValueError, match="num_samples"):
        jg.to_arviz(guide, params, jax.random.PRNGKey(2), num_samples=0)


def test_data_left_out_gives_no_observed_data(fitted):
    guide, params = fitted
    idata = jg.to_arviz(guide, params, jax.random.PRNGKey(3), SIGMA, num_samples=10, posterior_predictive=True)
    assert set(idata.groups()) == {"posterior", "posterior_predictive"}
    assert idata.posterior_predictive["obs"].dims == ("chain", "draw", "school")


def nested_plates(y=None):
    with numpyro.plate("group", 4, dim=-2), numpyro.plate("item", 3, dim=-1):
        numpyro.sample("p", dist.LogNormal(jnp.zeros(5), 1.0).to_event(1))
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    with numpyro.plate("data", 6):
        numpyro.sample("y", dist.Normal(jnp.sum(w), 1.0), obs=y)


# (init_to_median's draws trip NumPyro's own rank promotion under "raise" in these plates)
DELTA = jg.AutoDelta(nested_plates, init_loc_fn=jg.init_to_feasible)


@pytest.mark.parametrize("guide", [jg.AutoNormal(nested_plates), DELTA], ids=["normal", "delta"])
def test_event_and_unnamed_dims(guide):
    y = jnp.zeros(6)
    params = guide.init(jax.random.PRNGKey(0), y)
    idata = jg.to_arviz(guide, params, jax.random.PRNGKey(1), y, num_samples=5, posterior_predictive=True)
    assert idata.posterior["p"].dims == ("chain", "draw", "group", "item", "p_dim_2")
    assert idata.posterior["p"].shape == (1, 5, 4, 3, 5)
    assert idata.posterior["w"].dims == ("chain", "draw", "w_dim_0")
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "data")


def test_autodelta_draws_are_the_point():
    guide = jg.AutoDelta(eight_schools)
    params = guide.init(jax.random.PRNGKey(0), SIGMA, y=Y)
    idata = jg.to_arviz(guide, params, jax.random.PRNGKey(1), SIGMA, y=Y, num_samples=20)
    summary = az.summary(idata, var_names=["mu", "tau"], kind="stats", round_to="none")
    median = guide.median(params)
    assert summary.loc["mu", "sd"] == 0.0 and summary.loc["tau", "sd"] == pytest.approx(0.0, abs=1e-6)
    assert summary.loc["tau", "mean"] == pytest.approx(float(median["tau"]), rel=1e-6)


N, B = 200, 20


def subsampled(x, y):
    a = numpyro.sample("a", dist.Normal(0.0, 5.0))
    with numpyro.plate("data", N, subsample_size=B):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        xb = numpyro.subsample(x, event_dim=0)
        yb = numpyro.subsample(y, event_dim=0)
        numpyro.deterministic("mean", a * xb + z)
        numpyro.sample("obs", dist.Normal(a * xb + z, 1.0), obs=yb)


def test_subsampled_plate_at_full_size():
    x = jnp.linspace(-1.0, 1.0, N)
    y = 2.0 * x
    guide = jg.AutoNormal(subsampled)
    params = guide.init(jax.random.PRNGKey(0), x, y)
    idata = jg.to_arviz(guide, params, jax.random.PRNGKey(1), x, y, num_samples=30, posterior_predictive=True)
    for var in (idata.posterior["z"], idata.posterior["mean"], idata.posterior_predictive["obs"]):
        assert var.dims == ("chain", "draw", "data") and var.shape == (1, 30, N)
    np.testing.assert_array_equal(idata.observed_data["obs"].values, np.asarray(y))
    post = idata.posterior
    expected = post["a"].values[..., None] * np.asarray(x) + post["z"].values
    np.testing.assert_allclose(post["mean"].values, expected, rtol=1e-5, atol=1e-5)


def test_dims_and_coords_overrides(fitted):
    guide, params = fitted
    idata = jg.to_arviz(
        guide,
        params,
        jax.random.PRNGKey(4),
        SIGMA,
        y=Y,
        num_samples=5,
        dims={"theta": ["county"]},
        coords={"county": list(range(10, 18))},
    )
    assert idata.posterior["theta"].dims == ("chain", "draw", "county")
    assert list(idata.posterior["county"].values) == list(range(10, 18))


def test_missing_arviz_is_a_clear_error(fitted, monkeypatch):
    guide, params = fitted
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match=r"jaxguides\[arviz\]"):
        jg.to_arviz(guide, params, jax.random.PRNGKey(0), num_samples=5)


def test_arviz_1_gets_a_datatree(fitted, monkeypatch):
    # ArviZ 1.x (Python >= 3.12) reads xarray DataTrees; pretend it is installed
    guide, params = fitted
    fake = type(sys)("arviz")
    fake.__version__ = "1.3.0"
    monkeypatch.setitem(sys.modules, "arviz", fake)
    tree = jg.to_arviz(guide, params, jax.random.PRNGKey(0), SIGMA, y=Y, num_samples=5, posterior_predictive=True)
    assert isinstance(tree, xr.DataTree)
    assert set(tree.children) == {"posterior", "posterior_predictive", "observed_data"}
    assert tree["posterior"]["theta"].dims == ("chain", "draw", "school")


def test_params_of_another_model_are_refused(fitted):
    _, params = fitted
    other = jg.AutoNormal(nested_plates)
    with pytest.raises(jg.ParamsMismatchError):
        jg.to_arviz(other, params, jax.random.PRNGKey(0), num_samples=5)


def test_reuses_params_from_a_replaced_loc(fitted):
    # a params pytree edited by hand (e.g. loaded) is used as is
    guide, params = fitted
    moved = dataclasses.replace(params, loc={**params.loc, "mu": jnp.asarray(100.0)})
    idata = jg.to_arviz(guide, moved, jax.random.PRNGKey(5), num_samples=200)
    assert float(idata.posterior["mu"].mean()) == pytest.approx(100.0, abs=1.0)
