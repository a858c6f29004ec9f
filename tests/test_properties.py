"""Property-based tests: AutoNormal / AutoDelta over generated NumPyro models.

Hypothesis draws a model *spec* -- a list of latent sites, each a
``(kind, placement, event size, extra batch shape)`` -- and a flag that
subsamples the inner plate; :func:`make_model` turns it into an ordinary
NumPyro model (a closure). The menu of kinds covers every support that has a
bijection to real space (real, positive, greater_than, interval with array
bounds, unit_interval, simplex, ordered_vector, corr_cholesky, corr_matrix,
lower_cholesky, positive_definite, zero_sum, circular, real_vector,
``independent`` wrappers from ``.to_event``); placements put a site outside
any plate (with a random batch shape), in a plate at ``dim=-1`` (optionally
subsampled), alone in a plate at ``dim=-2`` (batch shape ``(3, 1)``), or in
both plates nested.

For every generated model both guides must ``init``, ``sample``,
``log_prob``, ``median`` (and ``quantiles`` for AutoNormal); samples lie in
the support; ``log_prob`` is finite on samples; ``to_numpyro_params`` /
``from_numpyro_params`` round-trips; and the median, quantiles and log
density equal those of NumPyro's own ``AutoNormal`` / ``AutoDelta`` on the
same params (full-size values; a subsampled plate is given all its rows).

The example count is ``JAXGUIDES_HYPOTHESIS_EXAMPLES`` (default 15, for CI);
the runs are derandomized, so CI is deterministic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpyro import handlers
from numpyro.distributions.transforms import OrderedTransform
from numpyro.infer import autoguide
from numpyro.infer.util import log_density

import jaxguides as jg

OUTER, INNER, INNER_SUB = 3, 4, 2

# kinds whose distribution parameters are arrays of the site's batch shape
# (so their support carries array data: an interval's / a bound's values)
ARRAY_KINDS = ("uniform", "truncnormal")
KINDS = (
    "normal",  # real
    "lognormal",  # positive
    "halfnormal",  # positive
    "gamma",  # positive
    "gamma_event",  # independent(positive, 1)
    "pareto",  # greater_than(1.5), static bound
    "truncnormal",  # greater_than_eq(array)
    "uniform",  # interval(array, array)
    "beta",  # unit_interval
    "beta_event",  # independent(unit_interval, 1)
    "normal_event2",  # independent(real, 2)
    "dirichlet",  # simplex
    "ordered",  # ordered_vector
    "lkj_cholesky",  # corr_cholesky
    "lkj",  # corr_matrix
    "wishart_cholesky",  # lower_cholesky
    "wishart",  # positive_definite
    "zero_sum",  # zero_sum
    "von_mises",  # circular
    "mvn",  # real_vector
)
PLACEMENTS = ("global", "inner", "outer", "both")

SETTINGS = settings(
    max_examples=int(os.environ.get("JAXGUIDES_HYPOTHESIS_EXAMPLES", "15")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---- generated models ---------------------------------------------------------------
def make_dist(kind: str, k: int, shape: tuple[int, ...], rows: jax.Array | None = None) -> dist.Distribution:
    """The prior of a site of ``kind``; ``k`` sizes event dims.

    ``shape`` is the full batch shape, used by the array-parameter kinds only
    (the others have batch shape ``()`` and are broadcast by their plates);
    ``rows`` picks the current subsample along the last batch axis.
    """
    simple = {
        "normal": lambda: dist.Normal(0.5, 1.3),
        "lognormal": lambda: dist.LogNormal(0.0, 0.5),
        "halfnormal": lambda: dist.HalfNormal(1.0),
        "gamma": lambda: dist.Gamma(2.0, 1.0),
        "gamma_event": lambda: dist.Gamma(2.0, 1.0).expand([k]).to_event(1),
        "pareto": lambda: dist.Pareto(1.5, 3.0),
        "beta": lambda: dist.Beta(2.0, 3.0),
        "beta_event": lambda: dist.Beta(2.0, 3.0).expand([k]).to_event(1),
        "normal_event2": lambda: dist.Normal(0.0, 1.0).expand([k, 2]).to_event(2),
        "dirichlet": lambda: dist.Dirichlet(jnp.arange(1.0, k + 1.0)),
        "ordered": lambda: dist.TransformedDistribution(
            dist.Normal(0.0, 1.0).expand([k]).to_event(1), OrderedTransform()
        ),
        "lkj_cholesky": lambda: dist.LKJCholesky(k, 2.0),
        "lkj": lambda: dist.LKJ(k, 2.0),
        "wishart_cholesky": lambda: dist.WishartCholesky(k + 2.0, scale_tril=jnp.eye(k)),
        "wishart": lambda: dist.Wishart(k + 2.0, scale_matrix=jnp.eye(k)),
        "zero_sum": lambda: dist.ZeroSumNormal(1.0, event_shape=(k,)),
        "von_mises": lambda: dist.VonMises(0.5, 2.0),
        "mvn": lambda: dist.MultivariateNormal(jnp.zeros(k), 2.0 * jnp.eye(k)),
    }
    if kind in simple:
        return simple[kind]()
    n = int(np.prod(shape))
    first = jnp.linspace(-2.0, 1.0, n).reshape(shape)
    width = jnp.linspace(0.5, 3.0, n).reshape(shape)
    if rows is not None:
        first, width = jnp.take(first, rows, axis=-1), jnp.take(width, rows, axis=-1)
    if kind == "uniform":
        return dist.Uniform(first, first + width)
    if kind == "truncnormal":
        return dist.TruncatedNormal(0.0, 1.0, low=first / 2.0)
    raise ValueError(kind)


def make_model(spec: tuple[tuple[Any, ...], ...], subsample: bool):
    """A NumPyro model (closure) with one latent site per entry of ``spec``."""

    def model():
        outer = numpyro.plate("outer", OUTER, dim=-2)
        inner = numpyro.plate("inner", INNER, subsample_size=INNER_SUB if subsample else None, dim=-1)
        for i, (kind, placement, k, extra) in enumerate(spec):
            name = f"z{i}_{kind}"
            if placement == "global":
                d = make_dist(kind, k, extra)
                if extra and kind not in ARRAY_KINDS:
                    d = d.expand(extra + d.batch_shape)
                numpyro.sample(name, d)
                continue
            shape = {"inner": (INNER,), "outer": (OUTER, 1), "both": (OUTER, INNER)}[placement]
            with contextlib.ExitStack() as stack:
                if placement in ("outer", "both"):
                    stack.enter_context(outer)
                rows = stack.enter_context(inner) if placement in ("inner", "both") else None
                numpyro.sample(name, make_dist(kind, k, shape, rows if subsample else None))
        numpyro.sample("obs", dist.Normal(0.0, 1.0), obs=0.3)

    return model


@st.composite
def model_specs(draw: st.DrawFn) -> tuple[tuple[tuple[Any, ...], ...], bool]:
    subsample = draw(st.booleans())
    n = draw(st.integers(1, 3))
    spec = []
    for _ in range(n):
        kind = draw(st.sampled_from(KINDS))
        placements = PLACEMENTS
        if subsample and kind in ARRAY_KINDS:
            # an array-valued support cannot vary along a subsampled plate (NumPyro
            # cannot either): see test_sites.py::test_array_support_in_subsampled_plate
            placements = ("global", "outer")
        placement = draw(st.sampled_from(placements))
        k = draw(st.integers(2, 3))
        extra = tuple(draw(st.lists(st.integers(1, 3), max_size=2))) if placement == "global" else ()
        spec.append((kind, placement, k, extra))
    return tuple(spec), subsample


# ---- helpers ---------------------------------------------------------------------------
def model_sites(model) -> dict[str, dict[str, Any]]:
    """The model's latent sites (their ``fn``) at full plate size; nothing is sampled."""

    def zeros(site):
        return jnp.zeros(site["fn"].shape()) if site["type"] == "sample" else None

    zeros = handlers.substitute(model, substitute_fn=zeros)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a full-size "subsample" of the inner plate
        tr = handlers.trace(handlers.substitute(zeros, data={"inner": jnp.arange(INNER)})).get_trace()
    return {n: s for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]}


def numpyro_guide(cls, model):
    """NumPyro's guide, set up by a seeded call; returns it and the params it made."""
    guide = cls(model, init_loc_fn=jg.init_to_feasible)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = handlers.trace(handlers.seed(guide, 0)).get_trace()
    return guide, {n: s["value"] for n, s in tr.items() if s["type"] == "param"}


def full_rows(fn):
    """``fn`` run with every row of the (possibly subsampled) inner plate."""

    def run(*args):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "subsample_size does not match"
            with handlers.substitute(data={"inner": jnp.arange(INNER)}):
                return fn(*args)

    return run


def numpyro_log_density(guide, np_params: dict[str, jax.Array], values: dict[str, jax.Array]) -> jax.Array:
    """NumPyro's guide log density of full-size ``values``."""
    return full_rows(lambda: log_density(handlers.substitute(guide, data=np_params), (), {}, values)[0])()


def assert_in_support(sites: dict[str, dict[str, Any]], values: dict[str, jax.Array], leading: int) -> None:
    for name, site in sites.items():
        fn, value = site["fn"], values[name]
        assert value.shape[leading:] == site["value"].shape, name
        ok = np.asarray(fn.support(value))
        assert ok.all(), f"{name}: {ok.size - ok.sum()} of {ok.size} values outside {fn.support}"


def assert_close(ours: dict[str, jax.Array], theirs: dict[str, jax.Array], rtol: float, atol: float) -> None:
    assert set(theirs) <= set(ours), (set(theirs), set(ours))
    for name, value in theirs.items():
        np.testing.assert_allclose(np.asarray(ours[name]), np.asarray(value), rtol=rtol, atol=atol, err_msg=name)


def assert_same_shapes(ours: dict[str, jax.Array], theirs: dict[str, jax.Array]) -> None:
    assert set(ours) == set(theirs)
    for name, value in ours.items():
        assert value.shape == theirs[name].shape, name


def perturb(params, key):
    """Move every loc / raw_scale off its init value, so no comparison passes by symmetry."""
    loc = {
        n: v + 0.3 * jax.random.normal(jax.random.fold_in(key, i), v.shape, v.dtype)
        for i, (n, v) in enumerate(sorted(params.loc.items()))
    }
    if not isinstance(params, jg.AutoNormalParams):
        return dataclasses.replace(params, loc=loc)
    raw = {
        n: v + 0.3 * jax.random.normal(jax.random.fold_in(key, 1000 + i), v.shape, v.dtype)
        for i, (n, v) in enumerate(sorted(params.raw_scale.items()))
    }
    return dataclasses.replace(params, loc=loc, raw_scale=raw)


QS = (0.1, 0.5, 0.9)
# Every example is a new model, so every jitted function below compiles once;
# XLA's backend optimisations would double that time for nothing here.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def run_jit(fn, *args):
    """``jax.jit(fn)(*args)``, compiled without backend optimisations."""
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


# ---- the properties ------------------------------------------------------------------------
def check_auto_normal(model, sites):
    guide = jg.AutoNormal(model, init_scale=0.05)
    params = perturb(run_jit(guide.init, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    assert set(params.sites.names) == set(sites)

    def ours(params, key):
        samples = guide.sample(params, key, sample_shape=(3,))
        one = {n: v[0] for n, v in samples.items()}
        median = guide.median(params)
        return samples, guide.log_prob(params, one), median, guide.log_prob(params, median), guide.quantiles(params, QS)

    samples, lp, median, lp_median, qs = run_jit(ours, params, jax.random.PRNGKey(2))

    # samples, median and quantiles lie in the support; the log density is finite
    assert_in_support(sites, samples, leading=1)
    assert lp.shape == () and np.isfinite(lp), lp
    assert_in_support(sites, median, leading=0)
    for i in range(len(QS)):
        assert_in_support(sites, {n: q[i] for n, q in qs.items()}, leading=0)
    assert_close({n: q[1] for n, q in qs.items()}, median, rtol=1e-6, atol=1e-6)  # median = 0.5 quantile

    # NumPyro interop: a round trip, and the params NumPyro's AutoNormal makes
    np_params = jg.to_numpyro_params(guide, params)
    back = run_jit(lambda p: jg.from_numpyro_params(guide, p, jax.random.PRNGKey(5)), np_params)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

    # NumPyro's AutoNormal on the same params: median, quantiles, log density.
    # Set up (a seeded call) inside jit: one compiled program instead of
    # hundreds of eagerly dispatched ops.
    def theirs(np_params, values, median):
        ref, ref_init = numpyro_guide(autoguide.AutoNormal, model)
        return (
            ref_init,
            full_rows(ref.median)(np_params),
            full_rows(ref.quantiles)(np_params, QS),
            numpyro_log_density(ref, np_params, values),
            numpyro_log_density(ref, np_params, median),
        )

    one = {n: v[0] for n, v in samples.items()}
    ref_init, ref_median, ref_qs, ref_lp, ref_lp_median = run_jit(theirs, np_params, one, median)
    assert_same_shapes(np_params, ref_init)
    assert_close(median, ref_median, rtol=1e-5, atol=1e-5)
    assert_close(qs, ref_qs, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lp, ref_lp, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(lp_median, ref_lp_median, rtol=1e-4, atol=1e-3)


def check_auto_delta(model, sites):
    guide = jg.AutoDelta(model, init_loc_fn=jg.init_to_feasible)
    params = perturb(run_jit(guide.init, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))

    def ours(params):
        median = guide.median(params)
        samples = guide.sample(params, jax.random.PRNGKey(2), sample_shape=(2,))
        return median, samples, guide.log_prob(params, median), jg.to_numpyro_params(guide, params)

    median, samples, lp, np_params = run_jit(ours, params)
    assert_in_support(sites, median, leading=0)
    assert_in_support(sites, samples, leading=1)
    for name in sites:
        np.testing.assert_array_equal(samples[name][1], median[name])
    assert float(lp) == 0.0

    # NumPyro's AutoDelta holds the constrained point: its guide, run on our
    # params, puts its point masses at our median
    assert_close(median, {n: np_params[f"{n}_auto_loc"] for n in sites}, rtol=0, atol=0)

    def theirs(np_params, values):
        ref, ref_init = numpyro_guide(autoguide.AutoDelta, model)
        tr = full_rows(handlers.trace(handlers.seed(handlers.substitute(ref, data=np_params), 0)).get_trace)()
        return ref_init, {n: tr[n]["value"] for n in sites}, numpyro_log_density(ref, np_params, values)

    ref_init, ref_point, ref_lp = run_jit(theirs, np_params, median)
    assert_same_shapes(np_params, ref_init)
    assert_close(median, ref_point, rtol=0, atol=0)
    assert float(ref_lp) == 0.0
    back = run_jit(lambda p: jg.from_numpyro_params(guide, p, jax.random.PRNGKey(5)), np_params)
    assert_close(guide.median(back), median, rtol=1e-4, atol=1e-4)


# NumPyro's own code for most of these distributions and transforms (Dirichlet,
# MultivariateNormal, LKJ, Wishart, array-bounded Uniform / TruncatedNormal,
# AutoNormal.quantiles) broadcasts across ranks, so models drawn from this menu
# run with rank promotion allowed (conftest.py's opt-in marker).
@pytest.mark.allow_rank_promotion
@SETTINGS
@given(model_specs())
def test_guides_on_generated_models(spec_sub):
    spec, subsample = spec_sub
    model = make_model(spec, subsample)
    sites = model_sites(model)
    check_auto_normal(model, sites)
    check_auto_delta(model, sites)
