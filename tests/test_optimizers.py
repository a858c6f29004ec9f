"""NumPyro's optimizers in ``fit`` / ``svi``: the same steps as NumPyro's SVI takes
with them; anything that is not an optimizer is refused before compiling."""

from __future__ import annotations

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import numpyro.optim
import optax
import pytest
from numpyro.infer import SVI, Trace_ELBO, autoguide

import jaxguides as jg

Y = 1.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(0), (50,))


def model(y):
    loc = numpyro.sample("loc", dist.Normal(0.0, 5.0))
    scale = numpyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(loc, scale), obs=y)


OPTIMIZERS = {
    "Adam": lambda: numpyro.optim.Adam(0.05),
    "ClippedAdam": lambda: numpyro.optim.ClippedAdam(0.05, clip_norm=1.0),
    "SGD": lambda: numpyro.optim.SGD(1e-3),
    "Momentum": lambda: numpyro.optim.Momentum(1e-3, 0.9),
    "RMSProp": lambda: numpyro.optim.RMSProp(0.01),
    "Adagrad": lambda: numpyro.optim.Adagrad(0.1),
    "optax_to_numpyro": lambda: numpyro.optim.optax_to_numpyro(optax.adamw(0.05)),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_numpyro_optimizer_takes_numpyro_svi_steps(name):
    """AutoDelta draws nothing, so the trajectory is deterministic: it must be NumPyro's."""
    steps = 200
    init = jg.init_to_value(values={"loc": 0.5, "scale": 1.5})
    svi = SVI(model, autoguide.AutoDelta(model, init_loc_fn=init), OPTIMIZERS[name](), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(0), Y)
    state, losses = jax.lax.scan(lambda s, _: svi.update(s, Y), state, length=steps)
    guide = jg.AutoDelta(model, init_loc_fn=init)
    result = jg.fit(model, guide, OPTIMIZERS[name](), jax.random.PRNGKey(0), steps, Y, progress_bar=False)
    ours, theirs = jg.to_numpyro_params(guide, result.params), svi.get_params(state)
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=2e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(result.losses, np.asarray(losses), rtol=2e-5)


def test_numpyro_optimizer_in_svi_and_fit_many():
    algo = jg.svi(model, jg.AutoNormal(model), numpyro.optim.Adam(0.05))
    state = algo.init(jax.random.PRNGKey(0), Y)
    state, _ = jax.jit(algo.step)(state, Y)
    assert int(state.step) == 1
    many = jg.fit_many(
        model,
        jg.AutoDelta(model),
        numpyro.optim.Adam(0.05),
        jax.random.split(jax.random.PRNGKey(0), 2),
        300,
        Y,
        progress_bar=False,
    )
    np.testing.assert_allclose(many.params.loc["loc"], np.full(2, float(Y.mean())), rtol=0.05)


@pytest.mark.parametrize(
    ("optimizer", "match"),
    [
        ("adam", "'adam'.*optax GradientTransformation"),
        (optax.adam, "optax.*adam, a factory.*call it"),
        (numpyro.optim.Adam, "numpyro.optim.*Adam, a factory.*call it"),
        (numpyro.optim.Minimize(), "Minimize.*optax.lbfgs"),
        (None, "None.*numpyro.optim.Adam"),
    ],
)
def test_anything_else_is_refused_before_compiling(optimizer, match):
    for run in (
        lambda: jg.fit(model, jg.AutoNormal(model), optimizer, jax.random.PRNGKey(0), 10, Y, progress_bar=False),
        lambda: jg.svi(model, jg.AutoNormal(model), optimizer),
    ):
        with pytest.raises(TypeError, match=match):
            run()
