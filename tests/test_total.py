"""total: one scalar from many arrays, one reduction per (shape, dtype)."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import jaxguides as jg
from jaxguides.elbo.total import total


def _reductions(fn, *args):
    """The ``reduce_sum`` equations of ``fn``'s jaxpr (sub-jaxprs included), by operand shape."""
    shapes = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "reduce_sum":
                shapes.append(tuple(eqn.invars[0].aval.shape))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return sorted(shapes)


def test_total_is_the_sum_of_all_elements():
    a, b, c = jnp.arange(6.0).reshape(2, 3), jnp.full((2, 3), 0.5), jnp.array([1.0, -4.0])
    out = total([a, b, jnp.zeros((0, 3)), c, jnp.float32(2.5)])
    np.testing.assert_allclose(out, 15.0 + 3.0 - 3.0 + 2.5, rtol=1e-6)
    assert total([]).shape == () and float(total([])) == 0.0
    assert total(x for x in [c, c]).shape == ()  # any iterable


def test_arrays_of_one_shape_and_dtype_share_one_reduction():
    a, b, c = jnp.ones((4, 3)), jnp.ones((4, 3)), jnp.ones((5,))
    # two (4, 3) arrays: one reduction; the (5,) one its own; none for the empty array
    assert _reductions(lambda a, b, c: total([a, b, c, jnp.zeros((0,))]), a, b, c) == [(4, 3), (5,)]
    # a different dtype is a different group (no silent casting)
    assert _reductions(lambda a, b: total([a, b]), a, b.astype(jnp.int32)) == [(4, 3), (4, 3)]


def test_total_keeps_non_finite_values():
    assert np.isnan(total([jnp.array([1.0, jnp.nan]), jnp.ones(2)]))
    assert np.isinf(total([jnp.array([1.0, jnp.inf]), jnp.ones(3)]))


def plate_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    with numpyro.plate("units", y.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, 1.0))
        numpyro.sample("y", dist.Normal(theta, 2.0), obs=y)
    numpyro.factor("pull", -0.5 * mu**2)


@pytest.mark.parametrize("guide_cls", [jg.AutoDelta, jg.AutoNormal])
@pytest.mark.parametrize("mean_field", [False, True])
def test_the_elbo_sums_a_plates_terms_in_one_reduction(guide_cls, mean_field):
    """log p of theta and y and log q (or KL) of theta are all [7] in the plate:
    one reduction of [7], where one per term costs a kernel (and a read of the
    whole plate) each on CPU."""
    y = jnp.linspace(-1.0, 2.0, 7)
    guide = guide_cls(plate_model)
    params = guide.init(jax.random.PRNGKey(0), y)
    loss = jg.elbo_loss(plate_model, guide, mean_field=mean_field)
    assert _reductions(lambda p: loss(p, jax.random.PRNGKey(1), y), params).count((7,)) == 1
