"""Choosing a step's rows (jaxguides/subsample/sampler.py): epoch cursors, create_plates, fresh draws."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
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


# ---- subsample/indices.py: the rows one draw gives ------------------------------------------------
def test_draw_indices_without_replacement_and_stratified_in_blocks():
    from jaxguides.subsample.indices import draw_indices, join_blocks

    plain = draw_indices((A, B, C), KEY)
    assert set(plain) == {"a", "b"}  # C is not subsampled
    for plate in (A, B):
        rows = np.asarray(plain[plate.name])
        assert rows.shape == (plate.subsample_size,) and len(set(rows.tolist())) == plate.subsample_size
        assert rows.min() >= 0 and rows.max() < plate.size
    blocked = np.asarray(draw_indices((A,), KEY, blocks={"a": 2})["a"])  # 2 blocks of 6 rows, 2 rows from each
    assert len(set(blocked.tolist())) == 4
    assert (blocked[:2] < 6).all() and (blocked[2:] >= 6).all()
    np.testing.assert_array_equal(join_blocks(jnp.array([[0, 5], [1, 2]]), 6), [0, 5, 7, 8])


def test_each_row_is_drawn_with_probability_subsample_over_size():
    """Unbiased: over many draws every row of a stratified plate comes up 4/12 of the time."""
    from jaxguides.subsample.indices import draw_indices

    keys = jax.random.split(KEY, 3000)
    counts = np.zeros(A.size)
    for blocks in (None, {"a": 2}):
        draws = np.asarray(jax.vmap(lambda k, b=blocks: draw_indices((A,), k, blocks=b)["a"])(keys))
        counts = np.bincount(draws.reshape(-1), minlength=A.size) / len(keys)
        np.testing.assert_allclose(counts, A.subsample_size / A.size, atol=0.03)  # 4 sd of a binomial mean


def test_block_sizes_refuse_a_plate_that_does_not_split_evenly():
    from jaxguides.subsample.indices import block_sizes

    assert block_sizes(A, 2) == (6, 2) and block_sizes(A, 4) == (3, 1)
    with pytest.raises(ValueError, match="plate 'a'.*multiples of 3"):
        block_sizes(A, 3)  # 12 rows split, but not 4 batch rows


def test_user_plates_must_be_plates():
    from jaxguides.subsample.indices import user_plate_indices

    assert user_plate_indices(None, KEY, (), {}) == {}
    rows = user_plate_indices(lambda: numpyro.plate("b", 10, subsample_size=5), KEY, (), {})
    assert rows["b"].shape == (5,)
    for wrong, name in ((lambda: 3, "int"), (lambda: [numpyro.plate("b", 10, subsample_size=5), "a"], "list")):
        with pytest.raises(TypeError, match=f"create_plates.*iterable of plates, got {name}"):
            user_plate_indices(wrong, KEY, (), {})
