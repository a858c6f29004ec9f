"""Our guides against NumPyro's own ``AutoNormal`` / ``AutoDelta`` on the same params.

For a model of every support that has a bijection (plus vector sites, nested
plates and subsampled plates) the same params must give NumPyro's median,
quantiles and guide log density to float32 precision, and NumPyro's guide and
``Predictive`` must accept our exported params.

The NumPyro guide is initialised by running it once under ``handlers.seed``;
its params are then replaced by ours (``jg.to_numpyro_params``), so the
comparison is at the same, non-degenerate point (params are perturbed away
from their init).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer import SVI, Predictive, Trace_ELBO, autoguide
from numpyro.infer.util import log_density

import jaxguides as jg
from helpers.models import MODELS, N_DATA, SUBSAMPLE_ROWS, cases

GUIDES = {"AutoNormal": (jg.AutoNormal, autoguide.AutoNormal), "AutoDelta": (jg.AutoDelta, autoguide.AutoDelta)}
RTOL = ATOL = 1e-5
QS = jnp.array([0.05, 0.3, 0.5, 0.9])


# ---- helpers ------------------------------------------------------------------------
def perturb(params, key):
    """Move params away from their init: loc by N(0, 0.3), scale uniform in [0.05, 0.5]."""
    loc = {}
    raw = {}
    for i, (name, v) in enumerate(sorted(params.loc.items())):
        k1, k2 = jax.random.split(jax.random.fold_in(key, i))
        loc[name] = v + 0.3 * jax.random.normal(k1, v.shape, v.dtype)
        scale = jax.random.uniform(k2, v.shape, v.dtype, 0.05, 0.5)
        raw[name] = biject_to(numpyro.distributions.constraints.softplus_positive).inv(scale)
    if isinstance(params, jg.AutoNormalParams):
        return dataclasses.replace(params, loc=loc, raw_scale=raw)
    return dataclasses.replace(params, loc=loc)


def setup(case, kind, create_plates=None, **options):
    """(our guide, our perturbed params, NumPyro guide, NumPyro params) for ``case``."""
    ours_cls, theirs_cls = GUIDES[kind]
    create_plates = create_plates or case.create_plates
    guide = ours_cls(case.model, create_plates=case.create_plates, **options)
    params = perturb(guide.init(jax.random.PRNGKey(0), *case.args), jax.random.PRNGKey(1))
    ng = theirs_cls(case.model, create_plates=create_plates, **options)
    with handlers.seed(rng_seed=0), numpyro_side():
        ng(*case.args)  # NumPyro sets its guide up lazily, on the first call
    return guide, params, ng, jg.to_numpyro_params(guide, params)


def numpyro_side():
    """Context for calls into NumPyro's own guides, the reference: NumPyro is not
    rank-promotion clean (e.g. its ``quantiles`` and ``sample_posterior``
    broadcast ``(n,) + shape`` against ``shape``), while our code runs under the
    conftest's ``"raise"``."""
    return jax.numpy_rank_promotion("allow")


def numpyro_log_density(ng, np_params, values, args):
    """NumPyro's guide log density at constrained ``values`` with ``np_params`` substituted."""
    with handlers.seed(rng_seed=3), numpyro_side():
        lp, _ = log_density(ng, args, {}, {**np_params, **values})
    return lp


def assert_close(ours, theirs, names, rtol=RTOL, atol=ATOL):
    for name in names:
        a, b = np.asarray(ours[name]), np.asarray(theirs[name])
        assert a.shape == b.shape, (name, a.shape, b.shape)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)


def subsample_shape(site):
    shape = list(site.shape)
    for frame in site.plates:
        shape[site.plate_axis(frame, unconstrained=False)] = frame.subsample_size
    return tuple(shape)


def subsample_rows(guide, params, values):
    """``values`` (full size) restricted to ``SUBSAMPLE_ROWS`` of each subsampled plate."""
    out = {}
    for site in params.sites.latents:
        v = values[site.name]
        for frame in site.plates:
            if frame.subsampled:
                v = jnp.take(v, jnp.asarray(SUBSAMPLE_ROWS), axis=site.plate_axis(frame, unconstrained=False))
        out[site.name] = v
    return out


def in_support(params, values, batch_ndim=0):
    """Whether every site's value satisfies its support (event dims accounted for)."""
    for site in params.sites.latents:
        support = site.support.build(params.support[site.name])
        ok = np.asarray(support(values[site.name]))
        if not ok.all():
            return False
    return True


@pytest.fixture(scope="module", params=list(GUIDES))
def kind(request):
    return request.param


# ---- median / quantiles ------------------------------------------------------------------
@pytest.mark.parametrize("case", cases())
def test_median_matches_numpyro(case, kind):
    guide, params, ng, np_params = setup(case, kind)
    names = params.sites.names
    with numpyro_side():
        theirs = ng.median(np_params)
    assert set(names) <= set(theirs)
    assert_close(guide.median(params), theirs, names)
    # exported AutoDelta params are the constrained point itself
    if kind == "AutoDelta":
        assert_close(guide.median(params), {n: np_params[f"{n}_auto_loc"] for n in names}, names)


def numpyro_quantiles_eagerly(ng, np_params, names):
    """NumPyro's ``AutoNormal.quantiles`` one quantile at a time.

    ``ng.quantiles`` is ``_constrain(Normal(loc, scale).icdf(q))``, which
    compiles the whole model under ``lax.map``; this runs the same NumPyro
    code (``icdf``, then ``ng.median`` = ``_constrain``) eagerly per quantile,
    a fraction of the compile time. ``test_quantiles_match_numpyro`` holds the
    real ``ng.quantiles`` on a subset of the models.
    """
    out = []
    for q in QS:
        shifted = dict(np_params)
        for n in names:
            loc, scale = np_params[f"{n}_auto_loc"], np_params[f"{n}_auto_scale"]
            shifted[f"{n}_auto_loc"] = numpyro.distributions.Normal(loc, scale).icdf(q)
        with numpyro_side():
            out.append(ng.median(shifted))
    return {n: jnp.stack([o[n] for o in out]) for n in names}


# One of a kind each: scalar, array bounds, vector, matrix, plates, subsampling.
QUANTILED = ["positive", "interval_array", "simplex", "corr_matrix", "nested_plates", "subsampled"]


@pytest.mark.parametrize("case", cases(QUANTILED))
def test_quantiles_match_numpyro(case):
    guide, params, ng, np_params = setup(case, "AutoNormal")
    with numpyro_side():
        theirs = ng.quantiles(np_params, QS)
    assert_close(guide.quantiles(params, QS), theirs, params.sites.names)


@pytest.mark.parametrize("case", cases())
def test_quantiles_match_numpyro_for_every_support(case):
    guide, params, ng, np_params = setup(case, "AutoNormal")
    names = params.sites.names
    ours = guide.quantiles(params, QS)
    assert_close(ours, numpyro_quantiles_eagerly(ng, np_params, names), names)
    for site in params.sites.latents:
        assert ours[site.name].shape == (len(QS),) + site.shape
    # the 0.5 quantile is the median
    assert_close({n: ours[n][2] for n in names}, guide.median(params), names)


@pytest.mark.parametrize("case", cases(["vector_plate"]))
def test_deterministic_sites_match_numpyro(case):
    # NumPyro's AutoNormal.median/quantiles add the model's deterministic sites
    # (computed with the args of its first call); ours do when given the args.
    # (NumPyro's cannot when the site is in a subsampled plate: its median runs
    # the model on a random subsample; ours runs it at full size, see test_guides.)
    guide, params, ng, np_params = setup(case, "AutoNormal")
    det = params.sites.deterministic
    assert det
    with numpyro_side():
        median, quantiles = ng.median(np_params), ng.quantiles(np_params, QS)
    assert_close(guide.median(params, *case.args), median, det)
    assert_close(guide.quantiles(params, QS, *case.args), quantiles, det)
    # and not without args (the guide cannot run the model)
    assert not set(det) & set(guide.median(params))


# ---- log density ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", cases())
def test_log_prob_matches_numpyro(case, kind):
    guide, params, ng, np_params = setup(case, kind)
    sampled = guide.sample(params, jax.random.PRNGKey(2))
    point = guide.median(params)
    subsampled = bool(params.sites.subsampled_plates)
    if subsampled:
        # NumPyro's guide scores the current subsample (its rows fixed by
        # create_plates), scaled by size / subsample_size; so do we.
        sampled, point = subsample_rows(guide, params, sampled), subsample_rows(guide, params, point)
    for values in (sampled, point):
        ours = guide.log_prob(params, values, *case.args)
        theirs = numpyro_log_density(ng, np_params, values, case.args)
        assert ours.shape == ()
        np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL)
    if kind == "AutoNormal":
        # not a degenerate comparison: the two points have different densities
        assert not np.isclose(guide.log_prob(params, sampled, *case.args), guide.log_prob(params, point, *case.args))
    else:
        assert guide.log_prob(params, point, *case.args) == 0.0
        if not subsampled:
            moved = {**point, params.sites.names[0]: sampled[params.sites.names[0]] * 0.5}
            theirs = numpyro_log_density(ng, np_params, moved, case.args)
            assert guide.log_prob(params, moved, *case.args) == theirs == -np.inf


def full_plates(x):
    return numpyro.plate("data", N_DATA, subsample_size=N_DATA)


def full_plates_dim2(x):
    return numpyro.plate("data", N_DATA, subsample_size=N_DATA, dim=-2)


@pytest.mark.parametrize(
    "case, create_plates",
    [
        pytest.param(MODELS["subsampled"], full_plates, id="subsampled", marks=pytest.mark.allow_rank_promotion),
        pytest.param(
            MODELS["subsampled_nested"],
            full_plates_dim2,
            id="subsampled_nested",
            marks=pytest.mark.allow_rank_promotion,
        ),
    ],
)
def test_full_size_log_prob_of_subsampled_model_matches_numpyro(case, create_plates, kind):
    # Values at full size are scored unscaled: NumPyro's guide does the same
    # when its create_plates returns the plate at full size.
    guide, params, ng, np_params = setup(case, kind, create_plates=create_plates)
    values = guide.sample(params, jax.random.PRNGKey(2))
    ours = guide.log_prob(params, values, *case.args)
    np.testing.assert_allclose(ours, numpyro_log_density(ng, np_params, values, case.args), rtol=RTOL, atol=ATOL)


# ---- sampling and Predictive ------------------------------------------------------------------
# The transform of each support is held to NumPyro's exactly by the median and
# quantile tests; sampling adds only loc + scale * noise, so a few supports do.
SAMPLED = ["positive", "interval_array", "simplex", "corr_cholesky", "subsampled"]


@pytest.mark.parametrize("case", cases(SAMPLED))
def test_sample_distribution_matches_numpyro(case):
    guide, params, ng, np_params = setup(case, "AutoNormal")
    n = 4000
    ours = guide.sample(params, jax.random.PRNGKey(5), sample_shape=(n,))
    with numpyro_side():
        theirs = ng.sample_posterior(jax.random.PRNGKey(6), np_params, sample_shape=(n,))
    for site in params.sites.latents:
        a, b = np.asarray(ours[site.name], np.float64), np.asarray(theirs[site.name], np.float64)
        assert a.shape == b.shape == (n,) + site.shape
        ma, mb, sa, sb = a.mean(0), b.mean(0), a.std(0), b.std(0)
        tol = 5 * np.sqrt((sa**2 + sb**2) / n) + 1e-6
        assert np.all(np.abs(ma - mb) <= tol), site.name
        np.testing.assert_allclose(sa, sb, rtol=0.12, atol=1e-6, err_msg=site.name)
    assert in_support(params, {k: v for k, v in ours.items()})


@pytest.mark.parametrize("case", cases(["interval_array", "positive_definite", "nested_plates", "subsampled"]))
def test_numpyro_predictive_runs_on_exported_params(case, kind):
    guide, params, ng, np_params = setup(case, kind)
    names = list(params.sites.names)
    predictive = Predictive(case.model, guide=ng, params=np_params, num_samples=3, return_sites=names)
    with numpyro_side():
        samples = predictive(jax.random.PRNGKey(4), *case.args)
    for site in params.sites.latents:
        value = samples[site.name]
        assert value.shape == (3,) + subsample_shape(site)
        assert np.all(np.isfinite(value))
    if kind == "AutoDelta" and not params.sites.subsampled_plates:
        point = guide.median(params)
        for name in params.sites.names:
            np.testing.assert_allclose(samples[name], np.broadcast_to(point[name], samples[name].shape), rtol=RTOL)


# ---- params: both directions ---------------------------------------------------------------------
@pytest.mark.parametrize("case", cases())
def test_from_numpyro_params_round_trip(case, kind):
    guide, params, _, np_params = setup(case, kind)
    back = jg.from_numpyro_params(guide, np_params, jax.random.PRNGKey(9), *case.args)
    assert type(back) is type(params)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    assert_close(guide.median(back), guide.median(params), params.sites.names)
    if kind == "AutoNormal":  # exact: loc is stored as is, scale through softplus and back
        assert_close(back.loc, params.loc, params.sites.names)
        assert_close(back.scale, params.scale, params.sites.names)
    assert_close(jg.to_numpyro_params(guide, back), np_params, list(np_params))


@pytest.mark.parametrize("case", cases(["subsampled"]))
def test_params_trained_by_numpyro_work_here(case):
    # The other direction: params NumPyro's SVI made are ours through
    # from_numpyro_params. (AutoDelta's conversion, through the inverse
    # bijection, is held by test_from_numpyro_params_round_trip.)
    kind = "AutoNormal"
    ours_cls, theirs_cls = GUIDES[kind]
    ng = theirs_cls(case.model, create_plates=case.create_plates)
    with numpyro_side():
        svi = SVI(case.model, ng, numpyro.optim.Adam(0.05), Trace_ELBO())
        state = svi.init(jax.random.PRNGKey(0), *case.args)
        for _ in range(3):
            state, _ = svi.update(state, *case.args)
        np_params = svi.get_params(state)
        median, quantiles = ng.median(np_params), ng.quantiles(np_params, QS) if kind == "AutoNormal" else None
    guide = ours_cls(case.model, create_plates=case.create_plates)
    params = jg.from_numpyro_params(guide, np_params, jax.random.PRNGKey(1), *case.args)
    assert_close(guide.median(params), median, params.sites.names)
    if kind == "AutoNormal":
        assert_close(guide.quantiles(params, QS), quantiles, params.sites.names)
    assert_close(jg.to_numpyro_params(guide, params), np_params, list(np_params))


# ---- init -------------------------------------------------------------------------------------
def numpyro_init_params(ng, args):
    with numpyro_side():
        tr = handlers.trace(handlers.seed(ng, rng_seed=0)).get_trace(*args)
    return {n: s["value"] for n, s in tr.items() if s["type"] == "param"}


@pytest.mark.parametrize("case", cases())
def test_init_to_value_matches_numpyro(case, kind):
    # A deterministic init strategy gives NumPyro's initial params exactly,
    # including the periodic repeat of a subsampled site's init to full size.
    ref_guide, ref_params, _, _ = setup(case, kind)
    values = ref_guide.median(ref_params)
    if ref_params.sites.subsampled_plates:  # the model's site has its subsample shape while traced
        values = subsample_rows(ref_guide, ref_params, values)
    strategy = jg.init_to_value(values=values)
    ours_cls, theirs_cls = GUIDES[kind]
    guide = ours_cls(case.model, init_loc_fn=strategy, create_plates=case.create_plates)
    ng = theirs_cls(case.model, init_loc_fn=strategy, create_plates=case.create_plates)
    theirs = numpyro_init_params(ng, case.args)
    ours = jg.to_numpyro_params(guide, guide.init(jax.random.PRNGKey(0), *case.args))
    assert set(ours) == set(theirs)
    assert_close(ours, theirs, list(theirs), rtol=1e-5, atol=1e-5)


FEASIBLE = (jg.init_to_feasible, jg.init_to_feasible(), jg.init_to_uniform(radius=0))  # three spellings


@pytest.mark.parametrize("case", cases())
def test_init_to_feasible_matches_numpyro_without_drawing(case):
    # init_to_feasible is a uniform draw of radius 0: jaxguides gives the value NumPyro's
    # strategy gives (biject_to(support)(0)) without drawing, so a compiled init holds no
    # random-number code.
    i = list(MODELS).index(case.name)  # one strategy spelling and one guide per case: same code path
    strategy, guide_cls = FEASIBLE[i % len(FEASIBLE)], (jg.AutoNormal, jg.AutoDelta)[i % 2]

    def numpyro_values(key):
        with numpyro_side():
            seeded = handlers.seed(case.model, key)
            tr = handlers.trace(handlers.substitute(seeded, substitute_fn=strategy)).get_trace(*case.args)
        return {n: s["value"] for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]}

    theirs = jax.jit(numpyro_values)(jax.random.PRNGKey(3))  # compiled: NumPyro's eager trace is slow
    guide = guide_cls(case.model, init_loc_fn=strategy, create_plates=case.create_plates)
    params = jax.jit(guide.init)(jax.random.PRNGKey(0), *case.args)
    ours = jax.jit(guide.median)(params)
    if params.sites.subsampled_plates:  # every row starts at the same value; compare the traced rows
        ours = subsample_rows(guide, params, ours)
    assert set(ours) == set(theirs)
    assert_close(ours, theirs, list(theirs), rtol=1e-6, atol=1e-6)
    again = jax.jit(guide.init)(jax.random.PRNGKey(1), *case.args)  # the key plays no part
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    if not params.sites.subsampled_plates:  # (subsampling draws its rows)
        hlo = jax.jit(lambda key: guide.init(key, *case.args)).lower(jax.random.PRNGKey(0)).as_text()
        assert "threefry" not in hlo and "rng_bit_generator" not in hlo
