"""The compiled chunk (``loop/chunks.py``): what XLA gets, read from its lowering."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import numpyro.infer
import optax

import jaxguides as jg
from helpers.models import YC, conjugate
from jaxguides.loop import args as loop_args
from jaxguides.loop.chunks import read_report, run_chunk
from jaxguides.optim.canonical import canonical
from jaxguides.svi import step as svi_step


def test_a_map_chunk_lowers_no_random_numbers():
    """A MAP step draws nothing; the seed handler's key splits are dead code that
    jit does not prune inside a while loop's body, so the chunk prunes them
    itself (time to first step: they were 40% of a small model's lowering)."""
    guide, optimizer = jg.AutoDelta(conjugate), canonical(optax.adam(0.05))
    dynamic, static = loop_args.partition((YC,), {})
    state = jax.eval_shape(
        lambda k: svi_step.init_state(guide, optimizer, k, (YC,), {}, jg.elbo_loss(conjugate, guide)),
        jax.random.PRNGKey(0),
    )
    chunk = dict(
        loss_fn=jg.elbo_loss(conjugate, guide), optimizer=optimizer, static=static, length=64, skip=False, layout=None
    )
    mlir = run_chunk.lower(state, np.int32(64), dynamic, **chunk).as_text()
    assert "while" in mlir and "threefry" not in mlir
    mean_field = dict(chunk, loss_fn=jg.elbo_loss(conjugate, jg.AutoNormal(conjugate)))  # draws: keeps its keys
    normal_state = jax.eval_shape(
        lambda k: svi_step.init_state(jg.AutoNormal(conjugate), optimizer, k, (YC,), {}), jax.random.PRNGKey(0)
    )
    assert "threefry" in run_chunk.lower(normal_state, np.int32(64), dynamic, **mean_field).as_text()


def test_a_chunk_updates_the_state_in_place_and_leaves_the_callers_arrays_alone():
    """The chunk's state is donated: XLA aliases every state leaf to its output
    (no copy into the loop, no second copy in memory); the key and data the
    user passed to fit are never donated."""
    guide, optimizer = jg.AutoNormal(conjugate), canonical(optax.adam(0.05))
    loss_fn = jg.elbo_loss(conjugate, guide)
    dynamic, static = loop_args.partition((YC,), {})
    state = jax.eval_shape(
        lambda k: svi_step.init_state(guide, optimizer, k, (YC,), {}, loss_fn), jax.random.PRNGKey(0)
    )
    chunk = dict(loss_fn=loss_fn, optimizer=optimizer, static=static, length=64, skip=False, layout=None)
    hlo = run_chunk.lower(state, np.int32(64), dynamic, **chunk).compile().as_text()
    aliases = hlo.split("input_output_alias={", 1)[1].split("}, entry_computation_layout", 1)[0]
    assert aliases.count("may-alias") + aliases.count("must-alias") == len(jax.tree.leaves(state))
    key, data = jax.random.PRNGKey(3), jnp.asarray(YC)
    result = jg.fit(conjugate, guide, optax.adam(0.05), key, 200, data, progress_bar=False, chunk_size=50)
    assert not key.is_deleted() and not data.is_deleted()
    again = jg.fit(conjugate, guide, optax.adam(0.05), key, 200, data, progress_bar=False, chunk_size=50)
    np.testing.assert_array_equal(result.losses, again.losses)


def _chunk(guide, skip=False, length=16):
    optimizer = canonical(optax.adam(0.05))
    return dict(
        loss_fn=jg.elbo_loss(conjugate, guide), optimizer=optimizer, static=loop_args.partition((YC,), {})[1],
        length=length, skip=skip, layout=None,
    )  # fmt: skip


def test_a_chunk_runs_the_steps_of_svi_and_reports_them():
    """Ten steps in one chunk: the losses and state of ten ``svi(...).step`` calls;
    the report holds them, no stop (-1) and no skip, and the chunk ends at ``end``
    though it could hold 16."""
    guide = jg.AutoNormal(conjugate)
    chunk = _chunk(guide)
    dynamic = loop_args.partition((YC,), {})[0]
    svi = jg.svi(conjugate, guide, chunk["optimizer"])
    state = svi.init(jax.random.PRNGKey(2), YC)
    expected, ref = [], state
    for _ in range(10):
        ref, info = svi.step(ref, YC)
        expected.append(float(info.loss))
    out = run_chunk(jax.tree.map(jnp.copy, state), np.int32(10), dynamic, **chunk)
    losses, bad, skipped = read_report(out.report)
    assert losses.shape == (16,) and int(bad) == -1 and int(skipped) == 0
    np.testing.assert_allclose(losses[:10], expected, rtol=1e-6)
    assert np.isnan(losses[10:]).all() and int(out.state.step) == 10
    np.testing.assert_allclose(out.state.params.loc["mu"], ref.params.loc["mu"], rtol=1e-6)


def blowup():
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    numpyro.factor("pull", 2.0 * x)  # sgd walks x up by 0.1 * (2 - x) a step
    numpyro.factor("bad", jnp.where(x > 0.5, jnp.nan, 0.0))


def test_a_chunk_stops_at_a_nonfinite_step_or_skips_it():
    """``skip=False``: the chunk stops at the first non-finite step with the last
    finite state; ``skip=True``: it runs to ``end``, counting the skipped steps."""
    guide = jg.AutoDelta(blowup, init_loc_fn=numpyro.infer.init_to_value(values={"x": 0.0}))
    optimizer = canonical(optax.sgd(0.1))
    state = jg.svi(blowup, guide, optimizer).init(jax.random.PRNGKey(0))
    static = dict(loss_fn=jg.elbo_loss(blowup, guide), optimizer=optimizer, static=loop_args.partition((), {})[1],
                  length=32, layout=None)  # fmt: skip
    stopped = run_chunk(jax.tree.map(jnp.copy, state), np.int32(32), [], skip=False, **static)
    losses, bad, skipped = read_report(stopped.report)
    x = np.cumsum(np.r_[0.0, 0.1 * 2.0 * 0.9 ** np.arange(31)])  # x_s = 2 (1 - 0.9^s) from x_0 = 0
    first_bad = int(np.argmax(x > 0.5))
    assert int(bad) == first_bad == int(stopped.state.step) and int(skipped) == 0
    assert np.isfinite(losses[:first_bad]).all() and np.isnan(losses[first_bad:]).all()
    np.testing.assert_allclose(float(stopped.state.params.loc["x"]), x[first_bad], rtol=1e-5)
    skipping = run_chunk(jax.tree.map(jnp.copy, state), np.int32(32), [], skip=True, **static)
    losses, bad, skipped = read_report(skipping.report)
    assert int(bad) == -1 and int(skipping.state.step) == 32 and int(skipped) == 32 - first_bad
