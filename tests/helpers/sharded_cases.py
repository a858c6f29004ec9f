"""Sharded fits on 8 simulated CPU devices.

Not collected by the main suite (the name does not start with ``test_``):
``tests/test_sharding.py`` runs this file in its own pytest session with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``, so the rest of the
suite keeps one device. To run it by hand:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest tests/helpers/sharded_cases.py
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import jaxguides as jg
from jaxguides.loop.chunks import run_chunk as _run_chunk
from jaxguides.subsample.epoch import batch_indices
from jaxguides.subsample.indices import draw_indices

pytestmark = pytest.mark.skipif(
    jax.device_count() != 8, reason="run by tests/test_sharding.py with 8 simulated CPU devices"
)

MESH = Mesh(np.array(jax.devices()), ("batch",)) if jax.device_count() == 8 else None
PLATES = {"data": "batch"}
# Sharded vs one device, same key: only the order of float sums differs. Measured
# after 500 Adam steps: max |difference| of params 2.4e-7, of losses 3e-7 relative.
RTOL, ATOL = 1e-5, 1e-6
N, D, B = 64, 3, 16

_rng = np.random.default_rng(0)
X = _rng.normal(size=(N, D)).astype(np.float32)
Y_BIN = (_rng.uniform(size=N) < 1 / (1 + np.exp(-X @ np.array([1.0, -2.0, 0.5])))).astype(np.float32)
Y = (1.0 + 2.0 * X[:, :1] + 0.5 * _rng.normal(size=(N, 2))).astype(np.float32)


def logreg(x, y):
    """Global latents only."""
    with numpyro.plate("features", x.shape[1]):  # a plate that is not sharded: replicated
        beta = numpyro.sample("beta", dist.Normal(0.0, 1.0))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=x @ beta + b), obs=y)


def hier(x, y):
    """Global latents (mu, sigma) and local latents (z, s) in the sharded plate; two draws per row.

    Its MAP is well posed (no funnel), so AutoDelta's fit is not chaotic.
    """
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        s = numpyro.sample("s", dist.LogNormal(0.0, 0.5))
        loc = z + s * x[:, 0]
        numpyro.sample("y", dist.Normal(loc[:, None], sigma).to_event(1), obs=y)


def hier_sub(x, y):
    """As ``hier``, with the data plate subsampled (B rows a step)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0], subsample_size=B) as idx:
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("y", dist.Normal(z + x[idx, 0], 0.5), obs=y[idx, 0])


def hier_param(x, y):
    """As ``hier``, with the noise scale a point-estimated numpyro.param (replicated)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    sigma = numpyro.param("sigma", 1.0, constraint=dist.constraints.positive)
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("y", dist.Normal(z[:, None] + x[:, :1], sigma).to_event(1), obs=y)


CASES = {"logreg": (logreg, (X, Y_BIN)), "hier": (hier, (X, Y)), "hier_param": (hier_param, (X, Y))}


def _fit(model, guide, args, steps=100, **kw):
    kw.setdefault("chunk_size", 20)  # one chunk length throughout: fits of a model share their compilation
    return jg.fit(model, guide, optax.adam(1e-2), jax.random.PRNGKey(1), steps, *args, progress_bar=False, **kw)


def _assert_trees_close(a, b, rtol=RTOL, atol=ATOL):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---- sharded == one device ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("case", "guide_cls"),
    [("logreg", jg.AutoNormal), ("hier", jg.AutoNormal), ("hier", jg.AutoDelta), ("hier_param", jg.AutoNormal)],
)
def test_sharded_fit_matches_one_device(case, guide_cls):
    model, args = CASES[case]
    guide = guide_cls(model)
    one = _fit(model, guide, args)
    sharded = _fit(model, guide, args, mesh=MESH, shard_plates=PLATES)
    _assert_trees_close(sharded.state.params, one.state.params)
    # Adam's moments hold gradients, sums over the N rows: their float error is N times larger
    _assert_trees_close(sharded.state.opt_state, one.state.opt_state, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sharded.losses, one.losses, rtol=RTOL)
    assert np.isfinite(sharded.losses).all()
    for x in jax.tree.leaves(sharded.state.params.model_params):  # the model's own params: replicated
        assert x.sharding.is_fully_replicated


def test_local_params_and_their_optimizer_state_are_split_over_8_devices():
    result = _fit(hier, jg.AutoNormal(hier), (X, Y), steps=20, mesh=MESH, shard_plates=PLATES)
    state = result.state
    adam = state.opt_state[0]
    for tree in (state.params.loc, state.params.raw_scale, adam.mu.loc, adam.nu.raw_scale):
        for name in ("z", "s"):  # local: one block of N/8 rows per device, in order
            x = tree[name]
            assert x.sharding.is_equivalent_to(NamedSharding(MESH, PartitionSpec("batch")), 1)
            shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start)
            assert [s.device for s in shards] == list(MESH.devices.flat)
            for b, shard in enumerate(shards):
                assert shard.data.shape == (N // 8,)
                np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(x)[b * N // 8 : (b + 1) * N // 8])
        for name in ("mu", "sigma"):  # global: replicated
            assert tree[name].sharding.is_fully_replicated
    # the layout is the one state_shardings names, so every chunk gets the same layout
    expected = jg.state_shardings(state, MESH, PLATES)
    for x, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(expected)):
        assert x.sharding.is_equivalent_to(sharding, x.ndim)


def test_chunks_compile_once():
    guide = jg.AutoNormal(hier)
    before = _run_chunk._cache_size()
    _fit(hier, guide, (X, Y), steps=50, chunk_size=10, mesh=MESH, shard_plates=PLATES)
    assert _run_chunk._cache_size() == before + 1  # 5 chunks, one compilation: the layout is stable


def test_low_level_step_runs_sharded():
    guide = jg.AutoNormal(hier)
    algo = jg.svi(hier, guide, optax.adam(1e-2))
    state = algo.init(jax.random.PRNGKey(1), X, Y)
    shardings = jg.state_shardings(state, MESH, PLATES)
    state = jg.shard_state(state, MESH, PLATES)
    (x, y), _ = jg.shard_args((X, Y), MESH, PLATES, state)
    assert x.sharding.spec == PartitionSpec("batch") and y.sharding.spec == PartitionSpec("batch")
    step = jax.jit(algo.step, out_shardings=(shardings, NamedSharding(MESH, PartitionSpec())))
    for _ in range(20):  # one step in flight at a time: simulated CPU devices can deadlock
        state, _ = jax.block_until_ready(step(state, x, y))  # in collectives when many are queued
    assert state.params.loc["z"].sharding.spec == PartitionSpec("batch")
    one = _fit(hier, guide, (X, Y), steps=20)
    _assert_trees_close(state.params, one.state.params)


# ---- subsampling -------------------------------------------------------------------------
def test_subsampled_sharded_fit_draws_per_device_and_matches_stratified_one_device():
    guide = jg.AutoNormal(hier_sub)
    sharded = _fit(hier_sub, guide, (X, Y), mesh=MESH, shard_plates=PLATES)
    stratified = jg.elbo_loss(hier_sub, guide, subsample_blocks={"data": 8})
    one = _fit(hier_sub, guide, (X, Y), loss=stratified)
    _assert_trees_close(sharded.state.params, one.state.params)
    np.testing.assert_allclose(sharded.losses, one.losses, rtol=RTOL)
    assert sharded.params.loc["z"].sharding.spec == PartitionSpec("batch")
    # device b's share of the batch comes from its own rows, without repeats: the
    # fit's epoch cursors (one permutation per block, O(batch) a step) ...
    sites = sharded.params.sites
    rows = np.asarray(batch_indices(sharded.state.subsample, sites.plates, {"data": 8})["data"])
    assert (rows.reshape(8, B // 8) // (N // 8) == np.arange(8)[:, None]).all()
    assert len(set(rows.tolist())) == B
    # ... and the loss's own stratified draw (the loss called outside fit)
    for seed in range(5):
        rows = np.asarray(draw_indices(sites.plates, jax.random.PRNGKey(seed), blocks={"data": 8})["data"])
        per_device = rows.reshape(8, B // 8)
        assert (per_device // (N // 8) == np.arange(8)[:, None]).all()
        assert len(set(rows.tolist())) == B


def test_subsampled_sharded_loss_is_unbiased():
    guide = jg.AutoDelta(hier_sub)  # no guide noise: the loss varies only with the rows drawn
    result = _fit(hier_sub, guide, (X, Y), steps=20, mesh=MESH, shard_plates=PLATES)
    params = result.params  # split over the 8 devices
    (x, y), _ = jg.shard_args((X, Y), MESH, PLATES, params)
    loss = jg.elbo_loss(hier_sub, guide, subsample_blocks={"data": 8})
    keys = jax.random.split(jax.random.PRNGKey(7), 2000)
    draws = np.asarray(jax.jit(jax.vmap(lambda k: loss(params, k, x, y)))(keys), np.float64)
    with warnings.catch_warnings():  # all N rows as the "subsample": numpyro warns, rightly, that it is not B
        warnings.simplefilter("ignore", UserWarning)
        full = float(loss.evaluate(params, keys[0], (X, Y), indices={"data": jnp.arange(N)}))
    stderr = draws.std() / np.sqrt(len(draws))
    assert draws.std() > 0  # the rows do change the estimate
    assert abs(draws.mean() - full) < 4 * stderr, (draws.mean(), full, stderr)


# ---- checkpoints ----------------------------------------------------------------------------
def test_checkpoint_resume_of_a_sharded_fit_is_bit_exact(tmp_path):
    guide = jg.AutoNormal(hier)
    kw = dict(mesh=MESH, shard_plates=PLATES, checkpoint_every=20)
    straight = _fit(hier, guide, (X, Y), steps=60, checkpoint=tmp_path / "straight.ckpt", **kw)
    path = tmp_path / "resumed.ckpt"
    _fit(hier, guide, (X, Y), steps=40, checkpoint=path, **kw)  # "killed" at step 40
    resumed = _fit(hier, guide, (X, Y), steps=60, checkpoint=path, **kw)
    _assert_trees_equal(resumed.state, straight.state)
    np.testing.assert_array_equal(resumed.losses, straight.losses)
    assert resumed.params.loc["z"].sharding.spec == PartitionSpec("batch")  # re-sharded on load
    # written shard by shard, read whole onto one device without a template
    saved = jg.load_checkpoint(tmp_path / "straight.ckpt")
    assert saved["state/params/loc/z"].shape == (N,) and isinstance(saved["state/params/loc/z"], np.ndarray)
    np.testing.assert_array_equal(saved["state/params/loc/z"], np.asarray(straight.params.loc["z"]))


def test_checkpoint_of_8_devices_resumes_on_2_and_on_1(tmp_path, monkeypatch):
    """Saved shard by shard from 8 devices (no gather), restored onto a 2-device mesh and
    onto one device: the same fit up to float summation order."""
    from jax.experimental import multihost_utils

    from jaxguides.parallel import sharding as _sharding

    def no_gather(*args, **kwargs):
        raise AssertionError("a checkpoint gathered the state")

    monkeypatch.setattr(_sharding, "gather", no_gather)
    monkeypatch.setattr(multihost_utils, "process_allgather", no_gather)
    guide = jg.AutoNormal(hier)
    kw = dict(shard_plates=PLATES, checkpoint_every=20)
    straight = _fit(hier, guide, (X, Y), steps=60, mesh=MESH, **kw)
    mesh2 = Mesh(np.array(jax.devices()[:2]), ("batch",))
    for name, mesh in (("two", mesh2), ("one", None)):
        path = tmp_path / f"{name}.ckpt"
        _fit(hier, guide, (X, Y), steps=40, checkpoint=path, mesh=MESH, **kw)  # "killed" at step 40
        opts = dict(kw, mesh=mesh) if mesh is not None else dict(checkpoint_every=20)
        resumed = _fit(hier, guide, (X, Y), steps=60, checkpoint=path, **opts)
        np.testing.assert_array_equal(resumed.losses[:40], straight.losses[:40])  # read back, bit for bit
        np.testing.assert_allclose(resumed.losses, straight.losses, rtol=RTOL)
        _assert_trees_close(resumed.params, straight.params)
        z = resumed.params.loc["z"]
        assert len(z.sharding.device_set) == (2 if mesh is not None else 1)  # restored into this fit's layout
        if mesh is not None:
            assert z.sharding.spec == PartitionSpec("batch") and z.addressable_shards[0].data.shape == (N // 2,)


# ---- errors -------------------------------------------------------------------------------
def test_plate_size_not_divisible_by_devices_names_the_plate():
    with pytest.raises(ValueError, match="plate 'data' has size 60"):
        _fit(hier, jg.AutoNormal(hier), (X[:60], Y[:60]), steps=1, mesh=MESH, shard_plates=PLATES)


def test_subsample_size_not_divisible_by_devices_names_the_plate():
    def model(x):
        with numpyro.plate("data", x.shape[0], subsample_size=12) as idx:
            numpyro.sample("x", dist.Normal(numpyro.sample("mu", dist.Normal(0.0, 1.0)), 1.0), obs=x[idx])

    with pytest.raises(ValueError, match="plate 'data' draws subsample_size=12"):
        _fit(model, jg.AutoNormal(model), (X[:, 0],), steps=1, mesh=MESH, shard_plates=PLATES)


def test_unknown_plate_and_mesh_axis_are_refused():
    with pytest.raises(ValueError, match="plate 'rows'.*plates \\['data'\\]"):
        _fit(hier, jg.AutoNormal(hier), (X, Y), steps=1, mesh=MESH, shard_plates={"rows": "batch"})
    with pytest.raises(ValueError, match="mesh axis 'model'"):
        _fit(hier, jg.AutoNormal(hier), (X, Y), steps=1, mesh=MESH, shard_plates={"data": "model"})
