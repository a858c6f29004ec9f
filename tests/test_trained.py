"""What the optimizer trains of a guide's params (``optim/trained.py``): never the constants."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.primitives import mutable

import jaxguides as jg
from jaxguides.optim.trained import trained_part, with_constants

KEY = jax.random.PRNGKey(0)


def bounded(low):
    numpyro.sample("u", dist.Uniform(low, low + 1.0))  # array bounds: support data in the params
    numpyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    counter = mutable("counter", {"n": jnp.zeros(())})
    counter["n"] = counter["n"] + 1


LOW = jnp.array([0.0, 2.0, 5.0])


def test_the_constants_are_split_off_and_put_back():
    params = jg.AutoNormal(bounded).init(KEY, LOW)
    trained, constant = trained_part(params)
    assert trained.support is None and trained.model_state is None
    assert set(constant) == {"support", "model_state"} and constant["model_state"] == params.model_state
    again = with_constants(trained, constant)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(again) == jax.tree.structure(params)


def test_a_guide_lists_parts_are_split_too():
    block = numpyro.handlers.block
    guide = jg.AutoGuideList(
        [
            jg.AutoDelta(block(bounded, hide=["z"]), init_loc_fn=jg.init_to_feasible),
            jg.AutoNormal(block(bounded, expose=["z"])),
        ]
    )
    params = guide.init(KEY, LOW)
    trained, constant = trained_part(params)
    assert all(p.support is None for p in trained.parts) and len(constant["parts"]) == 2
    assert jax.tree.structure(with_constants(trained, constant)) == jax.tree.structure(params)


def test_the_optimizer_holds_no_state_for_the_constants_and_leaves_them_alone():
    """Adam's moments cover the locs and scales only; after a fit the bounds are the data's."""
    guide, optimizer = jg.AutoNormal(bounded), optax.adam(0.05)
    state = jg.svi(bounded, guide, optimizer).init(KEY, LOW)
    trained, _ = trained_part(state.params)
    moments = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
    assert sum(np.size(x) for x in moments) == 2 * sum(np.size(x) for x in jax.tree.leaves(trained))
    result = jg.fit(bounded, guide, optimizer, KEY, 50, LOW, progress_bar=False)
    for a, b in zip(jax.tree.leaves(result.params.support), jax.tree.leaves(state.params.support)):
        np.testing.assert_array_equal(a, b)
    median = guide.median(result.params, LOW)["u"]
    assert bool(jnp.all((median > LOW) & (median < LOW + 1.0)))
