"""The benchmark's models (``bench/models.py``) at tiny sizes, nothing timed: each
hand-written floor log joint is NumPyro's log density (plus the Jacobian) at the
same point, and the floor's MAP objective at the shared start is jaxguides'."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer.util import constrain_fn, log_density, potential_energy

import jaxguides as jg
from bench import impls
from bench.models import BENCHES

pytestmark = pytest.mark.allow_rank_promotion  # flax and NumPyro's transforms broadcast implicitly

TINY = {
    "normal": {"N": 10},
    "linreg": {"D": 3, "N": 20},
    "hier": {"K": 4},
    "constrained": {"N": 20, "D": 3},
    "mlp": {"N": 20, "D": 3},
    "local_level": {"T": 10},
    "many_sites": {"S": 5, "n": 3},
}
# logreg_sub is left out: its floor draws its own batch (with replacement), NumPyro's plate another


def test_every_model_but_the_subsampled_one_is_covered():
    assert set(BENCHES) - set(TINY) == {"logreg_sub"}


def _point(bench, size):
    return bench.floor_params(size) if bench.floor_params is not None else {}


def _model(bench, size):
    """The model with its own params fixed at the floor's values."""
    point = _point(bench, size)
    return handlers.substitute(bench.model, data=point) if point else bench.model


@pytest.mark.parametrize("name", list(TINY))
def test_floor_log_joint_is_numpyros_log_density_and_jacobian(name):
    bench, size = BENCHES[name], TINY[name]
    data = bench.data(size)
    shapes = bench.floor_sites(size)
    keys = jax.random.split(jax.random.PRNGKey(0), len(shapes))
    u = {n: 0.5 * jax.random.normal(k, s) for k, (n, s) in zip(keys, shapes.items())}
    log_p, log_jac = bench.log_joint({**u, **_point(bench, size)}, data, jax.random.PRNGKey(1), size)

    sites = bench.sites_of_floor(u, size) if bench.sites_of_floor is not None else u
    model = _model(bench, size)
    constrained = constrain_fn(model, data, {}, sites)
    expected, _ = log_density(model, data, {}, constrained)
    np.testing.assert_allclose(log_p, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(log_p + log_jac, -potential_energy(model, data, {}, sites), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", list(TINY))
def test_floor_map_objective_at_the_start_is_jaxguides_loss(name):
    """AutoDelta draws nothing: at the shared start (0 in unconstrained space, the
    model's params at their deterministic init) the floor's loss and its gradient
    for the model's params are jaxguides'."""
    bench, size = BENCHES[name], TINY[name]
    data = bench.data(size)
    key = jax.random.PRNGKey(0)
    guide = jg.AutoDelta(bench.model, init_loc_fn=impls.INIT)
    params = guide.init(jax.random.PRNGKey(3), *data)
    floor = {k: v for k, v in impls.floor_init(bench, size).items() if k != "raw"}
    floor_loss = impls.floor_loss(bench, size, "delta")
    ours = jg.elbo_loss(bench.model, guide)
    np.testing.assert_allclose(floor_loss(floor, key, data), ours(params, key, *data), rtol=1e-5)
    assert jax.tree.structure(params.model_params) == jax.tree.structure(floor.get("point", {}))
    if floor.get("point"):
        jax.tree.map(np.testing.assert_array_equal, params.model_params, floor["point"])
        theirs = jax.grad(floor_loss)(floor, key, data)["point"]
        grads = jax.grad(ours)(params, key, *data).model_params
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads, theirs)


def test_network_weights_start_at_the_same_values_whatever_the_key():
    """jaxguides' ``init``, NumPyro (which inits ``flax_module`` from the seeded
    model's ``prng_key``, as ``SVI.init`` runs it) and the floor share one start."""
    bench, size = BENCHES["mlp"], TINY["mlp"]
    data = bench.data(size)
    start = bench.floor_params(size)["net$params"]
    for seed in (0, 1):
        ours = jg.AutoNormal(bench.model).init(jax.random.PRNGKey(seed), *data).model_params["net$params"]
        jax.tree.map(np.testing.assert_array_equal, ours, start)
        with handlers.seed(rng_seed=seed + 7):
            trace = handlers.trace(bench.model).get_trace(*data)
        jax.tree.map(np.testing.assert_array_equal, trace["net$params"]["value"], start)
