"""The model's own ``numpyro.param`` sites, ``numpyro.module`` networks and
``numpyro.mutable`` state: trained (or carried) with the guide as NumPyro's SVI
does, checked against NumPyro on the same params and against closed forms."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.contrib.module import flax_module
from numpyro.distributions import constraints
from numpyro.infer import SVI, Trace_ELBO, autoguide
from numpyro.optim import optax_to_numpyro

import jaxguides as jg
from jaxguides.optim.trained import trained_part

pytestmark = pytest.mark.allow_rank_promotion  # flax and NumPyro's Categorical broadcast implicitly

Y = 2.0 + 3.0 * jax.random.normal(jax.random.PRNGKey(0), (200,))


def noise_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    noise = numpyro.param("noise", 1.0, constraint=constraints.positive)
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, noise), obs=y)


def simplex_model(counts):
    numpyro.sample("z", dist.Normal(0.0, 1.0))
    probs = numpyro.param("probs", jnp.ones(4) / 4, constraint=constraints.simplex)
    numpyro.sample("obs", dist.Multinomial(total_count=counts.sum(), probs=probs), obs=counts)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.tanh(nn.Dense(8)(x)))[..., 0]


X = jax.random.normal(jax.random.PRNGKey(1), (64, 3))
Y_NET = jnp.sin(X[:, 0]) + 0.5 * X[:, 1]


def net_model(x, y):
    net = flax_module("net", MLP(), input_shape=(1, 3))
    sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(net(x), sigma), obs=y)


class BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=True):
        return nn.Dense(1)(nn.BatchNorm(use_running_average=not train)(x))[..., 0]


def batchnorm_model(x, y):
    net = flax_module("net", BNNet(), input_shape=(1, 3), mutable=["batch_stats"])
    sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(net(x), sigma), obs=y)


# ---- closed forms -------------------------------------------------------------------
def test_point_estimated_noise_reaches_the_maximum_likelihood_value():
    guide = jg.AutoDelta(noise_model)
    result = jg.fit(noise_model, guide, optax.adam(0.05), jax.random.PRNGKey(2), 3000, Y, progress_bar=False)
    y = np.asarray(Y, np.float64)
    mu, var = 0.0, 1.0  # the joint MAP: mu = sum(y) / (n + var / 10^2), var = mean((y - mu)^2)
    for _ in range(100):
        mu = y.sum() / (len(y) + var / 100.0)
        var = np.mean((y - mu) ** 2)
    np.testing.assert_allclose(result.params.model_param_values["noise"], np.sqrt(var), rtol=2e-3)
    np.testing.assert_allclose(guide.median(result.params)["mu"], mu, rtol=2e-3)
    assert jg.to_numpyro_params(guide, result.params)["noise"] == result.params.model_param_values["noise"]


def test_simplex_param_reaches_counts_over_total():
    counts = jnp.array([10.0, 30.0, 20.0, 40.0])
    guide = jg.AutoNormal(simplex_model)
    result = jg.fit(simplex_model, guide, optax.adam(0.05), jax.random.PRNGKey(3), 2000, counts, progress_bar=False)
    np.testing.assert_allclose(result.params.model_param_values["probs"], counts / counts.sum(), atol=5e-3)


# ---- against NumPyro ------------------------------------------------------------------
def _numpyro_svi(model, guide, optimizer, *args):
    svi = SVI(model, guide, optax_to_numpyro(optimizer), Trace_ELBO())
    return svi, svi.init(jax.random.PRNGKey(0), *args)


def test_map_trajectory_matches_numpyro_svi():
    """AutoDelta's ELBO draws nothing, so the whole Adam trajectory is deterministic
    and must follow NumPyro's SVI step for step from the same init."""
    svi, state = _numpyro_svi(noise_model, autoguide.AutoDelta(noise_model), optax.adam(0.05), Y)
    state, _ = jax.lax.scan(lambda s, _: svi.update(s, Y), state, length=300)
    theirs = svi.get_params(state)
    guide = jg.AutoDelta(noise_model)
    result = jg.fit(noise_model, guide, optax.adam(0.05), jax.random.PRNGKey(0), 300, Y, progress_bar=False)
    ours = jg.to_numpyro_params(guide, result.params)
    assert set(ours) == set(theirs) == {"mu_auto_loc", "noise"}
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-4, err_msg=name)


GUIDES = {"AutoNormal": (jg.AutoNormal, autoguide.AutoNormal), "AutoDelta": (jg.AutoDelta, autoguide.AutoDelta)}


@pytest.mark.parametrize("kind", ["AutoNormal", "AutoDelta"])
def test_network_loss_and_gradient_match_numpyro_on_the_same_params(kind):
    """NumPyro's initial params (network weights included) read into ours give
    NumPyro's loss and NumPyro's gradient for the network's weights (AutoDelta:
    exactly, it draws nothing; AutoNormal: in expectation over many particles)."""
    ours_cls, theirs_cls = GUIDES[kind]
    ng = theirs_cls(net_model)
    svi, state = _numpyro_svi(net_model, ng, optax.sgd(0.1), X, Y_NET)
    numpyro_params = svi.get_params(state)
    guide = ours_cls(net_model)
    params = jg.from_numpyro_params(guide, numpyro_params, jax.random.PRNGKey(5), X, Y_NET)
    weights = numpyro_params["net$params"]
    assert jax.tree.structure(params.model_params["net$params"]) == jax.tree.structure(weights)
    n = 1 if kind == "AutoDelta" else 2000
    key = jax.random.PRNGKey(7)

    def ours(p):
        return jg.elbo_loss(net_model, guide, num_particles=n)(p, key, X, Y_NET)

    def theirs(w):
        return Trace_ELBO(num_particles=n).loss(key, {**numpyro_params, "net$params": w}, net_model, ng, X, Y_NET)

    rtol, atol = (1e-5, 1e-5) if kind == "AutoDelta" else (2e-2, 5e-3)
    np.testing.assert_allclose(ours(params), theirs(weights), rtol=rtol)
    ours_grad = jax.grad(ours)(params).model_params["net$params"]
    their_grad = jax.grad(theirs)(weights)
    for a, b in zip(jax.tree.leaves(ours_grad), jax.tree.leaves(their_grad)):
        np.testing.assert_allclose(a, b, rtol=rtol * 10, atol=atol)


def test_network_weights_are_learned():
    guide = jg.AutoNormal(net_model)
    params = guide.init(jax.random.PRNGKey(0), X, Y_NET)
    result = jg.fit(net_model, guide, optax.adam(0.02), jax.random.PRNGKey(1), 1500, X, Y_NET, progress_bar=False)
    before = jax.tree.leaves(params.model_params["net$params"])
    after = jax.tree.leaves(result.params.model_params["net$params"])
    assert all(not np.allclose(a, b) for a, b in zip(before, after))
    # a fitted network explains the data: the noise scale falls far below the data's spread
    assert float(guide.median(result.params)["sigma"]) < 0.3 * float(jnp.std(Y_NET))
    # NumPyro's SVI with the same optimizer and steps reaches the same loss level
    svi, state = _numpyro_svi(net_model, autoguide.AutoNormal(net_model), optax.adam(0.02), X, Y_NET)
    state, losses = jax.lax.scan(lambda s, _: svi.update(s, X, Y_NET), state, length=1500)
    np.testing.assert_allclose(result.losses[-200:].mean(), np.asarray(losses[-200:]).mean(), atol=15.0)


def test_mutable_batchnorm_statistics_are_carried_as_numpyro_does():
    guide = jg.AutoDelta(batchnorm_model)
    opt = optax.sgd(0.01)
    svi, state = _numpyro_svi(batchnorm_model, autoguide.AutoDelta(batchnorm_model), opt, X, Y_NET)
    params = jg.from_numpyro_params(guide, svi.get_params(state), jax.random.PRNGKey(0), X, Y_NET)
    assert set(params.model_state) == {"net$state"}
    algo = jg.svi(batchnorm_model, guide, opt)
    ours = algo.init(jax.random.PRNGKey(0), X, Y_NET)
    ours = ours._replace(params=params, opt_state=opt.init(trained_part(params)[0]))
    for _ in range(3):
        state, _ = svi.update(state, X, Y_NET)
        ours, _ = algo.step(ours, X, Y_NET)
    theirs = state.mutable_state["net$state"]["batch_stats"]
    got = ours.params.model_state["net$state"]["batch_stats"]
    init = params.model_state["net$state"]["batch_stats"]
    assert not np.allclose(jax.tree.leaves(got)[0], jax.tree.leaves(init)[0])  # it moved
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        jg.to_numpyro_params(guide, ours.params)["net$params"]["Dense_0"]["kernel"],
        svi.get_params(state)["net$params"]["Dense_0"]["kernel"],
        rtol=1e-5,
        atol=1e-6,
    )


def test_mutable_state_goes_through_fit():
    guide = jg.AutoDelta(batchnorm_model)
    init = guide.init(jax.random.PRNGKey(0), X, Y_NET)
    result = jg.fit(batchnorm_model, guide, optax.adam(0.01), jax.random.PRNGKey(0), 50, X, Y_NET, progress_bar=False)
    mean = result.params.model_state["net$state"]["batch_stats"]["BatchNorm_0"]["mean"]
    # BatchNorm's running mean moves from 0 towards the batch mean with momentum 0.99 once
    # per run of the network in training mode: at init (the one trace, as NumPyro's SVI.init)
    # and at each of the 50 steps
    init_mean = init.model_state["net$state"]["batch_stats"]["BatchNorm_0"]["mean"]
    np.testing.assert_allclose(init_mean, 0.01 * np.asarray(X.mean(0)), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(mean, (1 - 0.99**51) * np.asarray(X.mean(0)), rtol=1e-4, atol=1e-6)


# ---- the params pytree and everything that carries it ---------------------------------
def test_constants_get_no_optimizer_state():
    def model(lo, hi):
        numpyro.sample("x", dist.Uniform(lo, hi))
        numpyro.param("w", jnp.ones(2), constraint=constraints.interval(lo, hi))

    lo, hi = jnp.zeros(2), 3 * jnp.ones(2)
    state = jg.svi(model, jg.AutoNormal(model), optax.adam(0.1)).init(jax.random.PRNGKey(0), lo, hi)
    mu = state.opt_state[0].mu
    assert mu.support is None and mu.model_state is None
    assert set(mu.model_params) == {"w"} and set(mu.loc) == {"x"}
    assert len(jax.tree.leaves(state.params.support)) == 4  # the bounds of both sites, as data


def test_fit_many_checkpoint_and_sparse_adam_carry_model_params(tmp_path):
    guide = jg.AutoDelta(noise_model)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    many = jg.fit_many(noise_model, guide, optax.adam(0.05), keys, 1500, Y, progress_bar=False)
    np.testing.assert_allclose(many.params.model_param_values["noise"], np.full(3, np.std(np.asarray(Y))), rtol=1e-2)

    path = tmp_path / "run.ckpt"
    whole = jg.fit(noise_model, guide, optax.adam(0.05), jax.random.PRNGKey(1), 200, Y, progress_bar=False)
    jg.fit(noise_model, guide, optax.adam(0.05), jax.random.PRNGKey(1), 100, Y, progress_bar=False, checkpoint=path)
    resumed = jg.fit(
        noise_model, guide, optax.adam(0.05), jax.random.PRNGKey(1), 200, Y, progress_bar=False, checkpoint=path
    )
    assert resumed.params.model_params["noise"] == whole.params.model_params["noise"]

    sparse = jg.fit(noise_model, guide, jg.sparse_adam(0.05), jax.random.PRNGKey(1), 200, Y, progress_bar=False)
    np.testing.assert_allclose(sparse.params.model_params["noise"], whole.params.model_params["noise"], rtol=1e-5)


def test_from_numpyro_params_round_trip_and_refusal():
    guide = jg.AutoNormal(noise_model)
    params = guide.init(jax.random.PRNGKey(0), Y)
    exported = jg.to_numpyro_params(guide, params)
    assert set(exported) == {"mu_auto_loc", "mu_auto_scale", "noise"}
    back = jg.from_numpyro_params(guide, {**exported, "noise": 2.5}, jax.random.PRNGKey(0), Y)
    np.testing.assert_allclose(back.model_param_values["noise"], 2.5, rtol=1e-6)
    with pytest.raises(jg.SiteError, match="'noise'"):
        jg.from_numpyro_params(guide, {k: v for k, v in exported.items() if k != "noise"}, jax.random.PRNGKey(0), Y)


def test_a_param_site_the_params_lack_is_refused_naming_it():
    def other(y):
        noise_model(y)
        numpyro.param("extra", 0.0)

    params = jg.AutoNormal(noise_model).init(jax.random.PRNGKey(0), Y)  # no 'extra' in these params
    with pytest.raises(jg.SiteError, match="'extra'"):
        jg.elbo_loss(other, jg.AutoNormal(noise_model))(params, jax.random.PRNGKey(0), Y)


def test_a_param_without_bijection_is_refused_at_init():
    def model():
        numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.param("k", 3, constraint=constraints.nonnegative_integer)

    with pytest.raises(jg.SiteError, match="'k'.*no bijection"):
        jg.AutoNormal(model).init(jax.random.PRNGKey(0))


def test_equinox_module_matches_numpyro_and_is_learned():
    import equinox as eqx
    from numpyro.contrib.module import eqx_module

    mlp = eqx.nn.MLP(3, "scalar", 8, 1, key=jax.random.PRNGKey(0))

    def model(x, y):
        net = eqx_module("net", mlp)
        sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(jax.vmap(net)(x), sigma), obs=y)

    ng = autoguide.AutoDelta(model)
    svi, state = _numpyro_svi(model, ng, optax.adam(0.01), X, Y_NET)
    guide = jg.AutoDelta(model)
    params = jg.from_numpyro_params(guide, svi.get_params(state), jax.random.PRNGKey(0), X, Y_NET)
    key = jax.random.PRNGKey(3)
    np.testing.assert_allclose(
        jg.elbo_loss(model, guide)(params, key, X, Y_NET),
        Trace_ELBO().loss(key, svi.get_params(state), model, ng, X, Y_NET),
        rtol=1e-5,
    )
    result = jg.fit(model, guide, optax.adam(0.01), jax.random.PRNGKey(0), 1000, X, Y_NET, progress_bar=False)
    state, losses = jax.lax.scan(lambda s, _: svi.update(s, X, Y_NET), state, length=1000)
    np.testing.assert_allclose(result.losses[-1], losses[-1], rtol=1e-3, atol=1e-2)  # both reach the same MAP
