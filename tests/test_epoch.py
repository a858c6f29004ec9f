"""Epoch permutations of subsampled plates (jaxguides/subsample/epoch.py) and how fit uses them."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro import handlers

import jaxguides as jg
from jaxguides.model.sites import PlateFrame
from jaxguides.subsample.epoch import advance, batch_indices, epoch_rows, init_subsample, next_batch

N, B = 12, 4
X = jnp.linspace(-2.0, 3.0, N)


def regression(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
    with numpyro.plate("data", x.shape[0], subsample_size=B) as idx:
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=x[idx])


def regression_full(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def local_latents(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
    with numpyro.plate("data", x.shape[0], subsample_size=B) as idx:
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("x", dist.Normal(z, 0.5), obs=x[idx])


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 10, 17, 1000, 4097, 65537, 100_003])
def test_an_epoch_is_a_permutation(size):
    for seed in range(3):
        perm = np.asarray(epoch_rows(jax.random.PRNGKey(seed), 0, 0, jnp.arange(size), size))
        assert perm.dtype == np.int32
        np.testing.assert_array_equal(np.sort(perm), np.arange(size))


def permutation(key, size, stream=0, epoch=0):
    return np.asarray(epoch_rows(key, stream, epoch, jnp.arange(size), size))


def test_permutations_differ_by_key_stream_and_epoch_and_look_shuffled():
    perms = np.stack([permutation(jax.random.PRNGKey(s), 1000) for s in range(20)])
    perms = np.concatenate([perms, [permutation(jax.random.PRNGKey(0), 1000, stream=1)]])
    perms = np.concatenate([perms, [permutation(jax.random.PRNGKey(0), 1000, epoch=e) for e in (1, 2)]])
    assert len({p.tobytes() for p in perms}) == len(perms)
    # a typed key gives the permutation of its raw key data
    np.testing.assert_array_equal(permutation(jax.random.key(7), 1000), permutation(jax.random.PRNGKey(7), 1000))
    # position of row 0 across keys, and the rank correlation with the identity, look random
    assert len(set(np.argmax(perms == 0, axis=1))) > 15
    assert np.abs([np.corrcoef(p, np.arange(1000))[0, 1] for p in perms]).max() < 0.15


def test_a_permutation_of_a_prime_size_looks_shuffled():
    """A size with no convenient factors (the network's domain is then larger than
    the plate, and images outside it are walked on): no structure left over."""
    perm = permutation(jax.random.PRNGKey(0), 100_003)
    assert abs(np.corrcoef(perm, np.arange(perm.size))[0, 1]) < 0.02
    assert np.mean(np.abs(np.diff(perm)) <= 1) < 0.001  # neighbours do not stay neighbours
    first, last = perm[: perm.size // 2], perm[perm.size // 2 :]  # each half of the epoch spans all rows
    assert abs(first.mean() - last.mean()) < 0.02 * perm.size


def _visits(size, batch, steps, blocks=None):
    plates = (PlateFrame("data", size, batch, -1),)
    state = init_subsample(plates, jax.random.PRNGKey(0))

    def step(state):
        state, rows = next_batch(state, plates, blocks)
        return advance(state, plates, blocks=blocks), rows["data"]

    step = jax.jit(step)
    out = []
    for _ in range(steps):
        state, rows = step(state)
        out.append(np.asarray(rows))
    return np.stack(out), state


def test_every_row_once_per_epoch():
    rows, state = _visits(N, B, 5 * (N // B))
    epochs = rows.reshape(5, -1)  # N // B batches per epoch
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(N))
    assert len({e.tobytes() for e in epochs}) == 5  # a new order each epoch
    # the last batch is used up; the next step starts epoch 5
    assert int(state.plates["data"].epoch) == 4 and int(state.plates["data"].offset) == N


def test_a_plate_drawn_in_blocks_visits_each_blocks_rows_once_per_epoch():
    """A plate split over k devices (sharded): block b of every batch is rows of
    block b of the plate, each block its own permutation, every row once an epoch."""
    size, batch, k = 4000, 400, 4
    per_block, take = size // k, batch // k
    rows, state = _visits(size, batch, 3 * (per_block // take), blocks={"data": k})
    by_block = rows.reshape(3, per_block // take, k, take)  # epoch, step, block, row
    for b in range(k):
        assert (by_block[:, :, b] // per_block == b).all()  # device b's share: its own rows
    for epoch in by_block:
        np.testing.assert_array_equal(np.sort(epoch.reshape(-1)), np.arange(size))
    assert len({e.tobytes() for e in by_block}) == 3  # a new order each epoch
    local = by_block[0, :, :, :] % per_block  # blocks do not share one order
    assert len({local[:, b].tobytes() for b in range(k)}) == k
    assert int(state.plates["data"].epoch) == 2 and int(state.plates["data"].offset) == per_block
    with pytest.raises(ValueError, match="cannot be drawn in 3 equal blocks"):
        _visits(size, batch, 1, blocks={"data": 3})


@pytest.mark.parametrize("guide_cls", [jg.AutoNormal, jg.AutoDelta])
def test_init_draws_nothing_and_the_first_step_starts_epoch_0(guide_cls):
    # init_to_feasible and cursors that hold no rows: a compiled init has no
    # random-number code (time to first step); the first step takes the first
    # rows of epoch 0 of the plate's own stream
    guide = guide_cls(local_latents, init_loc_fn=jg.init_to_feasible)
    algo = jg.svi(local_latents, guide, optax.adam(0.01))
    key = jax.random.PRNGKey(5)
    hlo = jax.jit(algo.init).lower(key, X).as_text()
    assert "threefry" not in hlo and "rng_bit_generator" not in hlo
    state = algo.init(key, X)
    cursor = state.subsample.plates["data"]
    assert int(cursor.epoch) == -1
    # the state of a cursor is O(1): no row of the plate is stored
    assert all(np.size(leaf) <= 2 for leaf in jax.tree.leaves(state.subsample))
    rows = batch_indices(state.subsample, state.params.sites.plates)["data"]
    np.testing.assert_array_equal(rows, permutation(key, N, stream=int(cursor.stream), epoch=0)[:B])
    state, _ = jax.jit(algo.step)(state, X)
    cursor = state.subsample.plates["data"]
    assert int(cursor.epoch) == 0 and int(cursor.offset) == B


def test_batch_not_dividing_size_skips_the_remainder_rows():
    size, batch = 10, 4  # two batches per epoch, 2 rows sit each epoch out
    rows, _ = _visits(size, batch, 2 * 6)
    skipped = []
    for epoch in rows.reshape(6, -1):
        assert len(set(epoch)) == 8  # distinct within an epoch
        skipped.append(frozenset(range(size)) - set(epoch))
    assert len(set(skipped)) > 1  # not always the same rows


def test_fit_scales_the_subsample_unbiasedly():
    """With fixed params (lr 0) the mean loss over one epoch is the full-data loss."""
    guide = jg.AutoDelta(regression)
    algo = jg.svi(regression, guide, optax.sgd(0.0))
    state = algo.init(jax.random.PRNGKey(0), X)
    assert set(state.subsample.plates) == {"data"}
    _, info = jax.lax.scan(lambda s, _: algo.step(s, X), state, length=3 * (N // B))
    losses = info.loss
    full = jg.elbo_loss(regression_full, jg.AutoDelta(regression_full))
    params = jg.AutoDelta(regression_full).init(jax.random.PRNGKey(0), X)
    params = type(params)(loc=state.params.loc, support=params.support, sites=params.sites)
    expected = full(params, jax.random.PRNGKey(1), X)
    np.testing.assert_allclose(np.asarray(losses).reshape(3, -1).mean(axis=1), expected, rtol=1e-5)
    assert np.std(np.asarray(losses)) > 1.0  # the batches do differ


def test_resume_is_bit_exact_across_epochs(tmp_path):
    guide, opt, key = jg.AutoNormal(local_latents), optax.adam(0.05), jax.random.PRNGKey(3)
    whole = jg.fit(local_latents, guide, opt, key, 40, X, progress_bar=False)
    path = tmp_path / "run.ckpt"
    jg.fit(local_latents, guide, opt, key, 17, X, progress_bar=False, checkpoint=path)  # "killed" at 17
    resumed = jg.fit(local_latents, guide, opt, key, 40, X, progress_bar=False, checkpoint=path)
    for a, b in zip(jax.tree.leaves(whole.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(whole.losses, resumed.losses)
    assert int(whole.state.subsample.plates["data"].epoch) == 40 // (N // B)


def test_plates_fixed_by_create_plates_get_no_cursor():
    def plates(x):
        with handlers.substitute(data={"data": jnp.arange(B)}):
            return numpyro.plate("data", N, subsample_size=B)

    state = jg.svi(regression, jg.AutoDelta(regression, create_plates=plates), optax.adam(0.1)).init(
        jax.random.PRNGKey(0), X
    )
    assert state.subsample is None
    unsubsampled = jg.svi(regression_full, jg.AutoDelta(regression_full), optax.adam(0.1))
    assert unsubsampled.init(jax.random.PRNGKey(0), X).subsample is None


def test_a_non_finite_step_does_not_consume_its_batch():
    def blowup(x, threshold):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", x.shape[0], subsample_size=B) as idx:
            numpyro.sample("x", dist.Normal(mu, 1.0), obs=x[idx])
        numpyro.factor("wall", jnp.where(mu > threshold, jnp.nan, 0.0))

    algo = jg.svi(blowup, jg.AutoNormal(blowup, init_scale=1.0), optax.adam(0.01))
    state = algo.init(jax.random.PRNGKey(0), X, 0.0)
    step = jax.jit(algo.step, static_argnums=2)
    rows = jax.jit(lambda s: next_batch(s, state.params.sites.plates)[1]["data"])
    finite = []
    for _ in range(20):
        new, info = step(state, X, 0.0)
        finite.append(bool(np.isfinite(info.loss)))
        # the next step sees this step's batch again exactly when this step was not finite
        assert np.array_equal(rows(new.subsample), rows(state.subsample)) == (not finite[-1])
        state = new
    assert 0 < sum(finite) < 20
