"""The static description of a model's sites (``params.sites``) that ``guide.init`` traces.

Expected shapes are worked out from the distributions by hand: e.g. a
``Dirichlet`` over 4 categories lives on a 3-dimensional unconstrained space,
an ``LKJCholesky(3)`` factor on 3 = 3*2/2 coordinates, a 3x3 positive definite
matrix on 6 = 3*4/2.
"""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

import jaxguides as jg
from helpers.models import MODELS, N_DATA, SUBSAMPLE, Case, cases

# name -> {site: (shape, event_dim, unconstrained_shape, unconstrained_event_dim)}
EXPECTED = {
    "real": {"x": ((), 0, (), 0)},
    "positive": {"x": ((), 0, (), 0)},
    "greater_than": {"x": ((), 0, (), 0)},
    "greater_than_array": {"x": ((3,), 1, (3,), 1)},
    "less_than": {"x": ((), 0, (), 0)},
    "interval": {"x": ((), 0, (), 0)},
    "interval_array": {"x": ((3,), 1, (3,), 1)},
    "unit_interval": {"x": ((), 0, (), 0)},
    "simplex": {"x": ((4,), 1, (3,), 1)},
    "ordered_vector": {"x": ((3,), 1, (3,), 1)},
    "positive_ordered_vector": {"x": ((3,), 1, (3,), 1)},
    "corr_cholesky": {"x": ((3, 3), 2, (3,), 1)},
    "corr_matrix": {"x": ((3, 3), 2, (3,), 1)},
    "lower_cholesky": {"x": ((3, 3), 2, (6,), 1)},
    "scaled_unit_lower_cholesky": {"x": ((3, 3), 2, (6,), 1)},
    "positive_definite": {"x": ((3, 3), 2, (6,), 1)},
    "zero_sum": {"x": ((4,), 1, (3,), 1)},
    "circular": {"x": ((), 0, (), 0)},
    "softplus_positive": {"x": ((2,), 0, (2,), 0)},
    "l1_ball": {"x": ((3,), 1, (3,), 1)},
    "real_vector": {"x": ((3,), 1, (3,), 1)},
    "real_matrix": {"x": ((2, 3), 2, (2, 3), 2)},
    "independent": {"x": ((3,), 1, (3,), 1), "y": ((2, 3), 2, (2, 3), 2)},
    "vector_plate": {"mu": ((), 0, (), 0), "theta": ((3,), 0, (3,), 0), "w": ((3, 4), 1, (3, 3), 1)},
    "nested_plates": {
        "sigma": ((), 0, (), 0),
        "r": ((2, 1), 0, (2, 1), 0),
        "s": ((2, 3), 0, (2, 3), 0),
        "c": ((2, 3, 2, 2), 2, (2, 3, 1), 1),
    },
    # subsampled plates: full size (10), not the traced subsample (4)
    "subsampled": {"mu": ((), 0, (), 0), "z": ((10,), 0, (10,), 0), "w": ((10, 3), 1, (10, 2), 1)},
    "subsampled_nested": {"v": ((10, 2, 3), 1, (10, 2, 3), 1)},
}

# name -> {site: ((plate name, size, subsample size, dim), ...) outermost first}
EXPECTED_PLATES = {
    "vector_plate": {"mu": (), "theta": (("groups", 3, 3, -1),), "w": (("groups", 3, 3, -1),)},
    "nested_plates": {
        "sigma": (),
        "r": (("rows", 2, 2, -2),),
        "s": (("rows", 2, 2, -2), ("cols", 3, 3, -1)),
        "c": (("rows", 2, 2, -2), ("cols", 3, 3, -1)),
    },
    "subsampled": {"mu": (), "z": (("data", 10, 4, -1),), "w": (("data", 10, 4, -1),)},
    "subsampled_nested": {"v": (("data", 10, 4, -2), ("k", 2, 2, -1))},
}

EXPECTED_OTHER_SITES = {  # (observed, factors, deterministic)
    "vector_plate": (("y",), (), ("shift",)),
    "nested_plates": (("y",), ("penalty",), ()),
    "subsampled": (("x",), (), ()),
    "subsampled_nested": (("x",), (), ()),
}


def init(case, guide_cls=jg.AutoNormal, key=0, **options):
    guide = guide_cls(case.model, create_plates=case.create_plates, **options)
    return guide, guide.init(jax.random.PRNGKey(key), *case.args)


def test_expected_tables_cover_every_model():
    assert set(EXPECTED) == set(MODELS)


@pytest.mark.parametrize("case", cases())
def test_latent_shapes_and_event_dims(case):
    _, params = init(case)
    sites = params.sites
    expected = EXPECTED[case.name]
    assert sites.names == tuple(expected)  # in the order the model samples them
    for name, (shape, event_dim, u_shape, u_event_dim) in expected.items():
        site = sites[name]
        assert (site.shape, site.event_dim, site.unconstrained_shape, site.unconstrained_event_dim) == (
            shape,
            event_dim,
            u_shape,
            u_event_dim,
        ), name
        assert site.dtype == "float32"
        # params are at the full size the description gives
        assert params.loc[name].shape == u_shape
        assert params.raw_scale[name].shape == u_shape
    assert sites.model == f"{case.model.__module__}.{case.model.__qualname__}"


@pytest.mark.parametrize("case", cases(EXPECTED_PLATES))
def test_plate_frames(case):
    _, params = init(case)
    sites = params.sites
    for name, frames in EXPECTED_PLATES[case.name].items():
        got = tuple((f.name, f.size, f.subsample_size, f.dim) for f in sites[name].plates)
        assert got == frames, name
        for f in sites[name].plates:
            assert f.subsampled == (f.subsample_size != f.size)
    observed, factors, deterministic = EXPECTED_OTHER_SITES[case.name]
    assert (sites.observed, sites.factors, sites.deterministic) == (observed, factors, deterministic)
    all_frames = {(f.name, f.size, f.subsample_size, f.dim) for f in sites.plates}
    assert all_frames == {fr for frames in EXPECTED_PLATES[case.name].values() for fr in frames}
    assert {f.name for f in sites.subsampled_plates} == {
        fr[0] for frames in EXPECTED_PLATES[case.name].values() for fr in frames if fr[1] != fr[2]
    }


@pytest.mark.parametrize("case", cases(["subsampled", "subsampled_nested", "nested_plates"]))
def test_plate_axis_points_at_the_plate(case):
    _, params = init(case)
    for site in params.sites.latents:
        for frame in site.plates:
            assert site.shape[site.plate_axis(frame, unconstrained=False)] == frame.size
            assert site.unconstrained_shape[site.plate_axis(frame)] == frame.size


def test_plate_without_sample_sites_has_no_dim():
    def model():
        numpyro.sample("a", dist.Normal(0.0, 1.0))
        with numpyro.plate("empty", 5):
            pass

    _, params = init(Case(model))
    (frame,) = params.sites.plates
    assert (frame.name, frame.size, frame.subsample_size, frame.dim) == ("empty", 5, 5, None)


def test_observed_only_plate_is_recorded():
    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("obs", 4, subsample_size=2) as idx:
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    guide = jg.AutoNormal(model)
    sites = guide.init(jax.random.PRNGKey(0), jnp.arange(4.0)).sites
    assert sites.names == ("mu",) and sites.observed == ("y",)
    (frame,) = sites.plates
    assert (frame.name, frame.size, frame.subsample_size, frame.dim) == ("obs", 4, 2, -1)
    assert sites["mu"].plates == ()


@pytest.mark.parametrize("case", cases())
def test_description_is_static_hashable_and_stable(case):
    _, p1 = init(case, key=0)
    _, p2 = init(case, key=7, init_loc_fn=jg.init_to_uniform)
    _, p3 = init(case, jg.AutoDelta, key=3)
    # hashable, and independent of the key and the init strategy
    assert hash(p1.sites) == hash(p2.sites) == hash(p3.sites)
    assert p1.sites == p2.sites == p3.sites
    assert jax.tree.structure(p1) == jax.tree.structure(p2)
    # no array in the static part (array-valued support bounds travel in params)
    static = [leaf for s in p1.sites.latents for _, leaf in s.support.static_leaves]
    assert all(isinstance(x, (bool, int, float)) for x in static)
    assert pickle.loads(pickle.dumps(p1.sites)) == p1.sites


def test_descriptions_of_different_models_differ():
    _, a = init(MODELS["real"])
    _, b = init(MODELS["positive"])
    assert a.sites != b.sites
    assert jax.tree.structure(a) != jax.tree.structure(b)


@pytest.mark.parametrize("case", cases())
def test_support_is_rebuilt(case):
    # The rebuilt support is the model's: same bijection on random unconstrained points.
    _, params = init(case)
    model = numpyro.handlers.substitute(numpyro.handlers.seed(case.model, 0), substitute_fn=jg.init_to_feasible)
    tr = numpyro.handlers.trace(model).get_trace(*case.args)
    for i, site in enumerate(params.sites.latents):
        support = site.support.build(params.support[site.name])
        original = tr[site.name]["fn"].support
        assert type(support) is type(original), site.name
        u = jax.random.normal(jax.random.PRNGKey(i), site.unconstrained_shape)
        expected = biject_to(original)(u) if not site.plates else None
        got = site.transform(params.support[site.name])(u)
        assert np.all(np.asarray(support(got)))
        if expected is not None:
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_array_support_bounds_are_data():
    _, params = init(MODELS["interval_array"])
    lower, upper = params.support["x"]
    np.testing.assert_array_equal(lower, [-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(upper, [1.0, 3.0, 5.0])
    support = params.sites["x"].support.build((lower, upper))
    # reinterpreted as an event of one vector
    assert isinstance(support, constraints.independent)
    assert support.reinterpreted_batch_ndims == 1
    _, params = init(MODELS["greater_than"])
    np.testing.assert_allclose(params.sites["x"].support.build(params.support["x"]).lower_bound, 2.0)


def test_site_lookup():
    _, params = init(MODELS["independent"])
    assert params.sites["y"].name == "y"
    with pytest.raises(KeyError):
        params.sites["nope"]


@pytest.mark.allow_rank_promotion  # NumPyro's StickBreakingTransform on a batch of rows
def test_full_sizes_do_not_depend_on_the_subsample():
    # the subsample of the traced call is 4 rows; the description is at full size
    _, params = init(MODELS["subsampled"])
    assert params.sites["z"].shape == (N_DATA,)
    assert params.sites["z"].plates[0].subsample_size == SUBSAMPLE


def test_init_works_under_jit_and_gives_the_same_description():
    case = MODELS["nested_plates"]
    guide = jg.AutoNormal(case.model)
    eager = guide.init(jax.random.PRNGKey(0), *case.args)
    jitted = jax.jit(guide.init)(jax.random.PRNGKey(0), *case.args)
    assert jitted.sites == eager.sites
    for name in eager.sites.names:
        np.testing.assert_allclose(jitted.loc[name], eager.loc[name], rtol=1e-6, atol=1e-6)


def test_a_drawn_init_value_is_left_to_the_compiled_program(monkeypatch):
    # Under jit a drawn init value is traced, so whether it lies in the support is
    # traced too and cannot raise here; evaluating the support's constant parts
    # eagerly anyway compiled one tiny program per op (~0.7 s for an LKJ, simplex
    # and positive model in a fresh process). A concrete value is still checked.
    from jaxguides.model import sites as _sites

    evaluated = []
    real = _sites.biject_to
    monkeypatch.setattr(_sites, "biject_to", lambda support: evaluated.append(support) or real(support))
    fn = dist.LKJCholesky(3, 1.0)
    jax.make_jaxpr(lambda v: _sites._check_init_value("L", fn, v) or v)(jnp.eye(3))
    assert evaluated == []
    _sites._check_init_value("L", fn, jnp.eye(3))
    assert len(evaluated) == 1
    with pytest.raises(jg.SiteError, match="outside its support"):
        _sites._check_init_value("L", fn, 2.0 * jnp.eye(3))


@pytest.mark.parametrize("strategy", [jg.init_to_feasible, jg.init_to_uniform(radius=0.0)])
def test_a_feasible_start_is_zero_in_unconstrained_space_exactly(strategy):
    # biject_to(support)(0) is the value; the param is the 0 it came from, not a round
    # trip through the inverse (NumPyro's round trip gives 0 up to rounding; the inverse
    # of an LKJ or simplex bijection made a compiled init slow to build)
    def model():
        numpyro.sample("simplex", dist.Dirichlet(jnp.ones(4)))
        numpyro.sample("corr", dist.LKJCholesky(3, 2.0))
        numpyro.sample("unit", dist.Beta(2.0, 3.0))
        with numpyro.plate("rows", 5):
            numpyro.sample("scale", dist.LogNormal(0.0, 1.0))

    for guide in (jg.AutoDelta(model, init_loc_fn=strategy), jg.AutoNormal(model, init_loc_fn=strategy)):
        params = jax.jit(guide.init)(jax.random.PRNGKey(0))
        for name in params.sites.names:
            assert params.loc[name].shape == params.sites[name].unconstrained_shape
            np.testing.assert_array_equal(params.loc[name], 0.0)
        median = guide.median(params)
        np.testing.assert_allclose(median["simplex"], 0.25, rtol=1e-6)
        np.testing.assert_allclose(median["corr"], jnp.eye(3), atol=1e-6)
        np.testing.assert_allclose(median["unit"], 0.5, rtol=1e-6)


# ---- bad input, refused at init or through fit, before compiling -------------------------------------
KEY = jax.random.PRNGKey(0)


def _finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


def local_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("y", dist.Normal(z, 1.0), obs=y)


@pytest.mark.parametrize("guide_cls", [jg.AutoNormal, jg.AutoDelta])
def test_latent_plate_changed_size(guide_cls):
    """Params for 5 rows of a local latent, data of 7 rows: a SiteError naming the
    site, raised while tracing -- ``lower`` compiles nothing."""
    guide = guide_cls(local_model)
    params = guide.init(KEY, jnp.ones(5))
    loss = jg.elbo_loss(local_model, guide)
    assert np.isfinite(loss(params, KEY, jnp.ones(5)))
    algo = jg.svi(local_model, guide, optax.adam(0.1))
    state = algo.init(KEY, jnp.ones(5))
    calls = {
        "loss": lambda y: loss(params, KEY, y),
        "lower": lambda y: jax.jit(loss).lower(params, KEY, y),
        "step": lambda y: jax.jit(algo.step).lower(state, y),
        "log_prob": lambda y: guide.log_prob(params, {"mu": 0.0, "z": jnp.zeros(y.shape[0])}, y),
    }
    for name, call in calls.items():
        with pytest.raises(jg.SiteError, match="'z'") as info:
            call(jnp.ones(7))
        assert info.value.site == "z", name
        assert "(7,)" in str(info.value) and "(5,)" in str(info.value), name


def subsampled_model(y, batch):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0], subsample_size=batch) as idx:
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("y", dist.Normal(z, 1.0), obs=y[idx])


def test_subsampled_plate_changed_full_size():
    guide = jg.AutoNormal(subsampled_model)
    params = guide.init(KEY, jnp.arange(10.0), 4)
    with pytest.raises(jg.SiteError, match="'z'"):
        jg.elbo_loss(subsampled_model, guide)(params, KEY, jnp.arange(12.0), 4)


def test_subsample_size_changed_through_args_is_refused():
    seen = []

    def model(y, batch):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", y.shape[0], subsample_size=batch) as idx:
            seen.append(idx.shape[0])
            z = numpyro.sample("z", dist.Normal(mu, 1.0))
            numpyro.sample("y", dist.Normal(z, 1.0), obs=y[idx])

    guide = jg.AutoNormal(model)
    params = guide.init(KEY, jnp.arange(10.0), 4)
    # the ELBO draws rows for the subsample size seen at init: another size is refused, never
    # silently replaced (re-init the guide to change the batch size)
    with pytest.raises(jg.SiteError, match="subsample 6"):
        jax.jit(jg.elbo_loss(model, guide), static_argnums=3).lower(params, KEY, jnp.arange(10.0), 6)


def bounded_in_subsampled_plate():
    low = jnp.linspace(-1.0, 1.0, 6)
    with numpyro.plate("data", 6, subsample_size=3) as idx:
        numpyro.sample("u", dist.Uniform(low[idx], low[idx] + 1.0))


@pytest.mark.parametrize("guide_cls", [jg.AutoNormal, jg.AutoDelta])
@pytest.mark.allow_rank_promotion  # init_to_median: NumPyro's Uniform.sample((15,)) on a vector site
def test_array_support_in_subsampled_plate(guide_cls):
    """Init sees one subsample's bounds: refused at init, naming the site and plate
    (NumPyro's AutoNormal fails later, deep in JAX). Also under jit."""
    guide = guide_cls(bounded_in_subsampled_plate)
    for init in (guide.init, jax.jit(guide.init)):
        with pytest.raises(jg.SiteError, match="'u'.*'data'") as info:
            init(KEY)
        assert info.value.site == "u"


def bounds_constant_along_subsampled_plate():
    with numpyro.plate("data", 6, subsample_size=3):
        numpyro.sample("u", dist.Uniform(jnp.zeros((1,)), 1.0))
    with numpyro.plate("rows", 4, dim=-2), numpyro.plate("cols", 6, subsample_size=3):
        numpyro.sample("v", dist.Uniform(jnp.arange(4.0)[:, None], 5.0))  # varies along 'rows' only


def test_array_support_constant_along_subsampled_plate_is_kept():
    guide = jg.AutoNormal(bounds_constant_along_subsampled_plate)
    median = guide.median(guide.init(KEY))
    assert median["u"].shape == (6,) and median["v"].shape == (4, 6)
    assert bool(jnp.all((median["v"] > jnp.arange(4.0)[:, None]) & (median["v"] < 5.0)))


def bounded(low):
    numpyro.sample("u", dist.Uniform(low, low + 1.0))


def test_init_to_value_outside_traced_support_is_checked_outside_jit():
    """Under jit the bounds are traced, so init cannot check the value (and no longer
    crashes trying); guide.check_init, run on the concrete args, refuses it."""
    guide = jg.AutoNormal(bounded, init_loc_fn=jg.init_to_value(values={"u": 5.0}))
    jax.jit(guide.init)(KEY, jnp.array(0.0))  # traced bounds: not checkable here, no crash
    with pytest.raises(jg.SiteError, match="'u'.*support") as info:
        guide.check_init(KEY, jnp.array(0.0))
    assert info.value.site == "u"
    inside = jg.AutoNormal(bounded, init_loc_fn=jg.init_to_value(values={"u": 0.5}))
    inside.check_init(KEY, jnp.array(0.0))
    np.testing.assert_allclose(inside.median(jax.jit(inside.init)(KEY, jnp.array(0.0)))["u"], 0.5, rtol=1e-6)


def test_init_to_value_outside_traced_support_through_fit():
    guide = jg.AutoNormal(bounded, init_loc_fn=jg.init_to_value(values={"u": 5.0}))
    with pytest.raises(jg.SiteError, match="'u'"):
        jg.fit(bounded, guide, optax.adam(0.1), KEY, 5, jnp.array(0.0), progress_bar=False)


@pytest.mark.parametrize("batched_args", [False, True])
def test_init_to_value_outside_traced_support_through_fit_many(batched_args):
    guide = jg.AutoNormal(bounded, init_loc_fn=jg.init_to_value(values={"u": 5.0}))
    low = jnp.zeros(3) if batched_args else jnp.array(0.0)
    keys = jax.random.split(KEY, 3)
    with pytest.raises(jg.SiteError, match="'u'"):
        jg.fit_many(bounded, guide, optax.adam(0.1), keys, 5, low, batched_args=batched_args, progress_bar=False)


def test_init_to_value_errors_through_fit():
    """With static bounds the checks work under fit's jitted init too."""

    def positive(y):
        s = numpyro.sample("s", dist.LogNormal(0.0, 1.0))
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        numpyro.deterministic("d", s * jnp.sum(w))
        numpyro.sample("y", dist.Normal(jnp.sum(w), 1.0), obs=y)

    for values, match in [({"s": -1.0}, "support"), ({"s": jnp.nan}, "support"), ({"w": jnp.zeros(4)}, r"\(4,\)")]:
        guide = jg.AutoNormal(positive, init_loc_fn=jg.init_to_value(values=values))
        with pytest.raises(jg.SiteError, match=match) as info:
            jg.fit(positive, guide, optax.adam(0.1), KEY, 5, jnp.array(1.0), progress_bar=False)
        assert info.value.site == next(iter(values))


def closed_edges():
    numpyro.sample("p", dist.Beta(2.0, 2.0))
    numpyro.sample("s", dist.LogNormal(0.0, 1.0))


@pytest.mark.parametrize("values", [{"p": 1.0}, {"s": float("inf")}])
def test_init_to_value_on_the_edge_of_the_support(values):
    guide = jg.AutoNormal(closed_edges, init_loc_fn=jg.init_to_value(values=values))
    try:
        params = guide.init(KEY)
    except jg.SiteError as err:  # refusing it, naming the site, is fine
        assert err.site == next(iter(values))
        return
    assert _finite(params)  # or clipping it inside


def scale_then_use(y):
    s = numpyro.sample("s", dist.LogNormal(0.0, 1.0))
    w = numpyro.sample("w", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(w, s), obs=y)


def test_init_to_value_outside_support_used_by_a_later_site():
    """The value is checked when its site is reached, before 'y' (whose Normal would
    refuse the negative scale) can fail on it and be blamed."""
    guide = jg.AutoNormal(scale_then_use, init_loc_fn=jg.init_to_value(values={"s": -1.0}))
    with pytest.raises(jg.SiteError, match="'s'.*support") as info:
        guide.init(KEY, 1.0)
    assert info.value.site == "s"
