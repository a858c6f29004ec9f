"""Choosing a step's rows (jaxguides/subsample/sampler.py): epoch cursors, create_plates, fresh draws."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.infer.initialization import init_to_feasible

from jaxguides.model.sites import PlateFrame, trace_model
from jaxguides.subsample.epoch import init_subsample, next_batch
from jaxguides.subsample.sampler import epoch_plates, step_rows

A = PlateFrame("a", 12, 4, -1)  # subsampled, the fit's own cursors
B = PlateFrame("b", 10, 5, -2)  # subsampled, drawn fresh (or given by create_plates)
C = PlateFrame("c", 3, 3, -3)  # not subsampled
KEY = jax.random.PRNGKey(0)


def test_epoch_plates_are_the_subsampled_ones_create_plates_does_not_fix():
    def model():
        with numpyro.plate("a", 12, subsample_size=4):
            numpyro.sample("x", dist.Normal(0.0, 1.0))
        with numpyro.plate("b", 10, subsample_size=5):
            numpyro.sample("y", dist.Normal(0.0, 1.0))

    sites = trace_model(model, KEY, (), {}, init_to_feasible).sites

    def create_plates():
        return numpyro.plate("b", 10, subsample_size=5)

    assert [p.name for p in epoch_plates(sites, None, (), {})] == ["a", "b"]
    assert [p.name for p in epoch_plates(sites, create_plates, (), {})] == ["a"]


def test_step_rows_composes_cursors_fresh_draws_and_user_rows():
    plates = (A, B, C)
    cursors = init_subsample((A,), KEY)
    new, rows, key = step_rows(plates, cursors, KEY, None, {}, (), {})
    # the cursor's plate: exactly the epoch's next batch, and the cursors it came from
    expect_cursors, expect = next_batch(cursors, plates, {})
    np.testing.assert_array_equal(rows["a"], expect["a"])
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), new, expect_cursors))
    # the other subsampled plate: a fresh draw without replacement, from a key split off the step's
    assert rows["b"].shape == (5,) and len(set(np.asarray(rows["b"]).tolist())) == 5
    assert set(rows) == {"a", "b"} and not bool(jnp.all(key == KEY))
    # nothing to draw afresh: the step's key is left as it was (a MAP step compiles no extra split)
    _, rows_a, same = step_rows((A, C), cursors, KEY, None, {}, (), {})
    assert set(rows_a) == {"a"} and bool(jnp.all(same == KEY))

    # rows a create_plates gives are the user's
    def create_plates():
        with handlers.substitute(data={"b": jnp.array([9, 7, 5, 3, 1])}):
            return numpyro.plate("b", 10, subsample_size=5)

    _, user, _ = step_rows(plates, cursors, KEY, create_plates, {}, (), {})
    np.testing.assert_array_equal(user["b"], [9, 7, 5, 3, 1])
    np.testing.assert_array_equal(user["a"], expect["a"])


def test_fresh_rows_in_blocks_come_from_each_block():
    # a plate split over 2 devices: block b's rows come from block b of the plate
    plate = PlateFrame("b", 10, 4, -1)
    _, rows, _ = step_rows((plate,), None, KEY, None, {"b": 2}, (), {})
    first, second = np.asarray(rows["b"][:2]), np.asarray(rows["b"][2:])
    assert np.all(first < 5) and np.all(second >= 5)
