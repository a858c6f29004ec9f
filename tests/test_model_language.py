"""Model-language features NumPyro's SVI runs, each against NumPyro itself.

* concrete data: a model that reads data values in Python (NumPyro's
  ``ucbadmit`` example, an ``int(...)`` plate size, an ``if`` on a value) fits
  through ``fit(..., static_argnames=...)`` or the automatic fallback, to the
  Adam trajectory of NumPyro's ``SVI`` on the same data;
* models behind a ``functools.wraps`` wrapper that binds arguments;
* subsampled plates whose size or rows change after ``init`` where NumPyro
  allows it (numpyro#1739), with the refusals that prevent a wrong answer kept;
* deterministic sites (a ``LocScaleReparam``'s ``theta``) in ``median``,
  ``quantiles`` and ``sample`` of both guides, equal to NumPyro's.

AutoDelta with ``init_to_feasible`` makes the ELBO deterministic (no draws),
so our fit and NumPyro's SVI (same ``numpyro.optim.Adam``) must take the same
steps up to float32 rounding.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro import handlers
from numpyro.infer import SVI, Trace_ELBO, autoguide
from numpyro.infer.reparam import LocScaleReparam

import jaxguides as jg

KEY = jax.random.PRNGKey(0)


def numpyro_side():
    """NumPyro is not rank-promotion clean; our code runs under the conftest's "raise"."""
    return jax.numpy_rank_promotion("allow")


def numpyro_svi_losses(model, guide, args, num_steps, lr=0.05, kwargs=None):
    """NumPyro's ``svi.run`` (jitted body closing over the concrete args) -> (losses, params)."""
    with numpyro_side():
        svi = SVI(model, guide, numpyro.optim.Adam(lr), Trace_ELBO())
        result = svi.run(KEY, num_steps, *args, progress_bar=False, **(kwargs or {}))
    return np.asarray(result.losses), result.params


def assert_same_fit(result, guide, losses, np_params, rtol=2e-4):
    np.testing.assert_allclose(result.losses, losses, rtol=rtol, atol=1e-3)
    ours = jg.to_numpyro_params(guide, result.params)
    for name, value in np_params.items():
        np.testing.assert_allclose(ours[name], value, rtol=10 * rtol, atol=1e-4, err_msg=name)


# ---- 1. concrete data ---------------------------------------------------------------------------
def ucbadmit(dept, male, applications, admit=None):
    """After NumPyro's examples/ucbadmit.py: per-department varying intercepts and
    slopes (non-centred, LKJ correlation), binomial admissions. The number of
    departments is read from the data in Python."""
    v_mu = numpyro.sample("v_mu", dist.Normal(0.0, jnp.array([4.0, 1.0])).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(jnp.ones(2)).to_event(1))
    l_rho = numpyro.sample("L_Rho", dist.LKJCholesky(2, concentration=2.0))
    scale_tril = sigma[..., None] * l_rho
    num_dept = len(np.unique(dept))  # concrete: a Python int from the data
    z = numpyro.sample("z", dist.Normal(jnp.zeros((num_dept, 2)), 1.0).to_event(2))
    v = (scale_tril @ z.T).T
    logits = v_mu[0] + v[dept, 0] + (v_mu[1] + v[dept, 1]) * male
    if admit is None:  # as the example does, a Delta site records the probabilities to predict
        probs = jax.nn.sigmoid(logits)
        numpyro.sample("probs", dist.Delta(probs), obs=probs)
    with numpyro.plate("rows", len(dept)):
        numpyro.sample("admit", dist.Binomial(applications, logits=logits), obs=admit)


def ucb_data(seed=0):
    """Synthetic data of UCBadmit's shape: 12 rows, 6 departments x (male, female)."""
    rng = np.random.default_rng(seed)
    dept = np.repeat(np.arange(6), 2)
    male = np.tile(np.array([1.0, 0.0]), 6)
    applications = rng.integers(20, 900, 12)
    rate = 1.0 / (1.0 + np.exp(-(rng.normal(0.0, 1.0, 6)[dept] - 0.1 * male)))
    admit = rng.binomial(applications, rate)
    return dept, male, applications.astype(np.float32), admit.astype(np.float32)


UCB = ucb_data()


def grouped(group, y):
    """A plate size through ``int(...)`` of the data (TracerIntegerConversionError when traced)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    with numpyro.plate("groups", int(group.max()) + 1):
        a = numpyro.sample("a", dist.Normal(mu, 1.0))
    with numpyro.plate("rows", y.shape[0]):
        numpyro.sample("y", dist.Normal(a[group], 1.0), obs=y)


def branching(y):
    """A Python ``if`` on a data value, as NumPyro's mortality example branches (TracerBoolConversionError)."""
    scale = 10.0 if (y > 5.0).any() else 1.0
    mu = numpyro.sample("mu", dist.Normal(0.0, scale))
    s = numpyro.sample("s", dist.LogNormal(0.0, 1.0))
    with numpyro.plate("rows", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, s), obs=y)


GROUP = np.array([0, 0, 1, 1, 2, 2, 2, 3])
Y8 = np.array([0.5, 1.0, 2.5, 3.0, -1.0, -0.5, 0.0, 7.0])
CONCRETE_CASES = {
    "ucbadmit": (ucbadmit, UCB, ("dept",)),
    "int_plate_size": (grouped, (GROUP, Y8), ("group",)),
    "if_on_value": (branching, (Y8,), (0,)),
}


@pytest.mark.allow_rank_promotion  # NumPyro's LKJCholesky / Binomial broadcast implicitly
@pytest.mark.parametrize("name", list(CONCRETE_CASES))
def test_concrete_data_fits_as_numpyro_svi(name):
    model, args, static = CONCRETE_CASES[name]
    guide = jg.AutoDelta(model, init_loc_fn=jg.init_to_feasible)
    ng = autoguide.AutoDelta(model, init_loc_fn=jg.init_to_feasible)
    losses, np_params = numpyro_svi_losses(model, ng, args, 100)
    opt = numpyro.optim.Adam(0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # named: no fallback, no warning
        named = jg.fit(model, guide, opt, KEY, 100, *args, progress_bar=False, static_argnames=static)
    assert_same_fit(named, guide, losses, np_params)
    with pytest.warns(UserWarning, match="static_argnames") as record:  # the fallback
        fallback = jg.fit(model, guide, opt, KEY, 100, *args, progress_bar=False)
    message = str(record[0].message)
    assert "compiles anew" in message and ("dept" in message or "group" in message or "y" in message)
    assert_same_fit(fallback, guide, losses, np_params)  # more constants: other float rounding, same fit


@pytest.mark.allow_rank_promotion
def test_ucbadmit_autonormal_elbo_matches_numpyro():
    """AutoNormal's ELBO (LKJ and positive sites: Jacobians) on the fitted params,
    against NumPyro's Trace_ELBO on the same params, within 5 Monte Carlo errors."""
    guide = jg.AutoNormal(ucbadmit)
    result = jg.fit(ucbadmit, guide, optax.adam(0.02), KEY, 150, *UCB, progress_bar=False, static_argnames=("dept",))
    np_params = jg.to_numpyro_params(guide, result.params)
    ng = autoguide.AutoNormal(ucbadmit)  # set up inside the jitted loss (eagerly it takes seconds)
    n = 1000
    loss = jg.elbo_loss(ucbadmit, guide)
    ours = np.asarray(jax.jit(jax.vmap(lambda k: loss(result.params, k, *UCB)))(jax.random.split(KEY, n)))
    with numpyro_side():
        elbo = Trace_ELBO(num_particles=n)
        theirs = float(jax.jit(lambda p: elbo.loss(jax.random.PRNGKey(1), p, ucbadmit, ng, *UCB))(np_params))
    assert abs(ours.mean() - theirs) < 5 * ours.std() * np.sqrt(2.0 / n)


@pytest.mark.allow_rank_promotion
def test_concrete_data_in_fit_many_svi_and_checkpoints(tmp_path):
    guide = jg.AutoDelta(ucbadmit, init_loc_fn=jg.init_to_feasible)
    opt = numpyro.optim.Adam(0.05)
    one = jg.fit(ucbadmit, guide, opt, KEY, 40, *UCB, progress_bar=False, static_argnames=("dept",))
    # fit_many: the concrete argument is shared by the K fits, the others batched
    batched = [np.stack([a] * 2) for a in UCB[1:]]
    many = jg.fit_many(
        ucbadmit, guide, opt, jnp.stack([KEY, KEY]), 40, UCB[0], *batched,
        batched_args=True, progress_bar=False, static_argnames=("dept",),
    )  # fmt: skip
    np.testing.assert_allclose(many.losses, np.stack([one.losses] * 2), rtol=1e-5)
    # a checkpointed run, killed at step 20 and resumed, ends as the uninterrupted one (fallback path)
    path = tmp_path / "ucb.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        whole = jg.fit(ucbadmit, guide, opt, KEY, 40, *UCB, progress_bar=False)
        jg.fit(ucbadmit, guide, opt, KEY, 20, *UCB, progress_bar=False, checkpoint=path)
        resumed = jg.fit(ucbadmit, guide, opt, KEY, 40, *UCB, progress_bar=False, checkpoint=path)
    np.testing.assert_array_equal(resumed.losses, whole.losses)
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(whole.state)):
        np.testing.assert_array_equal(a, b)
    # svi: the step under jit with the data closed over, as the docs show; same steps as fit
    algo = jg.svi(ucbadmit, guide, optax.adam(0.05))
    state = algo.init(KEY, *UCB)
    state, info = jax.jit(lambda s: jax.lax.scan(lambda s, _: algo.step(s, *UCB), s, length=40))(state)
    np.testing.assert_allclose(info.loss, one.losses, rtol=1e-4, atol=1e-3)  # optax's Adam: its own rounding


@pytest.mark.allow_rank_promotion
def test_errors_that_remain_name_the_argument_and_the_option():
    guide = jg.AutoDelta(ucbadmit)
    dept = jnp.asarray(UCB[0])  # a jax.Array is not made concrete behind the user's back
    with pytest.raises(jg.ModelTraceError, match=r"dept \(args\[0\]\).*static_argnames=\('dept',\)"):
        jg.fit(ucbadmit, guide, optax.adam(0.05), KEY, 5, dept, *UCB[1:], progress_bar=False)
    algo = jg.svi(ucbadmit, guide, optax.adam(0.05))
    state = algo.init(KEY, *UCB)
    with pytest.raises(jg.ModelTraceError, match=r"dept \(args\[0\]\).*close over it"):
        jax.jit(algo.step)(state, *UCB)
    with pytest.raises(ValueError, match="'dep'"):
        jg.fit(ucbadmit, guide, optax.adam(0.05), KEY, 5, *UCB, progress_bar=False, static_argnames=("dep",))


# ---- 2. models behind a functools wrapper that binds arguments ----------------------------------
def batched_model(x, batch):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    s = numpyro.sample("s", dist.LogNormal(0.0, 1.0))
    numpyro.deterministic("mu2", 2.0 * mu)
    with numpyro.plate("rows", batch):
        numpyro.sample("x", dist.Normal(mu, s), obs=x)


X6 = jnp.array([0.3, -0.2, 1.5, 0.9, 0.1, 1.1])
WRAPPED = functools.update_wrapper(functools.partial(batched_model, batch=6), batched_model)


@pytest.mark.parametrize("guide_cls", [jg.AutoNormal, jg.AutoDelta])
def test_functools_wrapped_model_fits_as_numpyro_svi(guide_cls):
    guide = guide_cls(WRAPPED, init_loc_fn=jg.init_to_feasible)
    params = guide.init(KEY, X6)
    assert set(params.sites.names) == {"mu", "s"}
    assert set(guide.median(params, X6)) == {"mu", "s", "mu2"}  # deterministic sites: the call binds
    if guide_cls is jg.AutoDelta:  # the same steps as NumPyro's SVI on the same wrapped model
        losses, np_params = numpyro_svi_losses(
            WRAPPED, autoguide.AutoDelta(WRAPPED, init_loc_fn=jg.init_to_feasible), (X6,), 100
        )
        result = jg.fit(WRAPPED, guide, numpyro.optim.Adam(0.05), KEY, 100, X6, progress_bar=False)
        assert_same_fit(result, guide, losses, np_params)
    # a genuinely wrong call is still refused with the model's real signature
    with pytest.raises(TypeError, match="cannot be called with these args.*'x'"):
        guide.init(KEY)
    with pytest.raises(TypeError, match="cannot be called with these args"):
        guide.init(KEY, X6, size=3)


# ---- 3. subsampled plates after init ------------------------------------------------------------
N = 200
DATA = jnp.asarray(np.random.default_rng(1).normal(1.0, 1.0, N), jnp.float32)


def observed_plate(data, subsample_size=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", N, subsample_size=subsample_size) as idx:
        numpyro.sample("obs", dist.Normal(mu, 1.0), obs=data[idx])


def local_plate(data, idx):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", N, subsample_size=len(idx)) as rows:
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("obs", dist.Normal(z, 1.0), obs=data[rows])


def chosen_rows(data, idx):
    """Pyro's pattern: the user chooses the minibatch rows."""
    with handlers.substitute(data={"data": idx}):
        return numpyro.plate("data", N, subsample_size=len(idx))


def numpyro_loss(model, ng, np_params, args, kwargs=None):
    with numpyro_side():
        return float(Trace_ELBO().loss(jax.random.PRNGKey(3), np_params, model, ng, *args, **(kwargs or {})))


def test_full_data_loss_of_an_observed_subsampled_plate_matches_numpyro():
    guide = jg.AutoDelta(observed_plate)
    params = guide.init(KEY, DATA, subsample_size=50)
    params = jg.from_numpyro_params(guide, {"mu_auto_loc": jnp.array(0.7)}, KEY, DATA, subsample_size=50)
    ng = autoguide.AutoDelta(observed_plate)
    with numpyro_side(), handlers.seed(rng_seed=0):
        ng(DATA, subsample_size=50)
    np_params = jg.to_numpyro_params(guide, params)
    loss = jg.elbo_loss(observed_plate, guide)
    full = float(jax.jit(loss)(params, KEY, DATA))  # subsample_size=None: the full data
    np.testing.assert_allclose(full, numpyro_loss(observed_plate, ng, np_params, (DATA,)), rtol=1e-5)
    exact = -(dist.Normal(0.0, 1.0).log_prob(0.7) + dist.Normal(0.7, 1.0).log_prob(DATA).sum())
    np.testing.assert_allclose(full, exact, rtol=1e-5)
    # another subsample size: the plate draws its own 20 rows, scaled by N / 20 (unbiased)
    seen = []

    def spy(data, subsample_size=None):
        with handlers.trace() as tr:
            observed_plate(data, subsample_size)
        seen.append(tr["data"]["value"].shape[0])

    jax.jit(jg.elbo_loss(spy, jg.AutoDelta(spy)), static_argnums=3)(
        jg.AutoDelta(spy).init(KEY, DATA, 50), KEY, DATA, 20
    )
    assert seen[-1] == 20
    n = 2000
    draws = np.asarray(jax.jit(jax.vmap(lambda k: loss(params, k, DATA, 20)))(jax.random.split(KEY, n)))
    assert abs(draws.mean() - full) < 5 * draws.std() / np.sqrt(n) < 0.02 * full


@pytest.mark.parametrize("rows", [50, 30])
def test_create_plates_minibatch_rows_match_numpyro(rows):
    """User-chosen rows through create_plates, a last smaller batch included: the
    guide gathers those rows of its full-size params, as NumPyro's does."""
    idx0, idx = jnp.arange(50), jnp.asarray(np.random.default_rng(2).permutation(N)[:rows])
    guide = jg.AutoDelta(local_plate, create_plates=chosen_rows)
    params = guide.init(KEY, DATA, idx0)
    params = jax.tree.map(lambda v: v + 0.3 * jnp.sin(jnp.arange(v.size).reshape(v.shape)), params)
    ng = autoguide.AutoDelta(local_plate, create_plates=chosen_rows)
    with numpyro_side(), handlers.seed(rng_seed=0):
        ng(DATA, idx0)
    np_params = jg.to_numpyro_params(guide, params)
    ours = float(jax.jit(jg.elbo_loss(local_plate, guide))(params, KEY, DATA, idx))
    np.testing.assert_allclose(ours, numpyro_loss(local_plate, ng, np_params, (DATA, idx)), rtol=1e-5)
    # log_prob of values at this minibatch's size, on those rows (AutoNormal: a real density)
    normal = jg.AutoNormal(local_plate, create_plates=chosen_rows)
    nparams = normal.init(KEY, DATA, idx0)
    values = {"mu": jnp.array(0.2), "z": jnp.linspace(-1.0, 1.0, rows)}
    nng = autoguide.AutoNormal(local_plate, create_plates=chosen_rows)
    with numpyro_side(), handlers.seed(rng_seed=0):
        nng(DATA, idx0)
        theirs, _ = numpyro.infer.util.log_density(
            nng, (DATA, idx), {}, {**jg.to_numpyro_params(normal, nparams), **values}
        )
    np.testing.assert_allclose(normal.log_prob(nparams, values, DATA, idx), theirs, rtol=1e-5)


def test_refusals_that_prevent_a_wrong_answer_are_kept():
    def local(data, subsample_size=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", data.shape[0], subsample_size=subsample_size) as idx:
            z = numpyro.sample("z", dist.Normal(mu, 1.0))
            numpyro.sample("obs", dist.Normal(z, 1.0), obs=data[idx])

    guide = jg.AutoNormal(local)
    params = guide.init(KEY, DATA, 50)
    loss = jg.elbo_loss(local, guide)
    with pytest.raises(
        jg.SiteError, match="size 300.*size 200 at guide.init.*'z'"
    ) as info:  # the params are of size 200
        loss(params, KEY, jnp.ones(300), 50)
    assert info.value.site == "z"
    with pytest.raises(jg.SiteError, match="subsample 20.*50 rows"):  # the guide's rows are init's 50
        loss(params, KEY, DATA, 20)
    with pytest.raises(jg.SiteError, match="subsample 200.*create_plates"):  # the full data, from 50 rows
        loss(params, KEY, DATA)
    # the fix the message names: create_plates returning the plate at full size
    full_guide = jg.AutoNormal(local, create_plates=lambda data, subsample_size=None: numpyro.plate("data", N))
    assert np.isfinite(loss.__class__(local, full_guide)(params, KEY, DATA))


# ---- 4. deterministic sites ---------------------------------------------------------------------
J = 8
SIGMA = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
Y_SCHOOLS = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])


def eight_schools(J, sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", J):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


REPARAMED = handlers.reparam(eight_schools, config={"theta": LocScaleReparam(centered=0)})
SCHOOLS = (J, SIGMA, Y_SCHOOLS)


def perturbed(guide):
    params = guide.init(KEY, *SCHOOLS)
    return jax.tree.map(lambda v: v + 0.4 * jnp.cos(1.0 + jnp.arange(v.size).reshape(v.shape)), params)


def test_reparam_deterministic_sites_match_numpyro_autonormal():
    guide = jg.AutoNormal(REPARAMED)
    params = perturbed(guide)
    assert params.sites.deterministic == ("theta",)
    ng = autoguide.AutoNormal(REPARAMED)
    with numpyro_side(), handlers.seed(rng_seed=0):
        ng(*SCHOOLS)
    np_params = jg.to_numpyro_params(guide, params)
    qs = jnp.array([0.1, 0.5, 0.8])
    with numpyro_side():
        median, quantiles = ng.median(np_params), ng.quantiles(np_params, qs)
    ours_median, ours_q = guide.median(params, *SCHOOLS), guide.quantiles(params, qs, *SCHOOLS)
    for name in ("mu", "tau", "theta_decentered", "theta"):
        np.testing.assert_allclose(ours_median[name], median[name], rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(ours_q[name], quantiles[name], rtol=1e-5, atol=1e-6, err_msg=name)
    draws = guide.sample(params, KEY, *SCHOOLS, sample_shape=(5,))
    np.testing.assert_allclose(
        draws["theta"], draws["mu"][:, None] + draws["tau"][:, None] * draws["theta_decentered"], rtol=1e-5
    )
    # without the model's args the model cannot run: latents only, with a warning naming the site
    with pytest.warns(UserWarning, match=r"\['theta'\].*args"):
        assert set(guide.median(params)) == {"mu", "tau", "theta_decentered"}
    with pytest.raises(TypeError, match="cannot be called with these args"):
        guide.median(params, J, SIGMA, Y_SCHOOLS, 1.0)


def test_reparam_deterministic_sites_of_autodelta_match_numpyro():
    guide = jg.AutoDelta(REPARAMED)
    params = perturbed(guide)
    ng = autoguide.AutoDelta(REPARAMED)
    with numpyro_side(), handlers.seed(rng_seed=0):
        ng(*SCHOOLS)
    np_params = jg.to_numpyro_params(guide, params)
    with numpyro_side():  # NumPyro's AutoDelta has them in sample_posterior (its median has latents only)
        theirs = ng.sample_posterior(jax.random.PRNGKey(1), np_params, *SCHOOLS, sample_shape=(3,))
    median, draws = guide.median(params, *SCHOOLS), guide.sample(params, KEY, *SCHOOLS, sample_shape=(3,))
    np.testing.assert_allclose(median["theta"], theirs["theta"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(draws["theta"], theirs["theta"], rtol=1e-5, atol=1e-6)
    assert set(median) == set(draws) == {"mu", "tau", "theta_decentered", "theta"}


def test_deterministic_sites_use_the_fitted_model_params():
    """A deterministic site of a numpyro.param is computed with the fitted value, as
    NumPyro's Predictive on the same params has it (NumPyro's own
    AutoDelta.sample_posterior runs the model with the param's init value)."""

    def model(y):
        w = numpyro.param("w", 1.0, constraint=dist.constraints.positive)
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        numpyro.deterministic("d", w * mu)
        numpyro.sample("y", dist.Normal(w * mu, 1.0), obs=y)

    y = jnp.array([3.0, 4.0])
    guide = jg.AutoDelta(model)
    result = jg.fit(model, guide, optax.adam(0.05), KEY, 200, y, progress_bar=False)
    w = result.params.model_param_values["w"]
    assert abs(float(w) - 1.0) > 0.1  # trained away from its init
    ng = autoguide.AutoDelta(model)
    with numpyro_side():
        np_params = jg.to_numpyro_params(guide, result.params)
        predictive = numpyro.infer.Predictive(model, guide=ng, params=np_params, num_samples=1)
        theirs = predictive(jax.random.PRNGKey(1), y)["d"][0]
    for out in (guide.median(result.params, y), guide.sample(result.params, KEY, y)):
        np.testing.assert_allclose(out["d"], w * out["mu"], rtol=1e-6)
        np.testing.assert_allclose(out["d"], theirs, rtol=1e-5)
