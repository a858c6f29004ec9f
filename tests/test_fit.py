"""The SVI loop: closed-form optima, agreement with NumPyro's SVI, the low-level
init/step pair, fit (chunks, progress bar, compilation cache, non-finite
guard), fit_many, and MAP-then-mean-field.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI as NumPyroSVI
from numpyro.infer import Trace_ELBO
from numpyro.infer.autoguide import AutoNormal as NumPyroAutoNormal
from numpyro.optim import optax_to_numpyro

import jaxguides as jg
from helpers.models import YC, conjugate


def _equal(a, b):
    """Bit-for-bit equality of two pytrees (same structure, same bytes)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _decay(lr, steps, final=0.02):
    return optax.adam(optax.exponential_decay(lr, steps, final))


# ---- closed-form optima -------------------------------------------------------------------


def test_normal_normal_posterior():
    guide = jg.AutoNormal(conjugate)
    loss = jg.elbo_loss(conjugate, guide, num_particles=8)  # less gradient noise: a tighter optimum
    result = jg.fit(
        conjugate, guide, _decay(0.05, 2000, 0.01), jax.random.PRNGKey(0), 2000, YC, loss=loss, progress_bar=False
    )
    prec = 1 / 2.0**2 + YC.shape[0]  # prior precision + n / sigma^2
    mean, sd = float(jnp.sum(YC)) / prec, prec**-0.5
    np.testing.assert_allclose(result.params.loc["mu"], mean, rtol=0.02)
    np.testing.assert_allclose(result.params.scale["mu"], sd, rtol=0.04)
    assert np.mean(result.losses[-300:]) < np.mean(result.losses[:300])


NOISE, PRIOR_SD = 0.5, 1.5


def linreg(x, y):
    b = numpyro.sample("b", dist.Normal(0.0, PRIOR_SD).expand([x.shape[1]]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ b, NOISE), obs=y)


def _regression_data():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(30, 3))
    x = np.stack([z[:, 0], z[:, 0] + 0.6 * z[:, 1], z[:, 2]], axis=1).astype(np.float32)  # correlated
    y = (x @ np.array([1.0, -0.7, 0.4]) + NOISE * rng.normal(size=30)).astype(np.float32)
    return x, y


def test_linear_regression_mean_field_optimum():
    x, y = _regression_data()
    guide = jg.AutoNormal(linreg)
    loss = jg.elbo_loss(linreg, guide, num_particles=16)
    result = jg.fit(
        linreg,
        guide,
        _decay(0.05, 3000, 0.01),
        jax.random.PRNGKey(1),
        3000,
        jnp.asarray(x),
        jnp.asarray(y),
        loss=loss,
        progress_bar=False,
    )
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    precision = np.eye(3) / PRIOR_SD**2 + xd.T @ xd / NOISE**2
    mean = np.linalg.solve(precision, xd.T @ yd / NOISE**2)
    mf_sd = 1 / np.sqrt(np.diag(precision))  # the mean-field optimum, not the marginal sd
    assert np.max(np.sqrt(np.diag(np.linalg.inv(precision))) / mf_sd) > 2  # differs from the marginal sd
    assert np.all(np.abs(np.asarray(result.params.loc["b"]) - mean) < 0.25 * mf_sd), (result.params.loc, mean)
    np.testing.assert_allclose(result.params.scale["b"], mf_sd, rtol=0.05)


def poisson_rate(counts):
    rate = numpyro.sample("rate", dist.Gamma(2.0, 1.0))
    scale = numpyro.sample("scale", dist.LogNormal(0.5, 0.8))  # no data: MAP is the prior mode
    with numpyro.plate("data", counts.shape[0]):
        numpyro.sample("counts", dist.Poisson(rate), obs=counts)
    return scale


COUNTS = jnp.array([3.0, 5.0, 2.0, 4.0, 6.0, 1.0])


def test_delta_finds_the_posterior_mode_in_constrained_space():
    guide = jg.AutoDelta(poisson_rate)
    result = jg.fit(
        poisson_rate, guide, _decay(0.05, 2000, 0.01), jax.random.PRNGKey(2), 2000, COUNTS, progress_bar=False
    )
    point = guide.median(result.params)
    # Gamma(2 + sum y, 1 + n) posterior: mode (a - 1) / b; LogNormal(m, s) mode exp(m - s^2).
    np.testing.assert_allclose(point["rate"], (2.0 + float(COUNTS.sum()) - 1) / (1.0 + COUNTS.shape[0]), rtol=1e-3)
    np.testing.assert_allclose(point["scale"], np.exp(0.5 - 0.8**2), rtol=1e-3)


# ---- agreement with NumPyro's own SVI ------------------------------------------------------
SIGMA8 = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
Y8 = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])


def eight_schools(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", sigma.shape[0]):
        theta = numpyro.sample("theta_t", dist.Normal(0.0, 1.0))
        numpyro.sample("obs", dist.Normal(mu + tau * theta, sigma), obs=y)


def test_eight_schools_agrees_with_numpyro_svi():
    """Same model, same init, same optax optimizer and steps, 8 seeds each: the fitted
    params of both libraries agree within their seed-to-seed spread."""
    k, steps = 8, 2000
    optimizer = _decay(0.05, steps)
    keys = jax.random.split(jax.random.PRNGKey(0), k)
    guide = jg.AutoNormal(eight_schools, init_loc_fn=jg.init_to_feasible)
    ours = jg.fit_many(eight_schools, guide, optimizer, keys, steps, SIGMA8, Y8, progress_bar=False)
    ours = jax.vmap(lambda p: jg.to_numpyro_params(guide, p))(ours.params)

    np_guide = NumPyroAutoNormal(eight_schools, init_loc_fn=jg.init_to_feasible)
    svi = NumPyroSVI(eight_schools, np_guide, optax_to_numpyro(optimizer), Trace_ELBO())

    def numpyro_fit(key):
        state = svi.init(key, SIGMA8, Y8)
        state, _ = jax.lax.scan(lambda s, _: svi.update(s, SIGMA8, Y8), state, length=steps)
        return svi.get_params(state)

    theirs = jax.jit(jax.vmap(numpyro_fit))(keys)
    assert set(ours) == set(theirs)
    for name in ours:
        a, b = np.asarray(ours[name], np.float64), np.asarray(theirs[name], np.float64)
        se = np.sqrt(a.var(0, ddof=1) / k + b.var(0, ddof=1) / k)
        site = name.rsplit("_auto_", 1)[0]
        floor = 0.05 * np.asarray(theirs[f"{site}_auto_scale"]).mean(0)  # 5% of a posterior sd
        assert np.all(np.abs(a.mean(0) - b.mean(0)) < 5 * se + floor), (name, a.mean(0), b.mean(0), se)
    # a sanity check that this is a real fit: tau's posterior median is well inside (0, 5)
    assert 1.0 < float(np.exp(np.mean(theirs["tau_auto_loc"]))) < 4.0


# ---- the low-level pair ---------------------------------------------------------------------
def _clone(tree):
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def test_low_level_init_step_are_pure():
    guide = jg.AutoNormal(conjugate)
    algo = jg.svi(conjugate, guide, optax.adam(0.05))
    assert isinstance(algo, jg.SVI)
    state = algo.init(jax.random.PRNGKey(0), YC)
    assert isinstance(state, jg.SVIState) and isinstance(state, tuple)
    assert state._fields[:4] == ("params", "opt_state", "rng_key", "step")
    assert int(state.step) == 0

    # jit, and purity: the same state steps to the same result, the input is not touched
    step = jax.jit(algo.step)
    before = _clone(state)
    s1, l1 = step(state, YC)
    s2, l2 = step(state, YC)
    _equal((s1, l1), (s2, l2))
    _equal(state, before)
    assert int(s1.step) == 1
    # the next step draws afresh: from the same params, step 1's loss is not step 0's
    _, l_next = step(s1._replace(params=state.params, opt_state=state.opt_state), YC)
    assert float(l_next.loss) != float(l1.loss)
    # the info: blackjax's (state, info), with the step's loss and whether it was applied
    assert isinstance(l1, jg.SVIInfo) and bool(l1.finite) and not bool(l1.skipped)

    # lax.scan over steps == a Python loop of jitted steps
    def body(s, _):
        s, info = algo.step(s, YC)
        return s, info.loss

    scanned, losses = jax.jit(lambda s: jax.lax.scan(body, s, length=50))(state)
    looped, looped_losses = state, []
    for _ in range(50):
        looped, info = step(looped, YC)
        looped_losses.append(info.loss)
    for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(looped)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses, np.stack(looped_losses), rtol=1e-5)
    assert int(scanned.step) == 50

    # donation: a donated state gives the same result
    donated = jax.jit(algo.step, donate_argnums=0)
    s3, l3 = donated(_clone(state), YC)
    _equal((s3, l3), (s1, l1))

    # vmap over states (K chains from K keys), each equal to its own unbatched run
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    states = jax.vmap(lambda k: algo.init(k, YC))(keys)
    states, batch_info = jax.jit(jax.vmap(lambda s: algo.step(s, YC)))(states)
    assert batch_info.loss.shape == (3,)
    for i in range(3):
        single, single_info = step(algo.init(keys[i], YC), YC)
        np.testing.assert_allclose(batch_info.loss[i], single_info.loss, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(states), jax.tree.leaves(single)):
            np.testing.assert_allclose(np.asarray(a)[i], b, rtol=1e-5, atol=1e-6)


def test_fit_equals_the_low_level_loop():
    guide, optimizer = jg.AutoNormal(conjugate), optax.adam(0.05)
    algo = jg.svi(conjugate, guide, optimizer)
    state = algo.init(jax.random.PRNGKey(3), YC)
    state, info = jax.lax.scan(lambda s, _: algo.step(s, YC), state, length=40)
    losses = info.loss
    result = jg.fit(conjugate, guide, optimizer, jax.random.PRNGKey(3), 40, YC, progress_bar=False)
    np.testing.assert_allclose(result.losses, losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(result.state), jax.tree.leaves(state)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---- fit --------------------------------------------------------------------------------------
def test_fit_result_and_determinism():
    guide, optimizer = jg.AutoNormal(conjugate), optax.adam(0.05)
    run = lambda **kw: jg.fit(conjugate, guide, optimizer, jax.random.PRNGKey(4), 300, YC, **kw)  # noqa: E731
    base = run(progress_bar=False)
    assert base.losses.shape == (300,) and np.all(np.isfinite(base.losses))
    assert int(base.state.step) == 300 and base.num_skipped == 0
    _equal(base.params, base.state.params)
    assert np.mean(base.losses[-30:]) < np.mean(base.losses[:30]) - 1.0
    for kwargs in (
        {"progress_bar": True},
        {"progress_bar": False, "chunk_size": 7},
        {"progress_bar": False, "chunk_size": 300},
        {"progress_bar": True, "chunk_size": 1},
    ):
        other = run(**kwargs)
        np.testing.assert_array_equal(other.losses, base.losses)
        _equal(other.state, base.state)
    different = jg.fit(conjugate, guide, optimizer, jax.random.PRNGKey(5), 300, YC, progress_bar=False)
    assert not np.array_equal(different.losses, base.losses)


def test_default_chunks_grow_by_time_and_share_one_compilation(loop_io):
    """By default the first chunk has 64 steps and later ones aim at ~0.25 s of
    work (at most 4,096 steps): a fast step is not dominated by the chunks' fixed
    cost, so the second chunk jumps straight there rather than growing by steps.
    A later fit of the same chunk starts at the rate measured, without the
    64-step probe. Any run length uses the same compilation."""
    jg.clear_caches()  # as in a fresh process: no rate known
    sizes = []

    def spy(state, end, dynamic, **static):
        sizes.append(int(end) - int(state.step))
        return real(state, end, dynamic, **static)

    real = loop_io(run_chunk=spy).run_chunk
    guide, optimizer = jg.AutoNormal(conjugate), optax.adam(0.05)
    jg.fit(conjugate, guide, optimizer, jax.random.PRNGKey(4), 20_000, YC, progress_bar=False)
    assert sizes[0] == 64 and sum(sizes) == 20_000
    assert max(sizes) <= 4096
    assert sizes[1] > 4 * sizes[0]  # a step of microseconds: 64 steps take ~1 ms, far under 0.25 s
    before = real._cache_size()
    sizes.clear()
    jg.fit(conjugate, guide, optimizer, jax.random.PRNGKey(4), 777, YC, progress_bar=False)
    assert real._cache_size() == before
    assert sizes == [777]  # the rate is known: one chunk, no probe


def test_final_checkpoint_written_once(tmp_path, loop_io):
    saved_at = []

    def spy(path, state, losses, skipped, *run):
        saved_at.append(int(state.step))
        return real(path, state, losses, skipped, *run)

    real = loop_io(save=spy).save
    guide, optimizer = jg.AutoNormal(conjugate), optax.adam(0.05)
    path = tmp_path / "run.ckpt"
    jg.fit(conjugate, guide, optimizer, jax.random.PRNGKey(4), 100, YC, progress_bar=False,
           checkpoint=path, checkpoint_every=25)  # fmt: skip
    assert saved_at == [25, 50, 75, 100]


@pytest.mark.parametrize("guide_cls", [jg.AutoNormal, jg.AutoDelta])  # init_to_feasible / init_to_median (draws)
def test_fit_zero_steps_returns_the_init(guide_cls):
    guide, optimizer, key = guide_cls(conjugate), optax.adam(0.05), jax.random.PRNGKey(4)
    result = jg.fit(conjugate, guide, optimizer, key, 0, YC, progress_bar=False)
    assert result.losses.shape == (0,)
    state = jg.svi(conjugate, guide, optimizer).init(key, YC)
    np.testing.assert_array_equal(result.state.rng_key, state.rng_key)
    for a, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6)  # fit's init is compiled, this one eager


@pytest.mark.parametrize(
    "kwargs",
    [{"num_steps": -1}, {"num_steps": 2.0}, {"on_nonfinite": "ignore"}, {"chunk_size": 0}, {"checkpoint_every": 0}],
)
def test_fit_bad_arguments(kwargs):
    args = {"num_steps": 10, **kwargs}
    with pytest.raises(ValueError):
        jg.fit(
            conjugate,
            jg.AutoNormal(conjugate),
            optax.adam(0.05),
            jax.random.PRNGKey(0),
            args.pop("num_steps"),
            YC,
            progress_bar=False,
            **args,
        )


def test_fit_compilation_is_cached():
    traces = []

    def counted(y):
        traces.append(1)  # runs only while JAX traces the model
        mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    optimizer = optax.adam(0.05)
    first = jg.fit(counted, jg.AutoNormal(counted), optimizer, jax.random.PRNGKey(0), 100, YC, progress_bar=False)
    assert len(traces) > 0
    n = len(traces)
    # the same objects and shapes, other data and key, an equal new guide: no retrace
    second = jg.fit(
        counted, jg.AutoNormal(counted), optimizer, jax.random.PRNGKey(1), 100, YC + 1.0, progress_bar=False
    )
    assert len(traces) == n
    assert not np.array_equal(first.losses, second.losses)
    # another shape does retrace (so the counter counts)
    jg.fit(counted, jg.AutoNormal(counted), optimizer, jax.random.PRNGKey(1), 100, jnp.ones(7), progress_bar=False)
    assert len(traces) > n


def test_fit_under_x64():
    with jax.enable_x64(True):
        y = jnp.asarray(np.asarray(YC, np.float64))
        result = jg.fit(
            conjugate, jg.AutoNormal(conjugate), optax.adam(0.05), jax.random.PRNGKey(0), 20, y, progress_bar=False
        )
        assert result.params.loc["mu"].dtype == jnp.float64
    assert np.all(np.isfinite(result.losses))


# ---- non-finite steps ---------------------------------------------------------------------
@jax.custom_jvp
def _grad_bomb(x, threshold):
    """0 in value; its derivative is NaN once x > threshold (a finite loss, a NaN gradient)."""
    return jnp.zeros_like(x)


@_grad_bomb.defjvp
def _grad_bomb_jvp(primals, tangents):
    x, threshold = primals
    return jnp.zeros_like(x), jnp.where(x > threshold, jnp.nan, 0.0) * tangents[0]


def blowup(threshold, kind):
    """An AutoDelta fit climbs x from 0 towards 2; past ``threshold`` the loss (or its
    gradient) is NaN. Below it, the loss does not depend on ``threshold``."""
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    numpyro.factor("pull", 2.0 * x)
    if kind == "loss":
        numpyro.factor("bad", jnp.where(x > threshold, jnp.nan, 0.0))
    else:
        numpyro.factor("bad", _grad_bomb(x, threshold))


BLOWUP_OPT = optax.sgd(0.1)


def _first_step_past(threshold, steps=30):
    """The step whose loss is evaluated at an x > threshold, from a run that never blows up."""
    algo = jg.svi(blowup, jg.AutoDelta(blowup), BLOWUP_OPT)
    state = algo.init(jax.random.PRNGKey(0), jnp.inf, "loss")
    xs = []
    for _ in range(steps):
        xs.append(float(state.params.loc["x"]))
        state, _ = algo.step(state, jnp.inf, "loss")
    return int(np.argmax(np.asarray(xs) > threshold))


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nonfinite_raises_with_last_finite_params(kind):
    guide, threshold = jg.AutoDelta(blowup), jnp.asarray(1.0)
    bad = _first_step_past(1.0)
    assert 3 < bad < 20
    with pytest.raises(jg.NonFiniteLossError) as info:
        jg.fit(blowup, guide, BLOWUP_OPT, jax.random.PRNGKey(0), 30, threshold, kind, progress_bar=False, chunk_size=4)
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert err.step == bad and f"step {bad}" in str(err)
    clean = jg.fit(blowup, guide, BLOWUP_OPT, jax.random.PRNGKey(0), bad, threshold, kind, progress_bar=False)
    _equal(err.params, clean.params)
    _equal(err.state, clean.state)
    np.testing.assert_array_equal(err.losses, clean.losses)
    assert np.all(np.isfinite(err.losses))
    assert float(guide.median(err.params)["x"]) > 1.0  # finite params that make the next step fail


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nonfinite_skip_never_writes_bad_params(kind):
    guide, threshold = jg.AutoDelta(blowup), jnp.asarray(1.0)
    bad = _first_step_past(1.0)
    result = jg.fit(
        blowup, guide, BLOWUP_OPT, jax.random.PRNGKey(0), 30, threshold, kind, progress_bar=False, on_nonfinite="skip"
    )
    # x is stuck just past the threshold: every later step is skipped
    assert result.num_skipped == 30 - bad
    assert int(result.state.step) == 30
    if kind == "loss":
        assert np.all(np.isfinite(result.losses[:bad])) and np.all(np.isnan(result.losses[bad:]))
    # params after the last finite step: `bad` steps of a run that never blows up
    clean = jg.fit(blowup, guide, BLOWUP_OPT, jax.random.PRNGKey(0), bad, jnp.asarray(np.inf), kind, progress_bar=False)
    _equal(result.params, clean.params)
    _equal(result.state.opt_state, clean.state.opt_state)


def noisy_blowup(threshold):
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    numpyro.factor("bad", jnp.where(x > threshold, jnp.nan, 0.0))


def test_nonfinite_skip_intermittent_matches_low_level_step():
    """Random draws of an AutoNormal guide cross the threshold now and then: fit skips
    exactly those steps, and equals a loop of the low-level step, which keeps params."""
    guide, optimizer, threshold, steps = jg.AutoNormal(noisy_blowup, init_scale=1.0), optax.adam(0.01), 1.5, 200
    result = jg.fit(
        noisy_blowup,
        guide,
        optimizer,
        jax.random.PRNGKey(0),
        steps,
        threshold,
        progress_bar=False,
        on_nonfinite="skip",
        chunk_size=32,
    )
    nan_steps = ~np.isfinite(result.losses)
    assert 5 < result.num_skipped < steps // 2
    assert result.num_skipped == nan_steps.sum()
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(result.state))

    algo = jg.svi(noisy_blowup, guide, optimizer)
    step = jax.jit(algo.step, static_argnums=1)
    state = algo.init(jax.random.PRNGKey(0), threshold)
    for i in range(steps):
        new, info = step(state, threshold)
        assert np.isfinite(info.loss) != nan_steps[i]
        assert bool(info.skipped) == nan_steps[i] == (not bool(info.finite))
        if not np.isfinite(info.loss):  # the low-level step keeps params and optimizer state
            _equal((new.params, new.opt_state), (state.params, state.opt_state))
            assert int(new.step) == int(state.step) + 1
        state = new
    for a, b in zip(jax.tree.leaves(result.state), jax.tree.leaves(state)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@jax.custom_jvp
def _pulled(b, pull):
    """0, whatever ``pull`` is, with gradient ``pull``: a finite loss whose gradient is not."""
    return jnp.zeros((), b.dtype)


@_pulled.defjvp
def _pulled_jvp(primals, tangents):
    b, pull = primals
    return _pulled(b, pull), jnp.sum(pull * tangents[0])


def two_vectors(pull_a, pull_b):
    a = numpyro.sample("a", dist.Normal(jnp.zeros(3), 1.0).to_event(1))
    b = numpyro.sample("b", dist.Normal(jnp.zeros(3), 1.0).to_event(1))
    numpyro.factor("pull", jnp.sum(pull_a * a) + _pulled(b, pull_b))  # d loss / d b = -pull_b


@pytest.mark.parametrize(
    "pull, usable",
    [
        (1e18, True),  # large, and so is its square (1e36): Adam can take it
        (1e20, False),  # finite, but its square overflows float32: Adam's nu would be inf for good
        (np.inf, False),
        (-np.inf, False),
        (np.nan, False),
    ],
)
def test_one_bad_gradient_element_refuses_the_whole_step(pull, usable):
    """Two sites of one shape, one element of one of them bad: the step is refused
    (params and Adam's moments as they were) exactly when that element or its square
    is not finite, whatever the loss says."""
    guide = jg.AutoDelta(two_vectors, init_loc_fn=jg.init_to_feasible)
    algo = jg.svi(two_vectors, guide, optax.adam(0.1))
    pull_a, pull_b = jnp.ones(3), jnp.array([0.0, 0.0, 0.0]).at[1].set(pull)
    state = algo.init(jax.random.PRNGKey(0), pull_a, pull_b)
    new, info = jax.jit(algo.step)(state, pull_a, pull_b)
    assert np.isfinite(info.loss)  # only the gradient can refuse the step
    assert bool(info.finite) == usable and bool(info.skipped) != usable  # the info says so
    assert int(new.step) == 1
    moved = not np.allclose(np.asarray(new.params.loc["a"]), np.asarray(state.params.loc["a"]))
    assert moved == usable
    if usable:
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(new.opt_state))
    else:
        _equal((new.params, new.opt_state), (state.params, state.opt_state))


# ---- fit_many -------------------------------------------------------------------------------
def test_fit_many_seeds_equal_single_fits():
    guide, optimizer, steps = jg.AutoNormal(conjugate), optax.adam(0.05), 150
    keys = jax.random.split(jax.random.PRNGKey(9), 3)
    many = jg.fit_many(conjugate, guide, optimizer, keys, steps, YC, progress_bar=False)
    assert many.losses.shape == (3, steps)
    assert many.params.loc["mu"].shape == (3,)
    for i in range(3):
        single = jg.fit(conjugate, guide, optimizer, keys[i], steps, YC, progress_bar=False)
        np.testing.assert_allclose(many.losses[i], single.losses, rtol=1e-5, atol=1e-5)
        for a, b in zip(jax.tree.leaves(many.state), jax.tree.leaves(single.state)):
            np.testing.assert_allclose(np.asarray(a)[i], b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(many.losses[0], many.losses[1])


@pytest.mark.parametrize("many", [False, True])
def test_progress_bar_counts_every_step_and_shows_the_loss_and_is_silent_when_off(capsys, many):
    guide, optimizer, steps = jg.AutoNormal(conjugate), optax.adam(0.05), 150

    def run(progress_bar):
        if many:
            keys = jax.random.split(jax.random.PRNGKey(0), 2)
            return jg.fit_many(conjugate, guide, optimizer, keys, steps, YC, progress_bar=progress_bar, chunk_size=64)
        return jg.fit(conjugate, guide, optimizer, jax.random.PRNGKey(0), steps, YC, progress_bar=progress_bar)

    quiet = run(False)
    assert capsys.readouterr().err == ""
    shown = run(True)
    bar = capsys.readouterr().err
    assert f"{steps}/{steps}" in bar and "loss (mean" in bar
    assert ": tracing" in bar.split("\r")[1]  # the phase, from the start ("compiling" unless cached)
    last = float(bar.rsplit("last=", 1)[1].split("]")[0])  # the final line: what the result holds
    np.testing.assert_allclose(last, np.mean(np.asarray(shown.losses)[..., -1]), rtol=1e-3)
    np.testing.assert_array_equal(quiet.losses, shown.losses)  # the bar changes nothing


def test_fit_many_batched_datasets():
    guide, optimizer, steps = jg.AutoNormal(conjugate), optax.adam(0.05), 150
    ys = jnp.stack([YC, YC + 3.0, YC - 2.0])
    keys = jax.random.split(jax.random.PRNGKey(9), 3)
    many = jg.fit_many(conjugate, guide, optimizer, keys, steps, ys, batched_args=True, progress_bar=False)
    for i in range(3):
        single = jg.fit(conjugate, guide, optimizer, keys[i], steps, ys[i], progress_bar=False)
        np.testing.assert_allclose(many.losses[i], single.losses, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(many.params.loc["mu"][i], single.params.loc["mu"], rtol=1e-5, atol=1e-6)
    # each member fitted its own data
    locs = np.asarray(many.params.loc["mu"])
    assert locs[1] > locs[0] + 1.5 and locs[2] < locs[0] - 1.0


def test_best_picks_the_lowest_final_loss():
    guide, steps = jg.AutoNormal(conjugate), 150
    # members start far apart: key 1 starts at a bad point, all get few steps of a small lr
    keys = jax.random.split(jax.random.PRNGKey(9), 4)
    many = jg.fit_many(
        conjugate,
        jg.AutoNormal(conjugate, init_loc_fn=jg.init_to_uniform(radius=6.0)),
        optax.adam(0.01),
        keys,
        steps,
        YC,
        progress_bar=False,
    )
    final = many.losses[:, -15:].mean(1)
    i = int(np.argmin(final))
    assert final.max() - final.min() > 1.0  # a real choice
    best = many.best()
    np.testing.assert_array_equal(best.losses, many.losses[i])
    _equal(best.params, jax.tree.map(lambda x: x[i], many.params))
    _equal(best.state, jax.tree.map(lambda x: x[i], many.state))
    # window=1: the last step only
    j = int(np.argmin(many.losses[:, -1]))
    np.testing.assert_array_equal(many.best(window=1).losses, many.losses[j])
    with pytest.raises(ValueError):
        jg.fit(conjugate, guide, optax.adam(0.01), keys[0], 10, YC, progress_bar=False).best()


# ---- MAP, then mean-field --------------------------------------------------------------------
def _map_point():
    delta = jg.AutoDelta(poisson_rate)
    map_fit = jg.fit(
        poisson_rate, delta, _decay(0.05, 2000, 0.01), jax.random.PRNGKey(2), 2000, COUNTS, progress_bar=False
    )
    return delta.median(map_fit.params)


def test_map_then_mean_field_init():
    point = _map_point()
    normal = jg.AutoNormal(poisson_rate, init_loc_fn=jg.init_to_value(values=point))
    params = normal.init(jax.random.PRNGKey(0), COUNTS)
    for name, value in normal.median(params).items():
        np.testing.assert_allclose(value, point[name], rtol=1e-6)


def test_map_then_mean_field_fit():
    point = _map_point()
    normal = jg.AutoNormal(poisson_rate, init_loc_fn=jg.init_to_value(values=point))
    result = jg.fit(poisson_rate, normal, optax.adam(0.01), jax.random.PRNGKey(0), 500, COUNTS, progress_bar=False)
    first = jg.fit(poisson_rate, normal, optax.adam(0.01), jax.random.PRNGKey(0), 0, COUNTS, progress_bar=False)
    np.testing.assert_allclose(normal.median(first.params)["rate"], point["rate"], rtol=1e-6)
    # the rate's posterior is tight: the mean-field median stays near the mode
    np.testing.assert_allclose(normal.median(result.params)["rate"], point["rate"], rtol=0.1)


def test_clear_caches_forgets_every_cache_and_changes_no_result():
    from jaxguides import _caches
    from jaxguides.loop import chunks

    guide = jg.AutoNormal(conjugate)
    first = jg.fit(conjugate, guide, optax.adam(0.05), jax.random.PRNGKey(4), 300, YC, progress_bar=False)
    assert chunks.run_chunk._cache_size() > 0 and any(len(c) for c in _caches._CACHES)
    jg.clear_caches()
    assert all(len(c) == 0 for c in _caches._CACHES)
    assert {c.name for c in _caches._CACHES} == {"optimizers", "chunk rates"}
    assert chunks.run_chunk._cache_size() == 0 and chunks.run_init._cache_size() == 0
    again = jg.fit(conjugate, guide, optax.adam(0.05), jax.random.PRNGKey(4), 300, YC, progress_bar=False)
    np.testing.assert_array_equal(again.losses, first.losses)
    _equal(again.state, first.state)


# ---- a loss that overflows float32 -------------------------------------------------------------------
KEY = jax.random.PRNGKey(0)


def _finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


def overflow():
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    numpyro.factor("grow", jnp.exp(x))  # pulls x up ever faster until exp(x) overflows


@pytest.mark.parametrize("guide_cls, optimizer", [(jg.AutoDelta, optax.sgd(0.1)), (jg.AutoNormal, optax.adam(2.0))])
def test_loss_that_overflows_stops_with_the_last_finite_params(guide_cls, optimizer, tmp_path):
    guide, path = guide_cls(overflow), tmp_path / "run.ckpt"
    with pytest.raises(jg.NonFiniteLossError) as info:
        jg.fit(overflow, guide, optimizer, KEY, 400, progress_bar=False, checkpoint=path, checkpoint_every=5)
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert 5 < err.step < 400 and f"step {err.step}" in str(err)
    assert _finite(err.params) and int(err.state.step) == err.step
    assert len(err.losses) == err.step and np.all(np.isfinite(err.losses))
    assert err.losses[-1] < -100.0  # it really was running away, not failing at once
    # the state on disk is the one attached to the error
    on_disk = jg.load_checkpoint(path, {"state": err.state, "losses": err.losses, "num_skipped": 0})["state"]
    for a, b in zip(jax.tree.leaves(on_disk), jax.tree.leaves(err.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # skipping: every later step is skipped, params never become non-finite
    result = jg.fit(overflow, guide, optimizer, KEY, 400, progress_bar=False, on_nonfinite="skip")
    assert result.num_skipped > 0 and _finite(result.params)


def test_loss_that_overflows_leaves_a_finite_optimizer_state():
    with pytest.raises(jg.NonFiniteLossError) as info:
        jg.fit(overflow, jg.AutoNormal(overflow), optax.adam(2.0), KEY, 400, progress_bar=False)
    assert _finite(info.value.state)
