"""AutoNormal and AutoDelta as pure functions: purity, jit/vmap/pickle, shapes,
supports, deterministic sites, init strategies and ``get_posterior``."""

from __future__ import annotations

import dataclasses
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.distributions.transforms import biject_to

import jaxguides as jg
from helpers.models import MODELS, SUBSAMPLE, SUBSAMPLE_ROWS, cases

GUIDES = [jg.AutoNormal, jg.AutoDelta]


def mixed(n=3):
    """Several supports, all of whose NumPyro code is rank-promotion clean."""
    numpyro.sample("loc", dist.Normal(0.0, 1.0))
    numpyro.sample("scale", dist.LogNormal(0.0, 1.0))
    numpyro.sample("p", dist.Beta(2.0, 2.0))
    numpyro.sample("u", dist.Uniform(-1.0, 2.0))
    numpyro.sample("corr", dist.LKJCholesky(3, 2.0))
    numpyro.sample("zs", dist.ZeroSumNormal(1.0, event_shape=(4,)))
    with numpyro.plate("groups", n):
        numpyro.sample("theta", dist.Normal(0.0, 1.0))


def perturbed(guide, key=0, *args):
    params = guide.init(jax.random.PRNGKey(key), *args)
    leaves, treedef = jax.tree.flatten(params.loc)
    keys = jax.random.split(jax.random.PRNGKey(key + 100), len(leaves))
    loc = jax.tree.unflatten(treedef, [x + 0.5 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    return dataclasses.replace(params, loc=loc)


def assert_trees_close(a, b, rtol=1e-6, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def in_support(params, values, batch_ndim=0):
    for site in params.sites.latents:
        support = site.support.build(params.support[site.name])
        value = values[site.name]
        assert value.shape[batch_ndim:] == site.shape, site.name
        assert np.all(np.asarray(support(value))), site.name
    return True


# ---- purity: params are all a guide function needs ----------------------------------------
@pytest.mark.parametrize("guide_cls", GUIDES)
def test_second_guide_with_same_arguments_uses_first_guides_params(guide_cls):
    g1, g2 = guide_cls(mixed), guide_cls(mixed)
    assert g1 is not g2 and g1 == g2 and hash(g1) == hash(g2)
    params = perturbed(g1)
    key = jax.random.PRNGKey(3)
    assert_trees_close(g2.median(params), g1.median(params))
    assert_trees_close(g2.sample(params, key, sample_shape=(2,)), g1.sample(params, key, sample_shape=(2,)))
    values = g1.median(params)
    np.testing.assert_allclose(g2.log_prob(params, values), g1.log_prob(params, values), rtol=1e-6)
    loss = jg.elbo_loss(mixed, g2)(params, key)
    np.testing.assert_allclose(loss, jg.elbo_loss(mixed, g1)(params, key), rtol=1e-6)
    assert np.isfinite(loss)


@pytest.mark.parametrize("guide_cls", GUIDES)
def test_guide_is_a_static_jit_argument_and_equal_guides_share_the_cache(guide_cls):
    traces = 0

    def median(guide, params):
        nonlocal traces
        traces += 1
        return guide.median(params)

    jitted = jax.jit(median, static_argnums=0)
    params = perturbed(guide_cls(mixed))
    out1 = jitted(guide_cls(mixed), params)
    out2 = jitted(guide_cls(mixed), perturbed(guide_cls(mixed), key=5))  # new, equal guide; new params
    assert traces == 1
    assert_trees_close(out1, guide_cls(mixed).median(params))
    assert not np.allclose(out1["loc"], out2["loc"])


@pytest.mark.parametrize("guide_cls", GUIDES)
def test_jit_sample_traces_once_for_new_keys_and_params(guide_cls):
    guide = guide_cls(mixed)
    traces = 0

    def sample(params, key):
        nonlocal traces
        traces += 1
        return guide.sample(params, key, sample_shape=(4,))

    jitted = jax.jit(sample)
    outs = [jitted(perturbed(guide, key=i), jax.random.PRNGKey(10 + i)) for i in range(3)]
    assert traces == 1
    params = perturbed(guide, key=2)
    assert_trees_close(outs[2], guide.sample(params, jax.random.PRNGKey(12), sample_shape=(4,)), rtol=1e-5, atol=1e-5)
    assert not np.allclose(outs[0]["loc"], outs[1]["loc"])


@pytest.mark.parametrize("guide_cls", GUIDES)
def test_params_survive_pickle_and_a_file_round_trip(guide_cls, tmp_path):
    guide = guide_cls(mixed)
    params = perturbed(guide)
    again = pickle.loads(pickle.dumps(params))
    assert jax.tree.structure(again) == jax.tree.structure(params)
    assert_trees_close(again, params, rtol=0, atol=0)
    path = tmp_path / "params.pkl"
    path.write_bytes(pickle.dumps(jax.device_get(params)))
    loaded = pickle.loads(path.read_bytes())
    assert_trees_close(guide_cls(mixed).median(loaded), guide.median(params), rtol=0, atol=0)


@pytest.mark.parametrize("guide_cls", GUIDES)
def test_params_pass_through_jit_and_grad(guide_cls):
    guide = guide_cls(mixed)
    params = perturbed(guide)
    same = jax.jit(lambda p: p)(params)
    assert type(same) is type(params) and same.sites == params.sites
    assert_trees_close(same, params, rtol=0, atol=0)
    values = guide.sample(params, jax.random.PRNGKey(0))
    grads = jax.jit(jax.grad(lambda p: jg.elbo_loss(mixed, guide)(p, jax.random.PRNGKey(1))))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads.loc))
    if guide_cls is jg.AutoNormal:
        lp = jax.jit(guide.log_prob)(params, values)
        np.testing.assert_allclose(lp, guide.log_prob(params, values), rtol=1e-5)


@pytest.mark.parametrize("guide_cls", GUIDES)
def test_vmap_init_over_keys(guide_cls):
    guide = guide_cls(mixed, init_loc_fn=jg.init_to_uniform)
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    batched = jax.vmap(guide.init)(keys)
    single = guide.init(keys[2])
    assert batched.sites == single.sites
    for site in single.sites.latents:
        assert batched.loc[site.name].shape == (4,) + site.unconstrained_shape
    # each batch member is the init of its own key
    assert_trees_close(jax.tree.map(lambda x: x[2], batched.loc), single.loc, rtol=1e-6, atol=1e-6)
    assert not np.allclose(batched.loc["loc"][0], batched.loc["loc"][1])
    medians = jax.vmap(guide.median)(batched)
    assert medians["corr"].shape == (4, 3, 3)


# ---- shapes and supports -----------------------------------------------------------------------
@pytest.mark.parametrize("sample_shape", [(), (5,), (2, 3)])
@pytest.mark.parametrize("guide_cls", GUIDES)
def test_sample_shapes_and_support(guide_cls, sample_shape):
    guide = guide_cls(mixed)
    params = perturbed(guide)
    samples = guide.sample(params, jax.random.PRNGKey(1), sample_shape=sample_shape)
    assert set(samples) == set(params.sites.names)
    in_support(params, samples, batch_ndim=len(sample_shape))


@pytest.mark.parametrize("case", cases())
def test_every_support_samples_inside_it(case):
    guide = jg.AutoNormal(case.model, init_scale=1.0, create_plates=case.create_plates)
    params = perturbed(guide, 0, *case.args)
    # wide scale (1.0): draws reach far into unconstrained space
    in_support(params, guide.sample(params, jax.random.PRNGKey(1), sample_shape=(4,)), batch_ndim=1)
    in_support(params, guide.median(params))
    in_support(params, guide.quantiles(params, [0.01, 0.2, 0.7, 0.99]), batch_ndim=1)


def test_autonormal_samples_have_loc_and_scale_in_unconstrained_space():
    guide = jg.AutoNormal(mixed)
    params = perturbed(guide)
    params = dataclasses.replace(params, raw_scale=jax.tree.map(lambda x: x + 1.0, params.raw_scale))
    samples = guide.sample(params, jax.random.PRNGKey(2), sample_shape=(5000,))
    for name in ["loc", "scale", "p", "theta"]:
        site = params.sites[name]
        u = np.asarray(biject_to(site.support.build(params.support[name])).inv(samples[name]))
        loc, scale = np.asarray(params.loc[name]), np.asarray(params.scale[name])
        np.testing.assert_allclose(u.mean(0), loc, atol=5 * scale.max() / np.sqrt(5000))
        np.testing.assert_allclose(u.std(0), scale, rtol=0.05)
    # softplus(raw_scale), as NumPyro's softplus_positive constraint
    np.testing.assert_allclose(params.scale["loc"], np.log1p(np.exp(params.raw_scale["loc"])), rtol=1e-6)


def test_autodelta_is_a_point_mass():
    guide = jg.AutoDelta(mixed)
    params = perturbed(guide)
    point = guide.median(params)
    samples = guide.sample(params, jax.random.PRNGKey(0), sample_shape=(3, 2))
    for name, value in point.items():
        np.testing.assert_array_equal(samples[name], np.broadcast_to(value, (3, 2) + value.shape))
    assert guide.log_prob(params, point) == 0.0
    moved = {**point, "scale": point["scale"] * 1.5}
    assert guide.log_prob(params, moved) == -np.inf
    # the point lies in the support, and moves with params
    in_support(params, point)
    assert not np.allclose(guide.median(perturbed(guide, key=4))["scale"], point["scale"])


def test_autonormal_log_prob_is_the_change_of_variables_density():
    # log q(z) = log N(u; loc, scale) - log|dz/du| for z = exp(u), hand-derived
    def model():
        numpyro.sample("z", dist.LogNormal(0.0, 1.0))

    guide = jg.AutoNormal(model)
    params = perturbed(guide)
    loc, scale = float(params.loc["z"]), float(params.scale["z"])
    z = 1.7
    u = np.log(z)
    expected = -0.5 * ((u - loc) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi) - u
    np.testing.assert_allclose(guide.log_prob(params, {"z": z}), expected, rtol=1e-5)


@pytest.mark.allow_rank_promotion  # NumPyro's StickBreakingTransform on a batch of rows
def test_log_prob_of_subsample_values_is_scaled_and_uses_the_create_plates_rows():
    case = MODELS["subsampled"]
    guide = jg.AutoNormal(case.model, create_plates=case.create_plates)
    params = perturbed(guide, 0, *case.args)
    full = guide.sample(params, jax.random.PRNGKey(1))
    rows = np.asarray(SUBSAMPLE_ROWS)
    sub = {"mu": full["mu"], "z": full["z"][rows], "w": full["w"][rows]}
    post = guide.get_posterior(params)
    per_row = {n: np.asarray(post[n].log_prob(full[n])) for n in ["z", "w"]}
    expected = float(post["mu"].log_prob(full["mu"])) + (10 / SUBSAMPLE) * sum(per_row[n][rows].sum() for n in per_row)
    np.testing.assert_allclose(guide.log_prob(params, sub, *case.args), expected, rtol=1e-5)


# ---- deterministic sites -------------------------------------------------------------------------
def with_deterministic(x):
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.deterministic("pred", a * x)


def subsampled_deterministic(x):
    with numpyro.plate("data", 6, subsample_size=2) as idx:
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.deterministic("zx", z * x[idx])


@pytest.mark.parametrize("guide_cls", GUIDES)
def test_deterministic_sites_follow_the_args_of_each_call(guide_cls):
    x = jnp.array([1.0, 2.0, 3.0])
    guide = guide_cls(with_deterministic)
    params = perturbed(guide, 0, x)
    x2 = jnp.array([-1.0, 0.5, 4.0])
    for args in [(x,), (x2,)]:
        samples = guide.sample(params, jax.random.PRNGKey(0), *args, sample_shape=(5,))
        assert samples["pred"].shape == (5, 3)
        np.testing.assert_allclose(samples["pred"], samples["a"][:, None] * args[0][None, :], rtol=1e-6)
        median = guide.median(params, *args)
        np.testing.assert_allclose(median["pred"], median["a"] * args[0], rtol=1e-6)
    # without args the model cannot be run: latent sites only
    assert set(guide.sample(params, jax.random.PRNGKey(0))) == {"a"}
    assert set(guide.median(params)) == {"a"}
    if guide_cls is jg.AutoNormal:
        q = guide.quantiles(params, [0.2, 0.8], x2)
        np.testing.assert_allclose(q["pred"], q["a"][:, None] * x2[None, :], rtol=1e-6)


@pytest.mark.parametrize("guide_cls", GUIDES)
def test_deterministic_sites_in_a_subsampled_plate_are_full_size(guide_cls):
    x = jnp.arange(6.0) + 1.0
    guide = guide_cls(subsampled_deterministic)
    params = perturbed(guide, 0, x)
    samples = guide.sample(params, jax.random.PRNGKey(0), x, sample_shape=(2,))
    assert samples["z"].shape == samples["zx"].shape == (2, 6)
    np.testing.assert_allclose(samples["zx"], samples["z"] * x[None, :], rtol=1e-6)


# ---- init strategies -------------------------------------------------------------------------------
def narrow():
    numpyro.sample("a", dist.Normal(3.0, 1e-3))
    numpyro.sample("b", dist.LogNormal(1.0, 1e-3))
    numpyro.sample("c", dist.Gamma(2.0, 4.0))


def test_defaults_follow_the_api():
    # API.md: AutoNormal defaults to init_to_feasible (NumPyro's to init_to_uniform;
    # API.md wins), AutoDelta to init_to_median, init_scale to 0.1.
    assert jg.AutoNormal(mixed).init_loc_fn is jg.init_to_feasible
    assert jg.AutoNormal(mixed).init_scale == 0.1
    assert jg.AutoDelta(mixed).init_loc_fn is jg.init_to_median


@pytest.mark.parametrize("guide_cls", GUIDES)
def test_init_to_feasible_is_zero_in_unconstrained_space(guide_cls):
    guide = guide_cls(mixed, init_loc_fn=jg.init_to_feasible)
    params = guide.init(jax.random.PRNGKey(0))
    for v in params.loc.values():
        np.testing.assert_array_equal(v, 0.0)
    median = guide.median(params)
    np.testing.assert_allclose(median["scale"], 1.0)
    np.testing.assert_allclose(median["p"], 0.5)
    np.testing.assert_allclose(median["u"], 0.5)  # midpoint of (-1, 2)
    np.testing.assert_allclose(median["corr"], np.eye(3), atol=1e-6)
    np.testing.assert_allclose(median["zs"], 0.0, atol=1e-6)


@pytest.mark.parametrize("guide_cls", GUIDES)
def test_init_to_median_mean_and_sample(guide_cls):
    for strategy in [jg.init_to_median, jg.init_to_sample]:
        params = guide_cls(narrow, init_loc_fn=strategy).init(jax.random.PRNGKey(0))
        median = guide_cls(narrow).median(params)
        np.testing.assert_allclose(median["a"], 3.0, atol=1e-2)
        np.testing.assert_allclose(median["b"], np.e, rtol=1e-2)
    params = guide_cls(narrow, init_loc_fn=jg.init_to_mean).init(jax.random.PRNGKey(0))
    median = guide_cls(narrow).median(params)
    np.testing.assert_allclose(median["a"], 3.0, rtol=1e-6)
    np.testing.assert_allclose(median["c"], 0.5, rtol=1e-6)  # Gamma(2, 4) has mean 1/2
    # random strategies depend on the key
    g = guide_cls(narrow, init_loc_fn=jg.init_to_sample)
    assert g.init(jax.random.PRNGKey(0)).loc["c"] != g.init(jax.random.PRNGKey(1)).loc["c"]


@pytest.mark.parametrize("guide_cls", GUIDES)
def test_init_to_uniform_lies_within_its_radius(guide_cls):
    for radius in [2.0, 0.5]:
        guide = guide_cls(mixed, init_loc_fn=jg.init_to_uniform(radius=radius))
        locs = [guide.init(jax.random.PRNGKey(i)).loc for i in range(2)]
        for loc in locs:
            for v in loc.values():
                assert np.all(np.abs(np.asarray(v)) <= radius)
        assert not np.allclose(locs[0]["theta"], locs[1]["theta"])


@pytest.mark.parametrize("guide_cls", GUIDES)
def test_init_to_value_is_recovered_by_median(guide_cls):
    values = {
        "loc": jnp.array(-0.7),
        "scale": jnp.array(2.5),
        "p": jnp.array(0.2),
        "u": jnp.array(1.5),
        "corr": jnp.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.6, 0.8]]),
        "zs": jnp.array([1.0, -2.0, 0.5, 0.5]),
        "theta": jnp.array([0.1, 0.2, 0.3]),
    }
    guide = guide_cls(mixed, init_loc_fn=jg.init_to_value(values=values))
    median = guide.median(guide.init(jax.random.PRNGKey(0)))
    for name, value in values.items():
        np.testing.assert_allclose(median[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    # sites without a value fall back to init_to_uniform, as in NumPyro
    partial = guide_cls(mixed, init_loc_fn=jg.init_to_value(values={"loc": 0.3})).init(jax.random.PRNGKey(0))
    np.testing.assert_allclose(partial.loc["loc"], 0.3, rtol=1e-6)
    assert np.all(np.abs(np.asarray(partial.loc["theta"])) <= 2.0)


def test_init_scale_is_reflected_in_params():
    for init_scale in [0.37, 2, np.float32(0.5)]:
        params = jg.AutoNormal(mixed, init_scale=init_scale).init(jax.random.PRNGKey(0))
        for site in params.sites.latents:
            scale = params.scale[site.name]
            assert scale.shape == site.unconstrained_shape
            np.testing.assert_allclose(scale, init_scale, rtol=1e-6)


@pytest.mark.parametrize("guide_cls", GUIDES)
@pytest.mark.allow_rank_promotion  # NumPyro's StickBreakingTransform on a batch of rows
def test_init_of_a_subsampled_site_is_repeated_to_full_size(guide_cls):
    # The model sees 4 of 10 rows while traced; the init of those 4 rows is
    # repeated to 10 rows by numpyro.distributions.util.periodic_repeat, which
    # (despite its name, and unlike Pyro's) repeats each row in turn with
    # jnp.repeat -- rows 0,0,0,1,1,1,2,2,2,3 -- and we follow NumPyro.
    case = MODELS["subsampled"]
    z4 = jnp.array([0.5, 1.0, 2.0, 4.0])
    w4 = jnp.array([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2], [1 / 3, 1 / 3, 1 / 3]])
    values = {"mu": jnp.array(0.1), "z": z4, "w": w4}
    guide = guide_cls(case.model, init_loc_fn=jg.init_to_value(values=values), create_plates=case.create_plates)
    median = guide.median(guide.init(jax.random.PRNGKey(0), *case.args))
    rows = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
    np.testing.assert_allclose(median["z"], np.asarray(z4)[rows], rtol=1e-5)
    np.testing.assert_allclose(median["w"], np.asarray(w4)[rows], rtol=1e-5, atol=1e-6)
    # a subsampled plate on dim -2 with an inner plate and an event dim
    case = MODELS["subsampled_nested"]
    v4 = jnp.arange(24.0).reshape(4, 2, 3)
    guide = guide_cls(case.model, init_loc_fn=jg.init_to_value(values={"v": v4}), create_plates=case.create_plates)
    median = guide.median(guide.init(jax.random.PRNGKey(0), *case.args))
    np.testing.assert_allclose(median["v"], np.asarray(v4)[rows], rtol=1e-6)


# ---- get_posterior --------------------------------------------------------------------------------
def test_get_posterior_matches_the_guide():
    guide = jg.AutoNormal(mixed)
    params = perturbed(guide)
    posterior = guide.get_posterior(params)
    assert set(posterior) == set(params.sites.names)
    values = guide.sample(params, jax.random.PRNGKey(0))
    median = guide.median(params)
    total = 0.0
    for site in params.sites.latents:
        d = posterior[site.name]
        assert isinstance(d, dist.Distribution)
        assert d.batch_shape + d.event_shape == site.shape
        total = total + jnp.sum(d.log_prob(values[site.name]))
    np.testing.assert_allclose(total, guide.log_prob(params, values), rtol=1e-5)
    # a real site is a plain Normal with the guide's loc and scale
    np.testing.assert_allclose(posterior["loc"].mean, params.loc["loc"], rtol=1e-6)
    np.testing.assert_allclose(posterior["theta"].mean, median["theta"], rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(posterior["theta"].variance), params.scale["theta"], rtol=1e-6)
    # a constrained site: its sample median is the guide's median (monotone bijection)
    draws = posterior["scale"].sample(jax.random.PRNGKey(1), (4000,))
    np.testing.assert_allclose(np.median(draws), median["scale"], rtol=0.02)
    with jax.numpy_rank_promotion("allow"):  # NumPyro's Normal.sample((10,)) on a vector loc
        draws = posterior["corr"].sample(jax.random.PRNGKey(1), (10,))
    assert draws.shape == (10, 3, 3)
    assert np.all(np.asarray(params.sites["corr"].support.build(())(draws)))


# ---- numerical extremes (float32) --------------------------------------------------------------------
KEY = jax.random.PRNGKey(0)


def _finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


def mixed_supports(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    s = numpyro.sample("s", dist.LogNormal(0.0, 1.0))
    p = numpyro.sample("p", dist.Beta(2.0, 2.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu + p, s), obs=y)


def real_only(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


Y = jnp.array([0.3, 1.2, -0.5, 0.8, 0.1, 0.7])


def test_tiny_init_scale():
    guide = jg.AutoNormal(mixed_supports, init_scale=1e-6)
    params = guide.init(KEY, Y)
    for scale in params.scale.values():
        np.testing.assert_allclose(scale, 1e-6, rtol=1e-3)
    draws = guide.sample(params, KEY, Y, sample_shape=(50,))
    median = guide.median(params)
    for name in median:  # draws within a few scales of the median, in constrained space
        assert np.max(np.abs(draws[name] - median[name])) < 1e-4
    lp = guide.log_prob(params, {n: v[0] for n, v in draws.items()}, Y)
    assert np.isfinite(lp) and lp > 30.0  # three sites with density ~1e6 each
    result = jg.fit(mixed_supports, guide, optax.adam(0.05), KEY, 300, Y, progress_bar=False)
    assert np.all(np.isfinite(result.losses)) and _finite(result.params)
    assert np.mean(result.losses[-30:]) < np.mean(result.losses[:30])
    assert all(float(s) > 1e-3 for s in result.params.scale.values())  # the scales grew out of it


def test_huge_init_scale():
    # a real site: every draw is finite, and the fit shrinks the scale
    guide = jg.AutoNormal(real_only, init_scale=1e3)
    result = jg.fit(real_only, guide, optax.adam(5.0), KEY, 300, Y, progress_bar=False)
    assert np.all(np.isfinite(result.losses)) and _finite(result.params)
    assert float(result.params.scale["mu"]) < 500.0
    # positive and unit-interval sites: exp / sigmoid of draws of scale 1000 overflow or
    # saturate, the loss is not finite, and fit stops cleanly with finite params ...
    guide = jg.AutoNormal(mixed_supports, init_scale=1e3)
    with pytest.raises(jg.NonFiniteLossError) as info:
        jg.fit(mixed_supports, guide, optax.adam(0.05), KEY, 300, Y, progress_bar=False)
    err = info.value
    assert 0 <= err.step < 300 and f"step {err.step}" in str(err)
    assert _finite(err.params) and _finite(err.state) and np.all(np.isfinite(err.losses))
    assert len(err.losses) == err.step
    # ... or, told to skip, never writes a non-finite param
    result = jg.fit(mixed_supports, guide, optax.adam(0.05), KEY, 300, Y, progress_bar=False, on_nonfinite="skip")
    assert result.num_skipped > 0 and _finite(result.params)


def edge(y):
    p = numpyro.sample("p", dist.Beta(0.01, 0.01))  # mass at 0 and 1
    g = numpyro.sample("g", dist.Gamma(0.5, 1e-6))  # mean 5e5, density infinite at 0
    numpyro.sample("y", dist.Bernoulli(p), obs=y)
    numpyro.sample("n", dist.Poisson(g * 1e-5), obs=y.sum())


@pytest.mark.parametrize("guide_cls", [jg.AutoNormal, jg.AutoDelta])
def test_prior_mass_at_the_edge_of_the_support(guide_cls):
    guide = guide_cls(edge)
    yb = jnp.array([1.0, 1.0, 1.0, 0.0])
    try:
        result = jg.fit(edge, guide, optax.adam(0.1), KEY, 1500, yb, progress_bar=False)
        params, losses = result.params, result.losses
    except jg.NonFiniteLossError as err:  # stopping cleanly is fine too
        params, losses = err.params, err.losses
        assert len(losses) == err.step
    assert np.all(np.isfinite(losses)) and _finite(params)
    median = guide.median(params)
    assert 0.0 < float(median["p"]) < 1.0 and float(median["g"]) > 0.0  # strictly inside the support
    assert np.isfinite(jg.elbo_loss(edge, guide)(params, KEY, yb))
