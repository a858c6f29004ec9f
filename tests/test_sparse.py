"""Row-sparse Adam (jaxguides/optim/sparse.py): against dense optax.adam, and in a fit."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import jaxguides as jg
from jaxguides.optim.sparse import Rows, row_spec
from jaxguides.subsample.epoch import batch_indices

K, B = 8, 3


def _schedule(steps, seed=0):
    """Per step: a gradient for every element, and B distinct rows of ``z``."""
    r = np.random.RandomState(seed)
    return [
        (r.randn(K).astype(np.float32), r.randn(2).astype(np.float32), r.choice(K, B, replace=False))
        for _ in range(steps)
    ]


def _steppers(opt_sparse, opt_dense):
    @jax.jit
    def sparse(params, state, grads, rows):
        spec = [Rows(0, rows) if x.shape != params[k].shape or k == "z" else None for k, x in sorted(grads.items())]
        u, state = opt_sparse.update(grads, state, params, rows=spec)
        return jg.apply_rows(params, u, spec), state

    @jax.jit
    def dense(params, state, grads):
        u, state = opt_dense.update(grads, state, params)
        return optax.apply_updates(params, u), state

    return sparse, dense


def _run(opt_sparse, opt_dense, steps, seed=0):
    """Feed the same row gradients to sparse (rows) and dense (zeros elsewhere) Adam."""
    sparse, dense = _steppers(opt_sparse, opt_dense)
    params = {"g": jnp.zeros(2), "z": jnp.zeros(K)}
    sp, dp = params, params
    ss, ds = opt_sparse.init(params), opt_dense.init(params)
    out = []
    for gz, gg, rows in _schedule(steps, seed):
        sp_new, ss = sparse(sp, ss, {"g": jnp.asarray(gg), "z": jnp.asarray(gz[rows])}, jnp.asarray(rows))
        dp, ds = dense(dp, ds, {"g": jnp.asarray(gg), "z": jnp.zeros(K).at[rows].set(gz[rows])})
        out.append((sp, sp_new, ss, dp, ds, rows))
        sp = sp_new
    return out


def test_without_rows_it_is_optax_adam():
    opt, ref = jg.sparse_adam(0.05), optax.adam(0.05)
    p = q = {"a": jnp.zeros(3), "b": jnp.ones((2, 2))}
    s, t = opt.init(p), ref.init(q)
    r = np.random.RandomState(1)
    for _ in range(30):
        g = {"a": jnp.asarray(r.randn(3), jnp.float32), "b": jnp.asarray(r.randn(2, 2), jnp.float32)}
        u, s = opt.update(g, s, p)
        v, t = ref.update(g, t, q)
        p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
    np.testing.assert_array_equal(s.mu["a"], t[0].mu["a"])  # the moments bit for bit
    np.testing.assert_array_equal(s.nu["b"], t[0].nu["b"])
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q)):  # params to rounding (1 ulp per step)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_step_count_correction_without_momentum_equals_dense_adam():
    """b1 = 0: no momentum tail, so a row's update depends only on v decayed over the steps
    it sat out (b2 ** gap) and the global-step bias correction -- exactly dense Adam."""
    for _sp, sp_new, _, dp, _, _ in _run(jg.sparse_adam(0.1, b1=0.0), optax.adam(0.1, b1=0.0), 40):
        for a, b in zip(jax.tree.leaves(sp_new), jax.tree.leaves(dp)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_moments_are_dense_adams_lazily():
    """Touched rows hold dense Adam's moments; the others, decayed by b ** (count - last), do too."""
    for _, _, ss, _, ds, rows in _run(jg.sparse_adam(0.1), optax.adam(0.1), 40):
        dense = ds[0]  # ScaleByAdamState
        np.testing.assert_allclose(ss.mu["z"][rows], dense.mu["z"][rows], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(ss.nu["z"][rows], dense.nu["z"][rows], rtol=1e-5, atol=1e-9)
        gap = (ss.count - ss.last["z"]).astype(jnp.float32)
        np.testing.assert_allclose(ss.mu["z"] * 0.9**gap, dense.mu["z"], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(ss.nu["z"] * 0.999**gap, dense.nu["z"], rtol=1e-4, atol=1e-9)
        np.testing.assert_array_equal(ss.last["z"][rows], ss.count)
        np.testing.assert_array_equal(ss.mu["g"], dense.mu["g"])  # a dense leaf is plain Adam


def test_untouched_rows_keep_their_values():
    for sp, sp_new, _, _, _, rows in _run(jg.sparse_adam(0.1), optax.adam(0.1), 20):
        rest = np.setdiff1d(np.arange(K), rows)
        np.testing.assert_array_equal(sp_new["z"][rest], sp["z"][rest])
        assert np.all(sp_new["z"][rows] != sp["z"][rows])


def test_momentum_tail_is_dense_adams_ghost_steps():
    """Once bias corrections have converged, the tail applied at a row's step equals what
    dense Adam moves the row by on the following zero-gradient steps."""
    opt, ref = jg.sparse_adam(0.01, b2=0.9), optax.adam(0.01, b2=0.9)
    sparse, dense = _steppers(opt, ref)
    params = {"z": jnp.zeros(2)}
    sp, ss, dp, ds = params, opt.init(params), params, ref.init(params)
    for i in range(300):  # warm up the step count on row 0; row 1 is touched once, at the end
        row, g = (0, 1.0) if i < 299 else (1, -2.0)
        sp, ss = sparse(sp, ss, {"z": jnp.array([g])}, jnp.array([row]))
        dp, ds = dense(dp, ds, {"z": jnp.zeros(2).at[row].set(g)})
    for _ in range(400):  # dense Adam's ghost steps on row 1
        dp, ds = dense(dp, ds, {"z": jnp.zeros(2)})
    np.testing.assert_allclose(sp["z"][1], dp["z"][1], rtol=1e-4)


# ---- in a fit ------------------------------------------------------------------------------
def hierarchical(y, sigma):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfNormal(5.0))
    with numpyro.plate("units", y.shape[0], subsample_size=10) as idx:
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma[idx]), obs=y[idx])


def _data(k=100):
    r = np.random.RandomState(0)
    sigma = 0.5 + r.rand(k)
    y = 3.0 + 2.0 * r.randn(k) + sigma * r.randn(k)
    return jnp.asarray(y, jnp.float32), jnp.asarray(sigma, jnp.float32)


def test_fit_quality_equals_dense_adam():
    y, sigma = _data()
    guide = jg.AutoNormal(hierarchical)
    fits = {
        name: jg.fit(hierarchical, guide, opt, jax.random.PRNGKey(0), 2000, y, sigma, progress_bar=False)
        for name, opt in (("dense", optax.adam(0.03)), ("sparse", jg.sparse_adam(0.03)))
    }
    dense, sparse = (guide.median(fits[n].params) for n in ("dense", "sparse"))
    scale = fits["dense"].params.scale["theta"]
    assert float(jnp.mean(scale)) > 0.3  # a posterior sd to compare with
    assert float(jnp.mean(jnp.abs(sparse["theta"] - dense["theta"]))) < 0.15 * float(jnp.mean(scale))
    assert abs(float(sparse["mu"] - dense["mu"])) < 0.3
    assert abs(float(sparse["tau"] / dense["tau"]) - 1) < 0.2
    final = {n: fits[n].losses[-200:].mean() for n in fits}
    assert abs(final["sparse"] - final["dense"]) < 0.02 * abs(final["dense"])
    assert np.corrcoef(np.asarray(dense["theta"]), np.asarray(y))[0, 1] > 0.9  # it did fit


def test_steps_touch_only_their_batch_rows_and_visit_all_rows_per_epoch():
    y, sigma = _data()
    algo = jg.svi(hierarchical, jg.AutoNormal(hierarchical), jg.sparse_adam(0.03))
    state = jax.jit(algo.init)(jax.random.PRNGKey(1), y, sigma)
    step = jax.jit(algo.step)
    seen = []
    for _ in range(len(y) // 10):  # one epoch
        new, _ = step(state, y, sigma)
        rows = np.asarray(batch_indices(state.subsample, state.params.sites.plates)["units"])
        rest = np.setdiff1d(np.arange(len(y)), rows)
        after = dict(jax.tree_util.tree_flatten_with_path((new.params, new.opt_state))[0])
        for path, a in jax.tree_util.tree_flatten_with_path((state.params, state.opt_state))[0]:
            if a.shape == (len(y),):  # theta's leaves (loc, raw_scale; mu, nu, last)
                np.testing.assert_array_equal(np.asarray(a)[rest], np.asarray(after[path])[rest])
                assert np.all(np.asarray(a)[rows] != np.asarray(after[path])[rows]), path
        assert float(new.params.loc["mu"]) != float(state.params.loc["mu"])  # globals move densely
        seen.extend(rows)
        state = new
    np.testing.assert_array_equal(np.sort(seen), np.arange(len(y)))


def test_a_site_in_two_subsampled_plates_is_refused():
    def model():
        with numpyro.plate("a", 6, subsample_size=2, dim=-2), numpyro.plate("b", 5, subsample_size=2, dim=-1):
            numpyro.sample("z", dist.Normal(0.0, 1.0))

    params = jg.AutoNormal(model).init(jax.random.PRNGKey(0))
    with pytest.raises(NotImplementedError, match="'z' sits in 2 subsampled plates"):
        row_spec(params, {"a": jnp.arange(2), "b": jnp.arange(2)})


@pytest.mark.parametrize("kwargs", [{"learning_rate": 0.0}, {"learning_rate": 0.1, "b1": 1.0}])
def test_bad_hyperparameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        jg.sparse_adam(**kwargs)


def test_sparse_adam_updates_rows_of_a_guide_list_part():
    # the rows interface (params.leaf_sites) looks into an AutoGuideList's parts
    from numpyro import handlers

    k, b = 200, 20

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        with numpyro.plate("g", k, subsample_size=b) as idx:
            z = numpyro.sample("z", dist.Normal(mu, 1.0))
            numpyro.sample("y", dist.Normal(z, 0.5), obs=y[idx])

    y = 2.0 + 1.2 * jax.random.normal(jax.random.PRNGKey(0), (k,))
    guide = jg.AutoGuideList(
        [jg.AutoDelta(handlers.block(model, expose=["mu"])), jg.AutoNormal(handlers.block(model, hide=["mu"]))]
    )
    params = guide.init(jax.random.PRNGKey(0), y)
    spec = row_spec(params, {"g": jnp.arange(b)})
    assert [r is not None for r in spec] == [name == "z" for name in params.leaf_sites()] == [False, True, True]
    sparse = jg.fit(model, guide, jg.sparse_adam(0.05), jax.random.PRNGKey(1), 6000, y, progress_bar=False)
    dense = jg.fit(model, guide, optax.adam(0.05), jax.random.PRNGKey(1), 6000, y, progress_bar=False)
    ms, md = guide.median(sparse.params), guide.median(dense.params)
    exact = (y / 0.25 + md["mu"]) / 5.0  # z_k | mu, y: precision 1 + 4, mean (mu + 4 y_k) / 5
    sparse_err, dense_err = float(jnp.abs(ms["z"] - exact).mean()), float(jnp.abs(md["z"] - exact).mean())
    assert sparse_err < 0.25 and sparse_err < 1.3 * dense_err + 0.02, (sparse_err, dense_err)
    np.testing.assert_allclose(ms["mu"], md["mu"], atol=0.05)
