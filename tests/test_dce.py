"""Dead code removed from a function traced inside a while loop's body."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxguides.loop.dce import _dce_jaxpr, without_dead_code

pytestmark = pytest.mark.skipif(_dce_jaxpr is None, reason="this JAX has no dead-code pass to call")


def _step(state, key):
    """A step that draws random numbers it never uses (as a MAP step's seed handler does)."""
    x, n = state
    unused = jax.random.normal(jax.random.fold_in(key, n), (3,))  # noqa: F841
    return {"x": x * 0.5 + 1.0, "n": n + 1}


def _loop(step):
    def run(x, key):
        def body(carry):
            out = step((carry["x"], carry["n"]), key)
            return {"x": out["x"], "n": out["n"]}

        return jax.lax.while_loop(lambda c: c["n"] < 5, body, {"x": x, "n": jnp.int32(0)})

    return run


def test_a_while_body_keeps_only_what_its_outputs_need():
    x, key = jnp.arange(4.0), jax.random.PRNGKey(0)
    plain = str(jax.make_jaxpr(_loop(_step))(x, key))
    pruned = str(jax.make_jaxpr(_loop(without_dead_code(_step)))(x, key))
    assert "random_bits" in plain and "random_fold_in" in plain  # a while body keeps dead code ...
    assert "random_bits" not in pruned and "random_fold_in" not in pruned  # ... the pruned step has none
    want = x
    for _ in range(5):
        want = want * 0.5 + 1.0
    got = jax.jit(_loop(without_dead_code(_step)))(x, key)
    np.testing.assert_array_equal(got["x"], want)
    assert int(got["n"]) == 5


def test_side_effects_are_kept_though_their_results_are_unused():
    seen = []

    def step(x):
        jax.debug.callback(lambda v: seen.append(float(v)), x)
        return x + 1.0

    out = jax.jit(lambda x: jax.lax.while_loop(lambda c: c < 3.0, without_dead_code(step), x))(0.0)
    assert float(out) == 3.0
    assert seen == [0.0, 1.0, 2.0]
